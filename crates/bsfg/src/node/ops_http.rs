//! The operations port: `/metrics` (Prometheus text) and `/healthz`, plain
//! HTTP/1.1, kept off the boundary port so scraping never needs a client
//! certificate and never competes with boundary traffic.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, nats: async_nats::Client) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        let nats = nats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let nats = nats.clone();
                async move {
                    let (status, body) = match request.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => match nats.connection_state() {
                            async_nats::connection::State::Connected => (200, "ok\n".to_string()),
                            state => (503, format!("zone store not connected: {state:?}\n")),
                        },
                        _ => (404, "not found: try /metrics or /healthz\n".to_string()),
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
