//! The operations port: `/metrics` (Prometheus text), `/healthz`, `/livez`
//! and the operations console (`/console`, `/console/status.json`, the
//! fleet view `/console/fleet` and `/console/fleet.json`; see
//! [`console`](super::console)), plain HTTP/1.1, kept off the boundary port
//! so scraping and looking never need a client certificate and never
//! compete with boundary traffic.
//!
//! `/healthz` is readiness: 200 `ok` only while the node can take appends,
//! else 503 with one line that starts with a reason token (the store
//! connection down, JetStream disabled or unreachable, a filesystem below
//! its free-space floor, the key index catching up); see
//! [`Store::not_ready`]. Why: it answered 200 while every append failed on
//! a full disk. `/livez` is liveness: 200 while the process serves
//! (restarting a node that is merely not ready would not help it).

use super::console::{self, Console, fleet};
use crate::metrics::Metrics;
use crate::store::Store;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;

/// What the port serves from: the console is set once the node has started
/// its links (the port serves `/metrics` and `/healthz` before that).
#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    pub console: Arc<OnceLock<Arc<Console>>>,
}

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Status, content type and body for `path`.
async fn respond(state: &OpsState, path: &str) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (200, TEXT, state.metrics.render()),
        "/healthz" => match state.store.not_ready() {
            None => (200, TEXT, "ok\n".to_string()),
            Some(why) => (503, TEXT, format!("{why}\n")),
        },
        "/livez" => (200, TEXT, "ok\n".to_string()),
        "/console" => (200, "text/html; charset=utf-8", console::page().to_string()),
        "/console/fleet" => (200, "text/html; charset=utf-8", fleet::page().to_string()),
        "/console/fleet.json" => match state.console.get() {
            Some(c) => (200, "application/json", c.fleet_json().await),
            None => (
                503,
                TEXT,
                "starting: the links are not up yet\n".to_string(),
            ),
        },
        "/console/status.json" => match state.console.get() {
            Some(c) => (200, "application/json", c.status_json().await),
            None => (
                503,
                TEXT,
                "starting: the links are not up yet\n".to_string(),
            ),
        },
        _ => (
            404,
            TEXT,
            "not found: try /metrics, /healthz, /livez or /console\n".to_string(),
        ),
    }
}

pub async fn serve(listener: TcpListener, state: OpsState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let (status, content_type, body) = respond(&state, request.uri().path()).await;
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .header("cache-control", "no-store")
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts are valid"),
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(std::time::Duration::from_secs(5))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service)
                .await;
        });
    }
}
