//! Phase 4: the drain. A category pre-filled around the node, drained by
//! FetchFacts + ConfirmReceipt and by a raw JetStream pull consumer, in
//! alternating order.

use super::setup::Bench;
use crate::metrics::wait_for_key_index;
use crate::publish::{node_layout_message, raw_publish};
use crate::stats::Sample;
use crate::{object_json, run_id};
use anyhow::bail;
use async_nats::jetstream::{self, consumer};
use bsfg_proto::bsfg::v1::{
    BoundaryServiceClient, ConfirmReceiptRequest, FetchFactsRequest, StoredFact,
};
use bsfg_testkit::procfs::cpu_seconds;
use buffa::Message as _;
use connectrpc::client::SharedHttp2Connection;
use futures::StreamExt;
use std::time::Instant;

/// A drain's CPU per fact: node, nats-server, this client (µs).
type CpuPerFact = [f64; 3];

/// The pre-fill and the drain repetitions.
pub(super) struct DrainRuns {
    /// Facts pre-filled and drained by each side in each repetition.
    pub(super) n: u64,
    pub(super) prefill_rate: f64,
    /// Seconds the node's key index took to read the pre-fill in.
    pub(super) read_in_secs: f64,
    /// FetchFacts + ConfirmReceipt.
    pub(super) drain_b: Vec<Sample>,
    /// The raw pull consumer.
    pub(super) drain_r: Vec<Sample>,
    pub(super) drain_b_cpu: Vec<CpuPerFact>,
    pub(super) drain_r_cpu: Vec<CpuPerFact>,
}

pub(super) async fn drain_runs(
    bench: &Bench,
    drain_n: u64,
    window: usize,
    reps: usize,
) -> anyhow::Result<DrainRuns> {
    let js = &bench.js;
    let prefill_rate = prefill(js, drain_n, window).await?;
    eprintln!("prefilled {drain_n} facts at {prefill_rate:.0}/s");
    let drain_last = js
        .get_stream("facts_drain")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let read_in_secs = wait_for_key_index(bench.ops, "drain", drain_last).await?;
    eprintln!("the node's key index read the pre-fill in after {read_in_secs:.1} s");
    let mut drain_b = Vec::new();
    let mut drain_r = Vec::new();
    let (mut drain_b_cpu, mut drain_r_cpu) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let ((b, b_cpu), (raw, raw_cpu)) = drain_both(bench, rep, drain_n).await?;
        eprintln!(
            "drain rep {rep}: bsfg {b:.0}/s raw {raw:.0}/s; CPU µs/fact node+nats+client bsfg {b_cpu:.1?} raw {raw_cpu:.1?}"
        );
        drain_b.push(Sample {
            rate: b,
            ..Default::default()
        });
        drain_r.push(Sample {
            rate: raw,
            ..Default::default()
        });
        drain_b_cpu.push(b_cpu);
        drain_r_cpu.push(raw_cpu);
    }
    Ok(DrainRuns {
        n: drain_n,
        prefill_rate,
        read_in_secs,
        drain_b,
        drain_r,
        drain_b_cpu,
        drain_r_cpu,
    })
}

/// One repetition of both drains (consumers `drain<rep+1>` and
/// `raw<rep+1>`): each one's facts/s and CPU per fact.
async fn drain_both(
    bench: &Bench,
    rep: usize,
    drain_n: u64,
) -> anyhow::Result<((f64, CpuPerFact), (f64, CpuPerFact))> {
    // CPU per drained fact of each process (node, nats-server, this client),
    // which the shared machine's noise moves less than the rates.
    let pids = [bench.node.pid(), bench.nats.pid(), std::process::id()];
    let cpu_now = || pids.map(cpu_seconds);
    let per_fact_us = |before: [f64; 3], after: [f64; 3]| {
        [0, 1, 2].map(|i| (after[i] - before[i]) * 1e6 / drain_n as f64)
    };
    // Alternate the order so neither side always gets the warm page cache.
    let bsfg_drain = async {
        let before = cpu_now();
        let rate = drain_bsfg(&bench.bsfg, &format!("drain{}", rep + 1), drain_n).await?;
        anyhow::Ok((rate, per_fact_us(before, cpu_now())))
    };
    let raw_drain = async {
        let before = cpu_now();
        let rate = drain_raw(&bench.js, &format!("raw{}", rep + 1), drain_n).await?;
        anyhow::Ok((rate, per_fact_us(before, cpu_now())))
    };
    if rep.is_multiple_of(2) {
        let b = bsfg_drain.await?;
        Ok((b, raw_drain.await?))
    } else {
        let raw = raw_drain.await?;
        Ok((bsfg_drain.await?, raw))
    }
}

/// Pre-fills the node's `drain` category with `count` facts, published
/// straight to JetStream exactly as the fact log lays them out.
async fn prefill(js: &jetstream::Context, count: u64, window: usize) -> anyhow::Result<f64> {
    let object = object_json(256);
    let published = raw_publish(js, window, f64::INFINITY, count, |i| {
        node_layout_message(
            "drain",
            &format!("drain:PlantA/B{i}"),
            &format!("drain-{}-{i}", run_id()),
            &object,
        )
    })
    .await?;
    anyhow::ensure!(
        published.errors == 0 && published.done == count,
        "prefill: {} of {count} facts acknowledged",
        published.done
    );
    Ok(published.sample().rate)
}

async fn drain_bsfg(
    client: &BoundaryServiceClient<SharedHttp2Connection>,
    consumer: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut got = 0u64;
    while got < count {
        let request = FetchFactsRequest {
            consumer_name: consumer.into(),
            limit: 1000,
            max_bytes: 8 << 20,
            wait_ms: 1000,
            ..Default::default()
        };
        let response = client.fetch_facts(request).await?.into_owned();
        let Some(last) = response.facts.last() else {
            bail!("FetchFacts returned nothing after {got} facts")
        };
        got += response.facts.len() as u64;
        let confirm = ConfirmReceiptRequest {
            consumer_name: consumer.into(),
            offset: last.offset,
            ..Default::default()
        };
        client.confirm_receipt(confirm).await?;
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

async fn drain_raw(js: &jetstream::Context, name: &str, count: u64) -> anyhow::Result<f64> {
    let stream = js.get_stream("facts_drain").await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: 20_000,
            max_batch: 10_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut got = 0u64;
    while got < count {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .max_bytes(8 << 20)
            .messages()
            .await?;
        let mut last = None;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            // Decode like the node does, so both sides pay for it.
            let _ = StoredFact::decode_from_slice(&m.payload)?;
            got += 1;
            last = Some(m);
        }
        let Some(last) = last else {
            bail!("raw fetch returned nothing after {got}")
        };
        // Cumulative ack with server confirmation, as ConfirmReceipt does.
        last.double_ack()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}
