"use strict";
// Shared by the console's pages (page.html, fleet.html): each page's
// script starts with this file (see `console::assemble`).
const COLOURS = { normal: "#1b7f3b", reconciliation: "#b07800",
                  autonomous: "#b00020", stalled: "#6a1b9a" };
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4))
                                   : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function cell(row, text, cls) { row.appendChild(el("td", cls ? { class: cls } : {}, text)); }
function num(x, digits) { return x === null || x === undefined ? "" : x.toFixed(digits); }

// Draws the JSON at `url` with `draw` now and every second; a failed
// fetch says `what` is unavailable in #fetch-error.
function poll(url, draw, what) {
  async function refresh() {
    const error = document.getElementById("fetch-error");
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      draw(await response.json());
      error.textContent = "";
    } catch (e) {
      error.textContent = what + " unavailable: " + e.message;
    }
  }
  refresh();
  setInterval(refresh, 1000);
}
