//! Phase 5: the p99 at half the maximal AppendFact rate, in an open loop,
//! and the same schedule offered to the bare echo RPC, the bare append and
//! raw JetStream (plain and in the node's layout).

use super::append::AppendRuns;
use super::setup::Bench;
use crate::drive::open_loop;
use crate::echo_proto::bench::v1::EchoServiceClient;
use crate::metrics::{histogram_buckets, histogram_quantile_between, scrape_metrics};
use crate::publish::{LAYOUT_COPY, node_layout_message, publish_acked};
use crate::rpc::{append_request, echo_once};
use crate::stats::{Sample, summarize};
use crate::{object_json, run_id};
use async_nats::HeaderMap;
use async_nats::jetstream;
use connectrpc::client::SharedHttp2Connection;
use std::sync::Arc;

/// The open-loop repetitions, all at `half` requests/s.
pub(super) struct OpenRuns {
    /// The highest closed-loop AppendFact rate with 256 B facts.
    pub(super) max_rate: f64,
    /// Half of it: the offered rate.
    pub(super) half: f64,
    /// AppendFact.
    pub(super) open: Vec<Sample>,
    pub(super) open_echo: Vec<Sample>,
    pub(super) open_raw: Vec<Sample>,
    pub(super) open_guarded: Vec<Sample>,
    pub(super) open_bare: Vec<Sample>,
    /// AppendFact as the node timed it: (p50, p99) in ms, histogram bounds.
    pub(super) node_side: Vec<(f64, f64)>,
}

pub(super) async fn open_loop_runs(
    b: &Bench,
    append: &AppendRuns,
    secs: f64,
    reps: usize,
) -> anyhow::Result<OpenRuns> {
    let max_rate = append
        .results
        .iter()
        .filter(|(_, size, _)| *size == 256)
        .map(|(_, _, s)| summarize(s).rate)
        .fold(0.0, f64::max);
    let half = max_rate * 0.5;
    // The same schedule offered to the bare echo RPC and to raw JetStream
    // (publish with Nats-Msg-Id, await the ack) in each repetition: the
    // tails the RPC stack and the substrate have by themselves at this rate.
    let (mut open, mut open_echo, mut open_raw, mut open_guarded, mut open_bare) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let payload: Arc<str> = object_json(256).into();
    let mut node_side = Vec::new();
    for rep in 0..reps {
        let (s, inside) = open_append(b, &payload, half, secs, rep).await?;
        node_side.push(inside);
        open.push(s);
        open_echo.push(open_echo_rpc(&b.echo_client, "echo", "echo", half, secs, rep).await);
        open_bare.push(open_echo_rpc(&b.bare_client, "bare", "bare append", half, secs, rep).await);
        open_raw.push(open_raw_publish(&b.js, half, secs, rep).await);
        open_guarded.push(open_layout_publish(&b.js, &payload, half, secs, rep).await);
    }
    Ok(OpenRuns {
        max_rate,
        half,
        open,
        open_echo,
        open_raw,
        open_guarded,
        open_bare,
        node_side,
    })
}

/// One AppendFact open loop, and its p50 and p99 as the node timed them.
async fn open_append(
    bench: &Bench,
    payload: &Arc<str>,
    half: f64,
    secs: f64,
    rep: usize,
) -> anyhow::Result<(Sample, (f64, f64))> {
    let before = scrape_metrics(bench.ops).await?;
    let (c, p, tag) = (
        bench.bsfg.clone(),
        payload.clone(),
        format!("{}-open-{rep}", run_id()),
    );
    let s = open_loop(half, secs, tag.clone(), move |i| {
        let (c, request) = (c.clone(), append_request(format!("{tag}-{i}"), &p));
        async move {
            match c.append_fact(request).await {
                Ok(_) => true,
                Err(e) => {
                    eprintln!("open-loop append error: {e}");
                    false
                }
            }
        }
    })
    .await;
    eprintln!(
        "open loop {half:.0}/s rep {rep}: achieved {:.0}/s p50 {:.2} p99 {:.2} ms",
        s.rate, s.p50_ms, s.p99_ms
    );
    // The same appends as the node timed them (handler entry to answer),
    // at its histogram's bucket resolution.
    let after = scrape_metrics(bench.ops).await?;
    let (b, a) = (
        histogram_buckets(&before, "bsfg_append_latency_seconds"),
        histogram_buckets(&after, "bsfg_append_latency_seconds"),
    );
    let (b_batch, a_batch) = (
        histogram_buckets(&before, "bsfg_commit_batch_facts"),
        histogram_buckets(&after, "bsfg_commit_batch_facts"),
    );
    let inside = (
        histogram_quantile_between(&b, &a, 50.0) * 1e3,
        histogram_quantile_between(&b, &a, 99.0) * 1e3,
    );
    eprintln!(
        "  node-side: p50 <= {:.1} ms, p99 <= {:.1} ms; batch p50 <= {} p99 <= {} facts",
        inside.0,
        inside.1,
        histogram_quantile_between(&b_batch, &a_batch, 50.0),
        histogram_quantile_between(&b_batch, &a_batch, 99.0)
    );
    Ok((s, inside))
}

/// One open loop of bare echo RPCs (`kind` names its tag, `what` its line).
async fn open_echo_rpc(
    client: &EchoServiceClient<SharedHttp2Connection>,
    kind: &str,
    what: &str,
    half: f64,
    secs: f64,
    rep: usize,
) -> Sample {
    let c = client.clone();
    let s = open_loop(
        half,
        secs,
        format!("{}-open-{kind}-{rep}", run_id()),
        move |_| echo_once(&c),
    )
    .await;
    eprintln!(
        "open loop {what} rep {rep}: p50 {:.2} p99 {:.2} ms",
        s.p50_ms, s.p99_ms
    );
    s
}

/// One open loop of raw JetStream publishes (256 B, `Nats-Msg-Id`), each
/// awaited to its acknowledgement.
async fn open_raw_publish(js: &jetstream::Context, half: f64, secs: f64, rep: usize) -> Sample {
    let (j, tag) = (js.clone(), format!("{}-open-raw-{rep}", run_id()));
    let s = open_loop(half, secs, tag.clone(), move |i| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{tag}-{i}").as_str());
        publish_acked(
            &j,
            format!("rawpub.{}", i % 64),
            headers,
            bytes::Bytes::from(vec![b'x'; 256]),
        )
    })
    .await;
    eprintln!(
        "open loop raw JetStream rep {rep}: p50 {:.2} p99 {:.2} ms",
        s.p50_ms, s.p99_ms
    );
    s
}

/// The same publishes the node makes (its subjects, headers and records, a
/// stream configured like its own), without the node: the substrate's
/// share of the AppendFact tail.
async fn open_layout_publish(
    js: &jetstream::Context,
    payload: &Arc<str>,
    half: f64,
    secs: f64,
    rep: usize,
) -> Sample {
    let (j, p, tag) = (
        js.clone(),
        payload.clone(),
        format!("{}-open-guarded-{rep}", run_id()),
    );
    let s = open_loop(half, secs, tag.clone(), move |i| {
        let (subject, headers, body) =
            node_layout_message(LAYOUT_COPY, "batch:PlantA/B1042", &format!("{tag}-{i}"), &p);
        publish_acked(&j, subject, headers, body)
    })
    .await;
    eprintln!(
        "open loop raw guarded rep {rep}: p50 {:.2} p99 {:.2} ms",
        s.p50_ms, s.p99_ms
    );
    s
}
