//! Item 1: writers against a zone node on a three-server cluster (R3) and on
//! one server (R1), 256 B facts, each setup with the same-run references:
//!
//! - AppendFact c64, and AppendFacts (`--batch-requests` requests of
//!   `--batch-facts` facts in flight);
//! - raw pipelined JetStream publish (`--window`, a unique `Nats-Msg-Id`
//!   each) of 256 B to a plain stream of as many replicas, and the same in
//!   the node's layout: the subjects, headers and records the node stores,
//!   to a stream configured as the node's categories ([`LAYOUT_COPY`]);
//! - atomic batches straight to JetStream, one at a time, of 64 and of
//!   `--batch-requests` × `--batch-facts` 256 B messages: the commits the
//!   node makes for AppendFact c64 and for AppendFacts, without the node;
//! - echo c64 (the bench's echo server: the RPC stack alone, the ceiling of
//!   any unary RPC at c64 on this machine) and the bare append c64 (the echo
//!   server storing each request in this setup's JetStream before it
//!   answers: the least an AppendFact does).
//!
//! Both setups run side by side for the whole item; each repetition
//! measures, per setup, every writer in an order rotating by repetition,
//! and every process's CPU per fact.

use super::HaArgs;
use crate::batch_sweep::atomic_of;
use crate::child::{Child, free_port, start_echo_server, start_node};
use crate::drive::closed_loop;
use crate::echo_proto::bench::v1::EchoServiceClient;
use crate::node_config::node_config;
use crate::publish::{
    LAYOUT_COPY, create_atomic_stream, create_layout_copy_stream, create_replicated_stream,
    node_layout_message, plain_message, raw_publish,
};
use crate::rpc::{append_batch_closed_loop, append_closed_loop, echo_once, rpc_client};
use crate::stats::{Sample, pct_ms};
use crate::store::Store;
use crate::{object_json, run_id};
use async_nats::jetstream;
use bsfg_proto::bsfg::v1::BoundaryServiceClient;
use bsfg_testkit::procfs::{cpu_seconds, rss};
use connectrpc::Protocol;
use connectrpc::client::SharedHttp2Connection;
use std::path::Path;
use std::time::{Duration, Instant};

/// Appends in flight, as in the single-zone bench and `ab`.
pub(super) const CONCURRENCY: usize = 64;
pub(super) const FACT_BYTES: usize = 256;
/// The raw publishes' stream, beside the node's streams.
const RAW_STREAM: &str = "rawpub";
/// The bare append's stream (the echo server's subjects `bareappend.>`).
const BARE_STREAM: &str = "bareappend";
/// The raw atomic batches' stream.
const ATOMIC_STREAM: &str = "rawatomic";

/// Which writer a measured loop drives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Writer {
    /// AppendFact c64.
    Bsfg,
    /// AppendFacts, `--batch-requests` × `--batch-facts`.
    Batch,
    /// Raw pipelined publish, 256 B payloads.
    Raw,
    /// The same with AppendFact c64's facts in flight: `CONCURRENCY`.
    RawNarrow,
    /// Raw pipelined publish of the node's records.
    Layout,
    /// Atomic batches of `CONCURRENCY`, one at a time.
    AtomicNarrow,
    /// Atomic batches of AppendFacts' facts in flight, one at a time.
    AtomicWide,
    /// `CONCURRENCY` facts in flight as [`PAIR_LANES`] atomic batches at
    /// once: what a writer not fenced to one batch in flight could commit.
    AtomicPair,
    /// Echo c64: the RPC stack alone.
    Echo,
    /// Bare append c64: echo, storing each request first.
    Bare,
}

/// The writers, rotated by one per repetition.
const WRITERS: [Writer; 10] = [
    Writer::Bsfg,
    Writer::Raw,
    Writer::AtomicWide,
    Writer::Batch,
    Writer::Echo,
    Writer::Layout,
    Writer::RawNarrow,
    Writer::AtomicNarrow,
    Writer::Bare,
    Writer::AtomicPair,
];

/// One measured loop.
pub(super) struct Measured {
    pub(super) sample: Sample,
    /// CPU per stored fact (µs) of each process: the RPC server's (the
    /// node, the echo or the bare append server; the idle node in a raw
    /// loop), then each nats-server's.
    pub(super) cpu_us: Vec<f64>,
    /// CPU per stored fact (µs) of the load generator (this process: the
    /// clients, which share the machine with the servers).
    pub(super) clients_us: f64,
}

/// One setup's loops.
pub(super) struct SetupRuns {
    pub(super) replicas: usize,
    /// Each writer's loops, in [`WRITERS`] order.
    runs: Vec<(Writer, Vec<Measured>)>,
    /// VmHWM (MiB) at the end of the item: the node's, then each
    /// nats-server's.
    pub(super) peak_rss_mib: Vec<f64>,
}

impl SetupRuns {
    /// `writer`'s loops.
    pub(super) fn of(&self, writer: Writer) -> &[Measured] {
        let (_, runs) = self
            .runs
            .iter()
            .find(|(w, _)| *w == writer)
            .expect("every writer has its entry");
        runs
    }

    fn push(&mut self, writer: Writer, measured: Measured) {
        let (_, runs) = self
            .runs
            .iter_mut()
            .find(|(w, _)| *w == writer)
            .expect("every writer has its entry");
        runs.push(measured);
    }
}

/// A store, a node of zone `bench` on it, the echo and bare append servers,
/// and a client of each.
struct Setup {
    store: Store,
    node: Child,
    echo: Child,
    bare: Child,
    client: BoundaryServiceClient<SharedHttp2Connection>,
    echo_client: EchoServiceClient<SharedHttp2Connection>,
    bare_client: EchoServiceClient<SharedHttp2Connection>,
}

impl Setup {
    /// The process serving `writer`'s RPCs (the idle node for a raw
    /// writer), then the servers'.
    fn pids(&self, writer: Writer) -> Vec<u32> {
        let server = match writer {
            Writer::Echo => self.echo.pid(),
            Writer::Bare => self.bare.pid(),
            Writer::Bsfg
            | Writer::Batch
            | Writer::Raw
            | Writer::RawNarrow
            | Writer::Layout
            | Writer::AtomicNarrow
            | Writer::AtomicWide
            | Writer::AtomicPair => self.node.pid(),
        };
        std::iter::once(server).chain(self.store.pids()).collect()
    }
}

async fn start_setup(a: &HaArgs, dir: &Path, replicas: usize) -> anyhow::Result<Setup> {
    let store = Store::start((&a.nats_server, &a.nats_sync), dir, "bench", replicas).await?;
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
    create_replicated_stream(&store.js, BARE_STREAM, replicas).await?;
    create_layout_copy_stream(&store.js, replicas).await?;
    create_atomic_stream(&store.js, ATOMIC_STREAM, replicas).await?;
    let (echo_port, bare_port) = (free_port()?, free_port()?);
    let echo = start_echo_server(dir, echo_port, "echo.log", "echo server", None).await?;
    let urls = store.urls().join(",");
    let bare = start_echo_server(dir, bare_port, "bare.log", "bare append", Some(&urls)).await?;
    let echo_client = rpc_client(echo_port, Protocol::Connect, None, EchoServiceClient::new);
    let bare_client = rpc_client(bare_port, Protocol::Connect, None, EchoServiceClient::new);
    Ok(Setup {
        store,
        node,
        echo,
        bare,
        client,
        echo_client: echo_client.await?,
        bare_client: bare_client.await?,
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
            runs: WRITERS.iter().map(|&w| (w, Vec::new())).collect(),
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
                     CPU µs/fact (RPC server, nats-servers) {:.1?}, clients {:.1}, errors {}",
                    runs.replicas, s.rate, s.p50_ms, s.p99_ms, m.cpu_us, m.clients_us, s.errors
                );
                runs.push(writer, m);
            }
        }
    }
    for (setup, runs) in setups.iter().zip(&mut out) {
        runs.peak_rss_mib = setup
            .pids(Writer::Bsfg)
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
    // The servers', then this process's: the clients.
    let pids: Vec<u32> = setup
        .pids(writer)
        .into_iter()
        .chain([std::process::id()])
        .collect();
    let before: Vec<f64> = pids.iter().map(|&pid| cpu_seconds(pid)).collect();
    let (sample, facts) = drive(a, setup, writer, a.duration, tag).await?;
    let mut cpu_us: Vec<f64> = pids
        .iter()
        .zip(before)
        .map(|(&pid, b)| (cpu_seconds(pid) - b) * 1e6 / facts.max(1.0))
        .collect();
    let clients_us = cpu_us.pop().expect("this process was measured");
    Ok(Measured {
        sample,
        cpu_us,
        clients_us,
    })
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
        Writer::Raw | Writer::RawNarrow => {
            let payload = bytes::Bytes::from(vec![b'x'; FACT_BYTES]);
            let window = match writer {
                Writer::Raw => a.window,
                _ => CONCURRENCY,
            };
            let published = raw_publish(&setup.store.js, window, secs, u64::MAX, |i| {
                plain_message(RAW_STREAM, tag, i, &payload)
            })
            .await?;
            Ok((published.sample(), published.done as f64))
        }
        Writer::Layout => {
            let (object, run) = (object_json(FACT_BYTES), run_id());
            let published = raw_publish(&setup.store.js, a.window, secs, u64::MAX, |i| {
                let message_id = format!("{run}-{tag}-{i}");
                node_layout_message(LAYOUT_COPY, "batch:PlantA/B1042", &message_id, &object)
            })
            .await?;
            Ok((published.sample(), published.done as f64))
        }
        Writer::AtomicNarrow | Writer::AtomicWide => {
            let size = match writer {
                Writer::AtomicNarrow => CONCURRENCY,
                _ => a.batch_requests * a.batch_facts,
            };
            let s = atomic_loop(&setup.store.js, size, secs, tag).await?;
            Ok((s, s.rate * secs))
        }
        Writer::AtomicPair => {
            let s = atomic_lanes(&setup.store.js, CONCURRENCY, secs, tag).await?;
            Ok((s, s.rate * secs))
        }
        Writer::Echo | Writer::Bare => {
            let client = match writer {
                Writer::Echo => setup.echo_client.clone(),
                _ => setup.bare_client.clone(),
            };
            let s = closed_loop(CONCURRENCY, secs, move |_, _| echo_once(&client)).await;
            Ok((s, s.rate * secs))
        }
    }
}

/// How many atomic batches [`Writer::AtomicPair`] keeps in flight at once.
pub(super) const PAIR_LANES: usize = 2;

/// `facts` in flight as [`PAIR_LANES`] loops of atomic batches of
/// `facts / PAIR_LANES`, side by side on one stream, no fence between them:
/// their rates add up, their latencies merge.
async fn atomic_lanes(
    js: &jetstream::Context,
    facts: usize,
    secs: f64,
    tag: &str,
) -> anyhow::Result<Sample> {
    assert!(facts.is_multiple_of(PAIR_LANES), "lanes of equal batches");
    let lanes = (0..PAIR_LANES).map(|lane| {
        let (js, tag) = (js.clone(), format!("{tag}-lane{lane}"));
        tokio::spawn(async move { atomic_loop(&js, facts / PAIR_LANES, secs, &tag).await })
    });
    let mut samples = Vec::with_capacity(PAIR_LANES);
    for lane in lanes.collect::<Vec<_>>() {
        samples.push(lane.await??);
    }
    let worst = |f: fn(&Sample) -> f64| samples.iter().map(f).fold(0.0, f64::max);
    Ok(Sample {
        rate: samples.iter().map(|s| s.rate).sum(),
        p50_ms: worst(|s| s.p50_ms),
        p99_ms: worst(|s| s.p99_ms),
        errors: 0,
    })
}

/// Atomic batches of `size` 256 B messages (a unique `Nats-Msg-Id` each),
/// one at a time, for `secs`; latencies per batch.
async fn atomic_loop(
    js: &jetstream::Context,
    size: usize,
    secs: f64,
    tag: &str,
) -> anyhow::Result<Sample> {
    let payload = bytes::Bytes::from(vec![b'x'; FACT_BYTES]);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut done, mut batches) = (0u64, 0u64);
    let mut latencies_us = Vec::new();
    while Instant::now() < end {
        let first = batches * size as u64;
        let messages = (first..first + size as u64)
            .map(|i| {
                let (subject, headers, _) = plain_message(ATOMIC_STREAM, tag, i, &payload);
                (subject, headers)
            })
            .collect();
        let sent = Instant::now();
        let id = format!("{}-{tag}-{batches}", run_id());
        atomic_of(js, messages, &id, || payload.clone()).await?;
        latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        done += size as u64;
        batches += 1;
    }
    latencies_us.sort_unstable();
    Ok(Sample {
        rate: done as f64 / start.elapsed().as_secs_f64(),
        p50_ms: pct_ms(&latencies_us, 50.0),
        p99_ms: pct_ms(&latencies_us, 99.0),
        errors: 0,
    })
}
