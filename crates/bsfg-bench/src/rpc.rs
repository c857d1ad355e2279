//! RPC clients of the node and the echo servers, and the calls of the RPC
//! rows.

use crate::drive::closed_loop;
use crate::echo_proto::bench::v1::{EchoRequest, EchoServiceClient};
use crate::stats::Sample;
use crate::{now_ms, object_json};
use bsfg_proto::bsfg::v1::append_fact_result::Result as FactResult;
use bsfg_proto::bsfg::v1::{
    AppendFactRequest, AppendFactResult, AppendFactsRequest, BoundaryServiceClient, Envelope, Fact,
};
use connectrpc::Protocol;
use connectrpc::client::{ClientConfig, Http2Connection, SharedHttp2Connection};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A client certificate, its key and the CA it trusts (PEM files).
pub(crate) struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client of the RPC service on `127.0.0.1:port` (`new` is the service's
/// client constructor) over one HTTP/2 connection that all its calls share
/// (up to 1024 in flight): h2c, or mutual TLS with `tls`. Every RPC row's
/// client.
pub(crate) async fn rpc_client<C>(
    port: u16,
    protocol: Protocol,
    tls: Option<&ClientTls>,
    new: impl FnOnce(SharedHttp2Connection, ClientConfig) -> C,
) -> anyhow::Result<C> {
    let (uri, connection) = match tls {
        None => {
            let uri: http::Uri = format!("http://127.0.0.1:{port}").parse()?;
            (uri.clone(), Http2Connection::connect_plaintext(uri).await?)
        }
        Some(t) => {
            let uri: http::Uri = format!("https://127.0.0.1:{port}").parse()?;
            (
                uri.clone(),
                Http2Connection::connect_tls(
                    uri,
                    bsfg::tls::client::client_config(&t.ca, &t.cert, &t.key)?,
                )
                .await?,
            )
        }
    };
    let config = ClientConfig::new(uri)
        .with_protocol(protocol)
        .with_default_timeout(Duration::from_secs(30));
    Ok(new(connection.shared(1024), config))
}

/// `concurrency` workers appending facts with an `object_json` of `size`
/// bytes back to back for `secs` (message ids `<tag>-<worker>-<seq>`): the
/// AppendFact closed loop.
pub(crate) async fn append_closed_loop(
    client: &BoundaryServiceClient<SharedHttp2Connection>,
    concurrency: usize,
    size: usize,
    secs: f64,
    tag: String,
) -> Sample {
    let c = client.clone();
    let payload: Arc<str> = object_json(size).into();
    closed_loop(concurrency, secs, move |w, seq| {
        let (c, payload, id) = (c.clone(), payload.clone(), format!("{tag}-{w}-{seq}"));
        async move {
            match c.append_fact(append_request(id, &payload)).await {
                Ok(_) => true,
                Err(e) => {
                    eprintln!("append error: {e}");
                    false
                }
            }
        }
    })
    .await
}

/// `requests` workers each sending AppendFacts of `facts` facts with an
/// `object_json` of `size` bytes back to back for `secs` (message ids
/// `<tag>-<worker>-<seq>-<i>`): the AppendFacts closed loop. Its rate is in
/// facts/s (requests answered with every fact stored, times `facts`), its
/// latency per request; its errors count facts (refused, or in a failed
/// request).
pub(crate) async fn append_batch_closed_loop(
    client: &BoundaryServiceClient<SharedHttp2Connection>,
    (requests, facts): (usize, usize),
    size: usize,
    secs: f64,
    tag: String,
) -> Sample {
    let c = client.clone();
    let payload: Arc<str> = object_json(size).into();
    let refused = Arc::new(AtomicU64::new(0));
    let counted = refused.clone();
    let mut sample = closed_loop(requests, secs, move |w, seq| {
        let request = AppendFactsRequest {
            facts: (0..facts)
                .map(|i| append_request(format!("{tag}-{w}-{seq}-{i}"), &payload))
                .collect(),
            ..Default::default()
        };
        let (c, refused) = (c.clone(), counted.clone());
        async move {
            let bad = match c.append_facts(request).await {
                Ok(r) => refusals(&r.into_owned().results, facts),
                Err(e) => {
                    eprintln!("append_facts error: {e}");
                    facts as u64
                }
            };
            refused.fetch_add(bad, Ordering::Relaxed);
            bad == 0
        }
    })
    .await;
    sample.rate *= facts as f64;
    sample.errors = refused.load(Ordering::Relaxed);
    sample
}

/// The facts of an AppendFacts answer not stored (refused, missing), the
/// first refusal printed.
fn refusals(results: &[AppendFactResult], facts: usize) -> u64 {
    let stored = results
        .iter()
        .filter(|r| matches!(r.result, Some(FactResult::Appended(_))))
        .count();
    let refusal = results.iter().find_map(|r| match &r.result {
        Some(FactResult::Refused(f)) => Some(f),
        _ => None,
    });
    if let Some(f) = refusal {
        eprintln!(
            "append_facts refusal: {} {} {}",
            f.code, f.reason, f.message
        );
    }
    facts.saturating_sub(stored) as u64
}

pub(crate) fn append_request(message_id: String, payload: &str) -> AppendFactRequest {
    let (envelope, fact) = bench_fact(message_id, payload);
    AppendFactRequest {
        envelope: envelope.into(),
        fact: fact.into(),
        ..Default::default()
    }
}

/// The bench's fact (zone `bench` to itself, subject `batch:PlantA/B1042`)
/// with `payload` as its object.
pub(crate) fn bench_fact(message_id: String, payload: &str) -> (Envelope, Fact) {
    let envelope = Envelope {
        message_id,
        from_zone: "bench".into(),
        to_zone: "bench".into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let fact = Fact {
        subject: "batch:PlantA/B1042".into(),
        predicate: "step_completed".into(),
        object_json: payload.to_string(),
        ..Default::default()
    };
    (envelope, fact)
}

/// One bare echo RPC with a 256 B payload: the call of every echo row.
pub(crate) fn echo_once(
    client: &EchoServiceClient<SharedHttp2Connection>,
) -> impl std::future::Future<Output = bool> + Send + use<> {
    let client = client.clone();
    async move {
        client
            .echo(EchoRequest {
                payload: vec![b'x'; 256],
                ..Default::default()
            })
            .await
            .is_ok()
    }
}
