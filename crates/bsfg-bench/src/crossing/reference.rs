//! Phase (b), the substrate references: native JetStream stream sourcing
//! over a leaf node, and a bare bridge, on the same servers and backlog.

use super::Row;
use super::bridge::bare_bridge;
use super::cli::CrossArgs;
use super::zones::{start_nats, wait_messages};
use crate::child::free_port;
use async_nats::jetstream::{self, stream};
use bsfg_testkit::faultproxy::FaultProxy;
use bsfg_testkit::procfs::{cpu_seconds, rss};
use std::path::Path;
use std::time::{Duration, Instant};

/// One reference catch-up: its rate and the CPU each process spent per
/// message.
pub(super) struct ReferenceRun {
    pub(super) rate: f64,
    pub(super) cpu: String,
}

/// The substrate references, each on loopback and behind the delay.
pub(super) struct Reference {
    pub(super) native: [ReferenceRun; 2],
    pub(super) bridge: [ReferenceRun; 2],
    pub(super) rss_line: String,
}

/// (b) and its floor. A hub nats-server (domain `hub`) holds a backlog of
/// `native_facts` × 256 B; a leaf nats-server (domain `leaf`) catches it up
/// twice by native stream sourcing (leaf-node link through a proxy), then
/// twice through a **bare bridge**: this process pulls the hub's stream
/// (through a proxy too) and publishes every message with its idempotency
/// key into a stream of the leaf's domain. The bridge is what any
/// receiver-pulled crossing that stores one JetStream message per fact pays
/// before it does anything of its own (no RPC between zones, validation,
/// key index, provenance or authorisation), on the same servers and
/// backlog, so it shows how much of native sourcing's rate this machine
/// leaves for such a design.
pub(super) async fn reference_runs(
    a: &CrossArgs,
    dir: &Path,
    delay: Duration,
) -> anyhow::Result<Reference> {
    let (hub_port, hub_leaf_port, leaf_port) = (free_port()?, free_port()?, free_port()?);
    let (hub, hub_js) = start_nats(
        &a.nats_server,
        dir,
        "hub",
        hub_port,
        &a.nats_sync,
        &format!("leafnodes {{\n  listen: \"127.0.0.1:{hub_leaf_port}\"\n}}"),
    )
    .await?;
    let leaf_proxy = FaultProxy::start(format!("127.0.0.1:{hub_leaf_port}").parse()?).await?;
    let (leaf, leaf_js) = start_nats(
        &a.nats_server,
        dir,
        "leaf",
        leaf_port,
        &a.nats_sync,
        &format!(
            "leafnodes {{\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ]\n}}",
            leaf_proxy.addr.port()
        ),
    )
    .await?;
    prefill_hub(&hub_js, a.native_facts).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // leaf connects
    let cpu = CpuMeter {
        pids: [hub.pid(), leaf.pid(), std::process::id()],
        messages: a.native_facts,
    };
    let native = native_runs(&leaf_js, &leaf_proxy, &cpu, a.native_facts, delay).await?;
    leaf_proxy.set_delay(Duration::ZERO);
    let bridge = bridge_runs(hub_port, &leaf_js, &cpu, a.native_facts, delay).await?;
    let rss_line = format!(
        "* native: hub nats-server VmHWM {:.1} MiB, leaf nats-server VmHWM {:.1} MiB",
        rss(hub.pid()).peak_kib as f64 / 1024.0,
        rss(leaf.pid()).peak_kib as f64 / 1024.0
    );
    let pair = |v: Vec<ReferenceRun>| {
        <[ReferenceRun; 2]>::try_from(v).map_err(|_| anyhow::anyhow!("two runs each"))
    };
    Ok(Reference {
        native: pair(native)?,
        bridge: pair(bridge)?,
        rss_line,
    })
}

/// The references' rows of the measurements table.
pub(super) fn rows(a: &CrossArgs, r: &Reference) -> Vec<Row> {
    let mut rows = Vec::new();
    let rtt = 2 * a.delay_ms;
    for (what, runs) in [
        ("Native sourcing over leaf node", &r.native),
        (
            "Bare bridge (substrate reference: one async-nats client pulls the hub's stream and publishes each message with `Nats-Msg-Id` into the leaf's domain)",
            &r.bridge,
        ),
    ] {
        for (run, link) in runs
            .iter()
            .zip(["loopback".to_string(), format!("RTT {rtt} ms")])
        {
            rows.push(Row {
                name: format!("{what}, catch-up of {} × 256 B, {link}", a.native_facts),
                rate: run.rate,
                detail: format!("CPU per message: {}", run.cpu),
            });
        }
    }
    rows
}

/// CPU seconds of the hub's and the leaf's nats-server and of this bench,
/// per message of a reference catch-up.
struct CpuMeter {
    pids: [u32; 3],
    messages: u64,
}

impl CpuMeter {
    fn now(&self) -> [f64; 3] {
        self.pids.map(cpu_seconds)
    }

    /// Each process's CPU per message since `before`; `what` is what this
    /// bench did meanwhile.
    fn line(&self, before: [f64; 3], what: &str) -> String {
        let now = self.now();
        let us = |i: usize| (now[i] - before[i]) * 1e6 / self.messages.max(1) as f64;
        format!(
            "hub nats-server {:.0} µs + leaf nats-server {:.0} µs; this bench ({what}) {:.0} µs",
            us(0),
            us(1),
            us(2)
        )
    }
}

/// The hub's stream `SRC` with `count` × 256 B messages, published with
/// 256 acknowledgements in flight.
async fn prefill_hub(hub_js: &jetstream::Context, count: u64) -> anyhow::Result<()> {
    hub_js
        .create_stream(stream::Config {
            name: "SRC".into(),
            subjects: vec!["src.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..count {
        inflight.push_back(
            hub_js
                .publish(format!("src.{}", i % 1024), payload.clone())
                .await?,
        );
        if inflight.len() >= 256 {
            inflight.pop_front().unwrap().await?;
        }
    }
    for f in inflight {
        f.await?;
    }
    eprintln!(
        "native pre-fill {} msgs: {:.0} msg/s",
        count,
        count as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Native sourcing into a new stream of the leaf, on loopback, then with
/// the leaf link's proxy delaying by `delay`.
async fn native_runs(
    leaf_js: &jetstream::Context,
    leaf_proxy: &FaultProxy,
    cpu: &CpuMeter,
    count: u64,
    delay: Duration,
) -> anyhow::Result<Vec<ReferenceRun>> {
    let mut native = Vec::new();
    for (name, d) in [("DST_LOOPBACK", Duration::ZERO), ("DST_WAN", delay)] {
        leaf_proxy.set_delay(d);
        let before = cpu.now();
        let t = Instant::now();
        let mut source = stream::Source {
            name: "SRC".into(),
            ..Default::default()
        };
        source.external = Some(stream::External {
            api_prefix: "$JS.hub.API".into(),
            delivery_prefix: None,
        });
        leaf_js
            .create_stream(stream::Config {
                name: name.into(),
                storage: stream::StorageType::File,
                sources: Some(vec![source]),
                ..Default::default()
            })
            .await?;
        wait_messages(leaf_js, name, count, Duration::from_secs(1800)).await?;
        let rate = count as f64 / t.elapsed().as_secs_f64();
        eprintln!("native sourcing {name} (one-way delay {d:?}): {rate:.0} msg/s");
        native.push(ReferenceRun {
            rate,
            cpu: cpu.line(before, "the leaf link's proxy"),
        });
        leaf_js.delete_stream(name).await?;
    }
    Ok(native)
}

/// The bare bridge, pulling the hub through a proxy of its own, on
/// loopback, then with that proxy delaying by `delay`.
async fn bridge_runs(
    hub_port: u16,
    leaf_js: &jetstream::Context,
    cpu: &CpuMeter,
    count: u64,
    delay: Duration,
) -> anyhow::Result<Vec<ReferenceRun>> {
    let hub_proxy = FaultProxy::start(format!("127.0.0.1:{hub_port}").parse()?).await?;
    let bridge_hub = jetstream::new(
        async_nats::ConnectOptions::new()
            .connect(format!("nats://127.0.0.1:{}", hub_proxy.addr.port()))
            .await?,
    );
    let mut bridge = Vec::new();
    for (name, d) in [("BRIDGE_LOOPBACK", Duration::ZERO), ("BRIDGE_WAN", delay)] {
        hub_proxy.set_delay(d);
        let before = cpu.now();
        let rate = bare_bridge(&bridge_hub, leaf_js, name, count).await?;
        eprintln!("bare bridge {name} (one-way delay {d:?}): {rate:.0} msg/s");
        bridge.push(ReferenceRun {
            rate,
            cpu: cpu.line(before, "the bridge and the hub link's proxy"),
        });
        leaf_js.delete_stream(name).await?;
    }
    Ok(bridge)
}
