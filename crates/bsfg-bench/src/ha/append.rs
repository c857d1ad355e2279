//! Item 1: AppendFact c64 and AppendFacts (`--batch-requests` requests of
//! `--batch-facts` facts in flight; 256 B facts) against a zone node on a
//! three-server cluster (R3) and on one server (R1), each against raw
//! pipelined JetStream publish (a unique `Nats-Msg-Id` each) to a stream of
//! as many replicas on the same servers. Both setups run side by side for
//! the whole item; each repetition measures, per setup, the three writers
//! in an order rotating by repetition, and every process's CPU per fact.

use super::HaArgs;
use super::store::Store;
use crate::child::{Child, free_port, start_node};
use crate::node_config::node_config;
use crate::publish::{create_replicated_stream, plain_message, raw_publish};
use crate::rpc::{append_batch_closed_loop, append_closed_loop, rpc_client};
use crate::run_id;
use crate::stats::Sample;
use bsfg_proto::bsfg::v1::BoundaryServiceClient;
use bsfg_testkit::procfs::{cpu_seconds, rss};
use connectrpc::Protocol;
use connectrpc::client::SharedHttp2Connection;
use std::path::Path;

/// Appends in flight, as in the single-zone bench and `ab`.
pub(super) const CONCURRENCY: usize = 64;
pub(super) const FACT_BYTES: usize = 256;
/// The raw publishes' stream, beside the node's streams.
const RAW_STREAM: &str = "rawpub";

/// Which writer a measured loop drives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Writer {
    /// AppendFact c64.
    Bsfg,
    /// AppendFacts, `--batch-requests` × `--batch-facts`.
    Batch,
    Raw,
}

/// The writers, rotated by one per repetition.
const WRITERS: [Writer; 3] = [Writer::Bsfg, Writer::Raw, Writer::Batch];

/// One measured loop.
pub(super) struct Measured {
    pub(super) sample: Sample,
    /// CPU per stored fact (µs) of each process: the node's (idle in a raw
    /// loop), then each nats-server's.
    pub(super) cpu_us: Vec<f64>,
}

/// One setup's loops.
pub(super) struct SetupRuns {
    pub(super) replicas: usize,
    pub(super) bsfg: Vec<Measured>,
    /// AppendFacts.
    pub(super) batch: Vec<Measured>,
    pub(super) raw: Vec<Measured>,
    /// VmHWM (MiB) at the end of the item: the node's, then each
    /// nats-server's.
    pub(super) peak_rss_mib: Vec<f64>,
}

/// A store, a node of zone `bench` on it, a client of the node.
struct Setup {
    store: Store,
    node: Child,
    client: BoundaryServiceClient<SharedHttp2Connection>,
}

impl Setup {
    /// The node's process id, then the servers'.
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.node.pid())
            .chain(self.store.pids())
            .collect()
    }
}

async fn start_setup(a: &HaArgs, dir: &Path, replicas: usize) -> anyhow::Result<Setup> {
    let store = Store::start(a, dir, "bench", replicas).await?;
    let (port, ops) = (free_port()?, free_port()?);
    // The NATS port given here is replaced by the store's URLs.
    let config = node_config((port, ops, 0), 0, dir, false)?;
    let config = store.configure(config, &a.nats_sync);
    let node = start_node(
        &a.bsfg,
        &config,
        &dir.join("node.toml"),
        &dir.join("node.log"),
    )
    .await?;
    let client = rpc_client(port, Protocol::Connect, None, BoundaryServiceClient::new).await?;
    create_replicated_stream(&store.js, RAW_STREAM, replicas).await?;
    Ok(Setup {
        store,
        node,
        client,
    })
}

/// Starts the R3 and the R1 setup and measures both, `--reps` times.
pub(super) async fn runs(a: &HaArgs, dir: &Path) -> anyhow::Result<Vec<SetupRuns>> {
    let mut setups = Vec::new();
    for replicas in [3, 1] {
        setups.push(start_setup(a, &dir.join(format!("r{replicas}")), replicas).await?);
    }
    let mut out: Vec<SetupRuns> = setups
        .iter()
        .map(|s| SetupRuns {
            replicas: s.store.replicas,
            bsfg: Vec::new(),
            batch: Vec::new(),
            raw: Vec::new(),
            peak_rss_mib: Vec::new(),
        })
        .collect();
    for rep in 0..a.reps.max(1) {
        let mut order = WRITERS;
        order.rotate_left(rep % WRITERS.len());
        for (setup, runs) in setups.iter().zip(&mut out) {
            for writer in order {
                let tag = format!("ha-r{}-{writer:?}-{rep}", runs.replicas);
                let m = measure(a, setup, writer, &tag).await?;
                let s = &m.sample;
                eprintln!(
                    "R{} {writer:?} rep {rep}: {:.0} facts/s p50 {:.2} p99 {:.2} ms, \
                     CPU µs/fact (node, servers) {:.1?}, errors {}",
                    runs.replicas, s.rate, s.p50_ms, s.p99_ms, m.cpu_us, s.errors
                );
                match writer {
                    Writer::Bsfg => runs.bsfg.push(m),
                    Writer::Batch => runs.batch.push(m),
                    Writer::Raw => runs.raw.push(m),
                }
            }
        }
    }
    for (setup, runs) in setups.iter().zip(&mut out) {
        runs.peak_rss_mib = setup
            .pids()
            .iter()
            .map(|&pid| rss(pid).peak_kib as f64 / 1024.0)
            .collect();
    }
    Ok(out)
}

/// A warm-up, then the measured loop of `writer` with every process's CPU.
async fn measure(a: &HaArgs, setup: &Setup, writer: Writer, tag: &str) -> anyhow::Result<Measured> {
    if a.warmup > 0.0 {
        drive(a, setup, writer, a.warmup, &format!("{tag}-warmup")).await?;
    }
    let pids = setup.pids();
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let (sample, facts) = drive(a, setup, writer, a.duration, tag).await?;
    let cpu_us = pids
        .iter()
        .zip(before)
        .map(|(&pid, b)| (cpu_seconds(pid) - b) * 1e6 / facts.max(1.0))
        .collect();
    Ok(Measured { sample, cpu_us })
}

/// `writer` for `secs`: its sample and the facts it stored.
async fn drive(
    a: &HaArgs,
    setup: &Setup,
    writer: Writer,
    secs: f64,
    tag: &str,
) -> anyhow::Result<(Sample, f64)> {
    match writer {
        Writer::Bsfg => {
            let tag = format!("{}-{tag}", run_id());
            let s = append_closed_loop(&setup.client, CONCURRENCY, FACT_BYTES, secs, tag).await;
            Ok((s, s.rate * secs))
        }
        Writer::Batch => {
            let tag = format!("{}-{tag}", run_id());
            let shape = (a.batch_requests, a.batch_facts);
            let s = append_batch_closed_loop(&setup.client, shape, FACT_BYTES, secs, tag).await;
            Ok((s, s.rate * secs))
        }
        Writer::Raw => {
            let payload = bytes::Bytes::from(vec![b'x'; FACT_BYTES]);
            let published = raw_publish(&setup.store.js, a.window, secs, u64::MAX, |i| {
                plain_message(RAW_STREAM, tag, i, &payload)
            })
            .await?;
            Ok((published.sample(), published.done as f64))
        }
    }
}
