//! Raw JetStream publishing, with no node in the way: the pipelined
//! publisher of the raw rows, the pre-fill and `substrate`, one awaited
//! publish of the open-loop rows, and facts laid out exactly as the node
//! stores them.

use crate::stats::{Sample, pct_ms};
use crate::{now_ms, run_id};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bsfg_proto::bsfg::v1::{Envelope, Fact, Provenance, StoredFact};
use buffa::Message as _;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one pipelined publish run did.
pub(crate) struct Published {
    pub done: u64,
    pub errors: u64,
    pub secs: f64,
    /// Each acknowledged publish's latency (µs), from its send to its
    /// acknowledgement being taken (in order, so an upper bound), sorted.
    pub latencies_us: Vec<u32>,
}

impl Published {
    pub(crate) fn sample(&self) -> Sample {
        Sample {
            rate: self.done as f64 / self.secs,
            p50_ms: pct_ms(&self.latencies_us, 50.0),
            p99_ms: pct_ms(&self.latencies_us, 99.0),
            errors: self.errors,
        }
    }
}

/// Publishes `message(0)`, `message(1)`, … keeping `window` acknowledgements
/// in flight, until `secs` have passed or `count_max` are sent: the one
/// pipelined-publish driver of the raw rows, the pre-fill and `substrate`.
pub(crate) async fn raw_publish<M>(
    js: &jetstream::Context,
    window: usize,
    secs: f64,
    count_max: u64,
    message: M,
) -> anyhow::Result<Published>
where
    M: Fn(u64) -> (String, HeaderMap, bytes::Bytes),
{
    let mut inflight = VecDeque::with_capacity(window);
    let (mut done, mut errors) = (0u64, 0u64);
    let mut latencies_us = Vec::new();
    let mut take = |sent: Instant, acked: bool| {
        if acked {
            done += 1;
            latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            errors += 1;
        }
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs.min(1e6));
    let mut i = 0u64;
    while Instant::now() < end && i < count_max {
        let (subject, headers, payload) = message(i);
        let sent = Instant::now();
        let ack = js.publish_with_headers(subject, headers, payload).await?;
        inflight.push_back((sent, ack));
        i += 1;
        if inflight.len() >= window {
            let (sent, ack) = inflight.pop_front().expect("window is not empty");
            take(sent, ack.await.is_ok());
        }
    }
    while let Some((sent, ack)) = inflight.pop_front() {
        take(sent, ack.await.is_ok());
    }
    latencies_us.sort_unstable();
    Ok(Published {
        done,
        errors,
        secs: start.elapsed().as_secs_f64(),
        latencies_us,
    })
}

/// Message `i` of the raw publish rows: 256 B under one of 64 subjects
/// `<stream>.<n>`, with a `Nats-Msg-Id` unique to the run and `tag`.
pub(crate) fn plain_message(
    stream: &str,
    tag: &str,
    i: u64,
    payload: &bytes::Bytes,
) -> (String, HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{}-{tag}-{i}", run_id()).as_str());
    (format!("{stream}.{}", i % 64), headers, payload.clone())
}

/// A file stream `name` on the subjects `name.>`, with JetStream's
/// default two-minute duplicate window: where the raw baselines write.
pub(crate) async fn create_plain_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    create_replicated_stream(js, name, 1).await
}

/// [`create_plain_stream`] with `replicas` replicas (on a cluster).
pub(crate) async fn create_replicated_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    js.create_stream(plain_stream_config(name, replicas))
        .await?;
    Ok(())
}

/// [`create_replicated_stream`] that takes JetStream atomic batches.
pub(crate) async fn create_atomic_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        allow_atomic_publish: true,
        ..plain_stream_config(name, replicas)
    })
    .await?;
    Ok(())
}

fn plain_stream_config(name: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// One publish awaited to its acknowledgement: the call of every raw
/// open-loop row.
pub(crate) fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> impl std::future::Future<Output = bool> + Send + use<> {
    let js = js.clone();
    async move {
        match js.publish_with_headers(subject, headers, payload).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }
}

/// One fact exactly as `FactLog` stores it: subject, headers and record.
pub(crate) fn node_layout_message(
    category: &str,
    subject: &str,
    message_id: &str,
    object: &str,
) -> (String, HeaderMap, bytes::Bytes) {
    let envelope = Envelope {
        message_id: message_id.into(),
        from_zone: "bench".into(),
        to_zone: "bench".into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let fact = Fact {
        subject: subject.into(),
        predicate: "step_completed".into(),
        object_json: object.into(),
        ..Default::default()
    };
    let token = bsfg_domain::identity::key_token("bench", message_id);
    let record = StoredFact {
        category: category.into(),
        envelope: envelope.into(),
        fact: fact.into(),
        provenance: Provenance {
            origin_zone: "bench".into(),
            ..Default::default()
        }
        .into(),
        appended_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", token.as_str());
    let kind = subject.split(':').next().unwrap_or_default();
    (
        format!("facts.{category}.{kind}"),
        headers,
        record.encode_to_vec().into(),
    )
}

/// The category the raw node-layout rows publish to: a stream configured
/// like the node's, but not the node's, so its key index never reads these
/// facts in during the AppendFact phases.
pub(crate) const LAYOUT_COPY: &str = "layoutcopy";

/// The [`LAYOUT_COPY`] stream, with `replicas` replicas (on a cluster).
pub(crate) async fn create_layout_copy_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<()> {
    let category = bsfg::config::CategoryConfig {
        name: LAYOUT_COPY.into(),
        kinds: Vec::new(),
        default: false,
        capacity_bytes: 8 << 30,
        fill_threshold_percent: 80,
        retain_fill_percent: 50,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
    };
    js.create_stream(bsfg::store::facts::stream_config(
        "bench",
        bsfg_domain::limits::Limits::default().fact_bytes_max,
        replicas,
        &category,
    ))
    .await?;
    Ok(())
}
