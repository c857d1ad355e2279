//! The operations port: `/metrics` (Prometheus text), `/healthz` and
//! `/livez`, plain HTTP/1.1, kept off the boundary port so scraping never
//! needs a client certificate and never competes with boundary traffic.
//!
//! `/healthz` is readiness: 200 `ok` only while the node can take appends,
//! else 503 with one line that starts with a reason token (the store
//! connection down, JetStream disabled or unreachable, a filesystem below
//! its free-space floor, the key index catching up); see
//! [`Store::not_ready`]. Why: it answered 200 while every append failed on
//! a full disk. `/livez` is liveness: 200 while the process serves
//! (restarting a node that is merely not ready would not help it).

use crate::metrics::Metrics;
use crate::store::Store;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<Store>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let store = store.clone();
                async move {
                    let (status, body) = match request.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => match store.not_ready() {
                            None => (200, "ok\n".to_string()),
                            Some(why) => (503, format!("{why}\n")),
                        },
                        "/livez" => (200, "ok\n".to_string()),
                        _ => (
                            404,
                            "not found: try /metrics, /healthz or /livez\n".to_string(),
                        ),
                    };
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
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
