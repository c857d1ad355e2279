//! The operations console in a real browser: headless Chromium loads a
//! zone's `/console` while the reference site runs with fault proxies, and
//! the tests assert what the page shows (its DOM after the page's script
//! has polled `/console/status.json`; the fleet page, `/console/fleet.json`,
//! built from the zones' status facts). Screenshots are kept under
//! `target/console-screenshots/`. Skipped, with the reason printed, where
//! Chromium is not installed (scripts/setup.sh installs Debian's).

use crate::crossing::*;
use crate::harness::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Debian's `chromium`.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with a throwaway profile.
struct Browser {
    profile: tempfile::TempDir,
    screenshots: PathBuf,
}

impl Browser {
    /// None (the reason printed) where Chromium is not installed.
    fn new() -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() {
            eprintln!(
                "SKIPPED: {CHROMIUM} not found (scripts/setup.sh installs Debian's chromium)"
            );
            return None;
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let screenshots = target.join("console-screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        Some(Browser {
            profile: tempfile::tempdir().unwrap(),
            screenshots,
        })
    }

    /// Runs Chromium on `url` with `extra` arguments; its standard output.
    async fn run(&self, url: &str, extra: &[&str]) -> String {
        let mut command = tokio::process::Command::new(CHROMIUM);
        command
            .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .arg("--virtual-time-budget=3000")
            .args(extra)
            .arg(url)
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("chromium answers within 60 s")
            .expect("chromium runs");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// The page's DOM once its script has drawn.
    async fn dom(&self, url: &str) -> String {
        self.run(url, &["--dump-dom"]).await
    }

    /// Saves a screenshot of the page as `name`.png; its path (printed).
    async fn screenshot(&self, url: &str, name: &str) -> PathBuf {
        let file = self.screenshots.join(format!("{name}.png"));
        let shot = format!("--screenshot={}", file.display());
        self.run(url, &[&shot, "--window-size=1280,900"]).await;
        assert!(file.exists(), "no screenshot at {}", file.display());
        eprintln!("console screenshot: {}", file.display());
        file
    }
}

/// The opening tag of the element carrying `attribute="value"`.
fn tag_with<'a>(dom: &'a str, attribute: &str, value: &str) -> Option<&'a str> {
    let at = dom.find(&format!("{attribute}=\"{value}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// The value of `attribute` in an opening tag.
fn attribute<'a>(tag: &'a str, attribute: &str) -> Option<&'a str> {
    let key = format!(" {attribute}=\"");
    let from = tag.find(&key)? + key.len();
    Some(&tag[from..from + tag[from..].find('"')?])
}

/// The link row of `peer` as the page shows it: (mode, backlog).
fn link_row(dom: &str, peer: &str) -> Option<(String, u64)> {
    let row = tag_with(dom, "data-link", peer)?;
    let mode = attribute(row, "data-mode")?.to_string();
    let backlog = attribute(row, "data-backlog")?.parse().ok()?;
    Some((mode, backlog))
}

/// Loads the console until `shows` holds for `peer`'s link row; the DOM.
async fn console_until(
    browser: &Browser,
    url: &str,
    peer: &str,
    within: Duration,
    what: &str,
    shows: impl Fn(&str, u64) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let dom = browser.dom(url).await;
        let row = link_row(&dom, peer);
        if let Some((mode, backlog)) = &row
            && shows(mode, *backlog)
        {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "the console did not show {what} within {within:?}; link row {row:?}; DOM:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn console_url(ops: SocketAddr) -> String {
    format!("http://{ops}/console")
}

/// Everything but the links, as the page shows it for enterprise.
fn assert_shows_the_zone(dom: &str) {
    assert!(dom.contains("<span id=\"zone\">enterprise</span>"), "{dom}");
    assert!(
        tag_with(dom, "data-consumer", "local").is_some(),
        "the consumers table: {dom}"
    );
    assert!(dom.contains("data-category="), "the categories: {dom}");
    assert!(dom.contains("node expires in"), "certificate expiry: {dom}");
    assert!(
        tag_with(dom, "data-edge", "idmz").is_some(),
        "the topology: {dom}"
    );
}

/// enterprise's console while its link from idmz is cut and after the
/// restore: the link row and the topology edge autonomous during the cut,
/// normal with backlog 0 once the facts have crossed, a chart per link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_a_cut_link_autonomous_then_normal_after_the_restore() {
    let Some(browser) = Browser::new() else {
        return;
    };
    let site = Site::start_with(SiteOpts {
        proxies: true,
        ..Default::default()
    })
    .await;
    let url = console_url(site.zones["enterprise"].ops_addr);
    let normal = |mode: &str, backlog: u64| mode == "normal" && backlog == 0;
    let minute = Duration::from_secs(60);

    site.append("plant-a", "enterprise", "console-0", batch_fact(0))
        .await;
    site.wait_for("enterprise", &["console-0".into()], minute)
        .await;
    let dom = console_until(&browser, &url, "idmz", minute, "idmz normal", normal).await;
    assert_shows_the_zone(&dom);
    browser.screenshot(&url, "enterprise-before-cut").await;

    // Cut idmz ⇄ enterprise while plant-a appends facts for enterprise.
    site.proxy("enterprise", "idmz").cut();
    site.proxy("idmz", "enterprise").cut();
    let ids: Vec<String> = (1..=5).map(|i| format!("console-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        site.append("plant-a", "enterprise", id, batch_fact(i + 1))
            .await;
    }
    let autonomous = |mode: &str, _: u64| mode == "autonomous";
    let dom = console_until(
        &browser,
        &url,
        "idmz",
        minute,
        "idmz autonomous",
        autonomous,
    )
    .await;
    let edge = tag_with(&dom, "data-edge", "idmz").unwrap();
    assert_eq!(attribute(edge, "data-mode"), Some("autonomous"), "{edge}");
    assert!(dom.contains("mode mode-autonomous"), "{dom}");
    browser.screenshot(&url, "enterprise-during-cut").await;
    assert_idmz_sees_the_cut(&browser, &site).await;

    site.proxy("enterprise", "idmz").restore();
    site.proxy("idmz", "enterprise").restore();
    site.wait_for("enterprise", &ids, minute).await;
    let dom = console_until(&browser, &url, "idmz", minute, "idmz caught up", normal).await;
    let edge = tag_with(&dom, "data-edge", "idmz").unwrap();
    assert_eq!(attribute(edge, "data-mode"), Some("normal"), "{edge}");
    let chart = tag_with(&dom, "data-chart", "idmz").expect("a chart for the link");
    let samples: usize = attribute(chart, "data-samples").unwrap().parse().unwrap();
    assert!(samples >= 1, "the chart has the link's samples: {chart}");
    assert!(dom.contains("<polyline"), "the charts are drawn: {dom}");
    browser.screenshot(&url, "enterprise-after-restore").await;
    assert_status_json(site.zones["enterprise"].ops_addr).await;
}

/// idmz's console during the cut: its three links, only the one from
/// enterprise autonomous.
async fn assert_idmz_sees_the_cut(browser: &Browser, site: &Site) {
    let url = console_url(site.zones["idmz"].ops_addr);
    let autonomous = |mode: &str, _: u64| mode == "autonomous";
    let within = Duration::from_secs(60);
    let dom = console_until(browser, &url, "enterprise", within, "cut", autonomous).await;
    for peer in ["plant-a", "plant-b"] {
        let (mode, _) = link_row(&dom, peer).expect("a row per link");
        assert_eq!(mode, "normal", "{peer}: {dom}");
        assert!(tag_with(&dom, "data-edge", peer).is_some(), "{dom}");
    }
    browser.screenshot(&url, "idmz-during-cut").await;
}

/// The data behind the page: the operator's view of the zone, with the
/// refusal thresholds, the certificates and the charts' bounded history.
async fn assert_status_json(ops: SocketAddr) {
    let (code, body) = http_raw(ops, "GET", "/console/status.json", "", b"")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["zone"], "enterprise");
    let link = &status["links"][0];
    assert_eq!(link["peer"], "idmz", "{status}");
    assert_eq!(link["mode"], "normal", "{status}");
    let history = link["history"].as_array().unwrap();
    assert!(
        (1..=bsfg::node::console::history::SAMPLES_PER_LINK).contains(&history.len()),
        "{status}"
    );
    assert!(status["certificates"]["node_days"].as_f64().unwrap() > 4.0);
    assert_eq!(status["writer"]["role"], "single", "{status}");
    let operational = status["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "operational")
        .expect("the operational category");
    assert!(operational["refusal_threshold_percent"].as_u64().is_some());
}

/// The state of every zone on a fleet page's DOM, by zone.
fn fleet_states(dom: &str) -> Vec<(String, String)> {
    ZONES
        .iter()
        .map(|z| {
            let state = tag_with(dom, "data-zone", z)
                .and_then(|t| attribute(t, "data-state"))
                .unwrap_or("absent");
            (z.to_string(), state.to_string())
        })
        .collect()
}

/// Loads the fleet page until every zone is in the state `expected` gives
/// it; the DOM.
async fn fleet_until(
    browser: &Browser,
    url: &str,
    what: &str,
    expected: impl Fn(&str) -> &'static str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dom = browser.dom(url).await;
        let states = fleet_states(&dom);
        if states.iter().all(|(z, s)| s == expected(z)) {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet page did not show {what} within 60 s: {states:?}; DOM:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// enterprise's fleet page, built from the zones' status facts (sent every
/// second here): every zone fresh; during the idmz ⇄ enterprise cut the
/// plants and idmz stale on the enterprise side, since a time shown; fresh
/// again after the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_shows_zones_stale_during_a_cut_and_fresh_after_the_restore() {
    let Some(browser) = Browser::new() else {
        return;
    };
    let site = Site::start_with(SiteOpts {
        proxies: true,
        tweak: Some(|_, c| c.status.interval = Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    let ops = site.zones["enterprise"].ops_addr;
    let url = format!("http://{ops}/console/fleet");
    // Fresh, and plant-a's status sent after its link came up (the first
    // ones may show it still connecting).
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = fleet_until(&browser, &url, "every zone fresh", |_| "fresh").await;
        let edge = tag_with(&dom, "data-edge", "plant-a to idmz").expect("a link plant-a → idmz");
        if attribute(edge, "data-mode") == Some("normal") {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "plant-a → idmz never normal: {edge}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(dom.contains("<span id=\"zone\">enterprise</span>"), "{dom}");
    assert!(
        dom.contains("href=\"/console\""),
        "a link to the console: {dom}"
    );
    browser.screenshot(&url, "fleet-before-cut").await;

    site.proxy("enterprise", "idmz").cut();
    site.proxy("idmz", "enterprise").cut();
    let cut = |z: &str| if z == "enterprise" { "fresh" } else { "stale" };
    let dom = fleet_until(&browser, &url, "the zones behind the cut stale", cut).await;
    let edge = tag_with(&dom, "data-edge", "idmz to enterprise").expect("idmz → enterprise");
    assert_eq!(attribute(edge, "data-mode"), Some("autonomous"), "{edge}");
    browser.screenshot(&url, "fleet-during-cut").await;
    let (code, body) = http_raw(ops, "GET", "/console/fleet.json", "", b"")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let plant_a = view["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["zone"] == "plant-a")
        .unwrap();
    assert_eq!(plant_a["state"], "stale", "{view}");
    assert!(plant_a["stale_since_unix_ms"].as_i64().is_some(), "{view}");
    assert_eq!(plant_a["interval_seconds"], 1.0, "{view}");

    site.proxy("enterprise", "idmz").restore();
    site.proxy("idmz", "enterprise").restore();
    fleet_until(&browser, &url, "every zone fresh again", |_| "fresh").await;
    browser.screenshot(&url, "fleet-after-restore").await;
}
