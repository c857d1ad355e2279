//! What a site certificate can make a node hold: compressed bodies from an
//! unknown identity, bodies that never complete. Each test measures the
//! node process's peak resident memory and asserts a bound.

use crate::harness::*;
use bsfg::config::BoundaryConfig;
use bsfg_proto::bsfg::v1::*;
use buffa::Message as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use std::time::{Duration, Instant};

const APPEND_PATH: &str = "/bsfg.v1.BoundaryService/AppendFact";
/// The bound the node's peak memory must stay under during each attack.
const PEAK_RSS_BYTES_MAX: u64 = 128 * 1024 * 1024;

/// An HTTP/2 connection over mutual TLS, as `cert`.
async fn h2_connect(
    zone: &Zone,
    cert: &str,
) -> hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
> {
    let tls = tls_connect(
        zone.boundary_addr,
        &zone.pki.client_config(cert).unwrap(),
        &[b"h2"],
    )
    .await
    .unwrap();
    let (send, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(64 << 20)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    send
}

/// A Connect unary AppendFact whose object_json is `inflated_bytes` long,
/// zstd-compressed: a few hundred bytes on the wire.
fn zstd_bomb(inflated_bytes: usize) -> Bytes {
    let mut e = envelope(&mid("bomb"));
    e.message_id = "bomb".into();
    let request = AppendFactRequest {
        envelope: e.into(),
        fact: fact(
            "batch:PlantA/B1",
            "step_completed",
            &format!("{{\"a\":\"{}\"}}", "x".repeat(inflated_bytes)),
        )
        .into(),
        ..Default::default()
    };
    Bytes::from(zstd::encode_all(&request.encode_to_vec()[..], 19).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_bodies_from_an_unknown_identity_are_refused_unread() {
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Default::default()
    })
    .await;
    zone.pki.issue("stranger.plant-a", 30).unwrap();
    let body = zstd_bomb(4 * 1024 * 1024 - 4096);
    assert!(
        body.len() < 1024,
        "a 4 MiB fact compresses to {} bytes",
        body.len()
    );
    let before = zone.node_peak_rss_bytes();

    let calls = 1024;
    let mut answers = Vec::new();
    for _ in 0..4 {
        let send = h2_connect(&zone, "stranger.plant-a").await;
        for _ in 0..calls / 4 {
            let mut send = send.clone();
            let body = body.clone();
            answers.push(tokio::spawn(async move {
                send.ready().await.unwrap();
                let request = http::Request::post(APPEND_PATH)
                    .header("content-type", "application/proto")
                    .header("content-encoding", "zstd")
                    .body(Full::new(body).map_err(|e| match e {}).boxed())
                    .unwrap();
                let response = send.send_request(request).await.unwrap();
                let status = response.status();
                let reason = response
                    .headers()
                    .get("bsfg-reason")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, reason)
            }));
        }
    }
    for answer in answers {
        let (status, reason) = answer.await.unwrap();
        assert_eq!(status, http::StatusCode::FORBIDDEN, "permission_denied");
        assert_eq!(reason.as_deref(), Some("unknown_identity"));
    }
    let peak = zone.node_peak_rss_bytes();
    eprintln!(
        "node peak RSS {} MiB before, {} MiB after {calls} zstd bombs",
        before >> 20,
        peak >> 20
    );
    assert!(peak < PEAK_RSS_BYTES_MAX, "peak RSS {} MiB", peak >> 20);
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "bsfg_boundary_refusals_total",
            &["rpc=\"AppendFact\"", "reason=\"unknown_identity\""]
        ),
        Some(calls as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_that_never_complete_are_bounded_and_time_out() {
    let boundary = BoundaryConfig {
        body_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let zone = Zone::start(Opts {
        out_of_process: true,
        boundary: Some(boundary),
        ..Default::default()
    })
    .await;
    let before = zone.node_peak_rss_bytes();

    // 256 AppendFact streams, each sending just under the fact limit and
    // never ending its body.
    let streams = 256;
    let part = Bytes::from(vec![b'x'; 300 * 1024]);
    let mut answers = Vec::new();
    let mut senders = Vec::new();
    let send = h2_connect(&zone, APP_CERT).await;
    for _ in 0..streams {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        tx.send(Ok(Frame::data(part.clone()))).await.unwrap();
        senders.push(tx);
        let frames =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let mut send = send.clone();
        answers.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let request = http::Request::post(APPEND_PATH)
                .header("content-type", "application/proto")
                .body(StreamBody::new(Box::pin(frames)).boxed())
                .unwrap();
            let started = Instant::now();
            let response = send.send_request(request).await;
            (
                response.map(|r| {
                    (
                        r.status(),
                        r.headers()
                            .get("bsfg-reason")
                            .map(|v| v.to_str().unwrap().to_string()),
                    )
                }),
                started.elapsed(),
            )
        }));
    }
    // Admitted streams time out; the others wait for admission as long and
    // are refused node_busy: every stream is answered, none is held.
    let (mut late, mut busy) = (0, 0);
    for answer in answers {
        let (response, elapsed) = tokio::time::timeout(Duration::from_secs(120), answer)
            .await
            .expect("every stream is answered")
            .unwrap();
        match response {
            Ok((status, Some(reason))) if reason == "request_body_timeout" => {
                assert_eq!(
                    status,
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "deadline_exceeded"
                );
                late += 1;
            }
            Ok((status, Some(reason))) if reason == "node_busy" => {
                assert_eq!(
                    status,
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "resource_exhausted"
                );
                busy += 1;
            }
            other => {
                panic!("a stream that never ends its body was answered {other:?} after {elapsed:?}")
            }
        }
    }
    drop(senders);
    let peak = zone.node_peak_rss_bytes();
    eprintln!(
        "node peak RSS {} MiB before, {} MiB after {streams} endless bodies ({late} timed out, {busy} not admitted)",
        before >> 20,
        peak >> 20
    );
    assert_eq!(late + busy, streams);
    assert!(
        late > 0 && busy > 0,
        "the budget admits some and not all: {late} timed out, {busy} refused"
    );
    assert!(peak < PEAK_RSS_BYTES_MAX, "peak RSS {} MiB", peak >> 20);
    // The node still serves.
    let app = zone.client();
    app.append(envelope(&mid("after")), batch_fact(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_over_the_request_limit_is_fact_too_large_logged_and_counted() {
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Default::default()
    })
    .await;
    let app = zone.client();
    let huge = fact(
        "batch:PlantA/B1",
        "step_completed",
        &format!("{{\"a\":\"{}\"}}", "x".repeat(5 * 1024 * 1024)),
    );
    assert_rejected(
        app.append(envelope(&mid("huge")), huge).await,
        "invalid_argument",
        "fact_too_large",
    );
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "bsfg_boundary_refusals_total",
            &["rpc=\"AppendFact\"", "reason=\"fact_too_large\""]
        ),
        Some(1.0)
    );
    zone.log_lines_with(1, &[("rpc", "AppendFact"), ("reason", "fact_too_large")])
        .await;
}
