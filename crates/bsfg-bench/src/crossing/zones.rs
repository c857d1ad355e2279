//! The three zones (each its own nats-server and `bsfg serve`), the proxies
//! between them, and what the phases read of them: stream counts, CPU and
//! memory.

use super::cli::CrossArgs;
use super::config::{issue_certs, node_config, parse_tls};
use crate::child::{Child, free_port, nats_server, start_node};
use crate::node_config::with_sync;
use anyhow::bail;
use async_nats::jetstream;
use bsfg::client::BsfgClient;
use bsfg_testkit::faultproxy::FaultProxy;
use bsfg_testkit::nats_server::NatsServer;
use bsfg_testkit::procfs::{cpu_seconds, reset_peak_rss as reset_process_peak_rss, rss};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) const ZONES: [&str; 3] = ["plant-a", "idmz", "enterprise"];

/// One zone: its nats-server, its node, and clients of both.
pub(super) struct Zone {
    pub(super) nats: NatsServer,
    pub(super) node: Child,
    pub(super) port: u16,
    pub(super) js: jetstream::Context,
    pub(super) client: BsfgClient,
}

/// CPU seconds so far of every zone's node and nats-server, and of this
/// bench process, in `ZONES` order (the bench last).
pub(super) fn cpu_snapshot(zones: &BTreeMap<&str, Zone>) -> Vec<f64> {
    ZONES
        .iter()
        .flat_map(|z| {
            [
                cpu_seconds(zones[z].node.pid()),
                cpu_seconds(zones[z].nats.pid()),
            ]
        })
        .chain(std::iter::once(cpu_seconds(std::process::id())))
        .collect()
}

/// Each process's CPU per fact since `before` (a `cpu_snapshot`).
pub(super) fn cpu_per_fact(
    zones: &BTreeMap<&str, Zone>,
    before: &[f64],
    facts: u64,
    generator: &str,
) -> String {
    let now = cpu_snapshot(zones);
    let us = |i: usize| (now[i] - before[i]) * 1e6 / facts.max(1) as f64;
    ZONES
        .iter()
        .enumerate()
        .map(|(i, z)| {
            format!(
                "{z} node {:.0} µs + nats-server {:.0} µs",
                us(2 * i),
                us(2 * i + 1)
            )
        })
        .chain(std::iter::once(format!(
            "{generator} (this bench) {:.0} µs",
            us(2 * ZONES.len())
        )))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resets every node's VmHWM to its current RSS (`/proc/<pid>/clear_refs`
/// = 5), so the next reading is the peak of what follows.
pub(super) fn reset_peak_rss(zones: &BTreeMap<&str, Zone>) {
    for z in ZONES {
        reset_process_peak_rss(zones[z].node.pid());
    }
}

/// A zone's (or a reference's) nats-server, at the run's `sync_interval`
/// (`--nats-sync`: every server of a run alike).
pub(super) async fn start_nats(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    sync: &str,
    extra: &str,
) -> anyhow::Result<(NatsServer, jetstream::Context)> {
    let server = nats_server(bin, dir, name, port, sync)
        .extra(extra)
        .start()
        .await?;
    let nc = async_nats::ConnectOptions::new()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await?;
    let mut js = jetstream::new(nc);
    js.set_timeout(Duration::from_secs(20));
    Ok((server, js))
}

/// Starts every zone, in `ZONES` order; idmz pulls plant-a through the
/// first proxy, enterprise pulls idmz through the second.
pub(super) async fn start_zones(
    a: &CrossArgs,
    dir: &Path,
) -> anyhow::Result<(FaultProxy, FaultProxy, BTreeMap<&'static str, Zone>)> {
    let mut ports = BTreeMap::new();
    for z in ZONES {
        ports.insert(z, (free_port()?, free_port()?, free_port()?)); // boundary, ops, nats
    }
    // idmz pulls plant-a through p1; enterprise pulls idmz through p2.
    let p1 = FaultProxy::start(format!("127.0.0.1:{}", ports["plant-a"].0).parse()?).await?;
    let p2 = FaultProxy::start(format!("127.0.0.1:{}", ports["idmz"].0).parse()?).await?;
    let mtls = parse_tls(&a.tls)?;
    let certs = dir.join("certs");
    if mtls {
        issue_certs(&certs, &ZONES)?;
    }
    let scheme = if mtls { "https" } else { "http" };
    let mut upstream_urls = BTreeMap::new();
    upstream_urls.insert(
        "plant-a",
        format!("{scheme}://127.0.0.1:{}", p1.addr.port()),
    );
    upstream_urls.insert("idmz", format!("{scheme}://127.0.0.1:{}", p2.addr.port()));
    let mut zones: BTreeMap<&str, Zone> = BTreeMap::new();
    for z in ZONES {
        let zone = start_zone(a, dir, z, ports[z], &upstream_urls, mtls).await?;
        zones.insert(z, zone);
    }
    Ok((p1, p2, zones))
}

/// One zone's nats-server and node, once the node listens, and a client of
/// it (with the zone's app certificate under mTLS).
async fn start_zone(
    a: &CrossArgs,
    dir: &Path,
    z: &str,
    (port, ops, nats_port): (u16, u16, u16),
    upstream_urls: &BTreeMap<&str, String>,
    mtls: bool,
) -> anyhow::Result<Zone> {
    let certs = dir.join("certs");
    let (nats, js) = start_nats(&a.nats_server, dir, z, nats_port, &a.nats_sync, "").await?;
    let config = node_config(z, (port, ops, nats_port), dir, upstream_urls, mtls)?;
    let config = with_sync(config, &a.nats_sync);
    let (toml, node_log) = (
        dir.join(format!("{z}.toml")),
        dir.join(format!("{z}.node.log")),
    );
    let node = start_node(&a.bsfg, &config, &toml, &node_log).await?;
    let client = if mtls {
        let f = |ext: &str| certs.join(format!("app.{z}.{ext}"));
        BsfgClient::from_files(
            &format!("https://127.0.0.1:{port}"),
            Some(&certs.join("ca.pem")),
            Some(&f("pem")),
            Some(&f("key")),
        )?
    } else {
        BsfgClient::connect(&format!("http://127.0.0.1:{port}"))?
    };
    Ok(Zone {
        nats,
        node,
        port,
        js,
        client,
    })
}

/// Every zone's node VmHWM, VmRSS and its nats-server's VmHWM (MiB).
pub(super) fn rss_snapshot(zones: &BTreeMap<&str, Zone>) -> Vec<(&'static str, f64, f64, f64)> {
    let mut snapshot = Vec::new();
    for z in ZONES {
        let node = rss(zones[z].node.pid());
        let nats_peak_kib = rss(zones[z].nats.pid()).peak_kib;
        snapshot.push((
            z,
            node.peak_kib as f64 / 1024.0,
            node.resident_kib as f64 / 1024.0,
            nats_peak_kib as f64 / 1024.0,
        ));
    }
    snapshot
}

/// Every zone's node VmHWM (MiB).
pub(super) fn node_peak_rss(zones: &BTreeMap<&str, Zone>) -> Vec<(&'static str, f64)> {
    let mut peaks = Vec::new();
    for z in ZONES {
        peaks.push((z, rss(zones[z].node.pid()).peak_kib as f64 / 1024.0));
    }
    peaks
}

pub(crate) async fn count(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut s = js.get_stream("facts_operational").await?;
    Ok(s.info().await?.state.messages)
}

pub(crate) async fn wait_count(
    js: &jetstream::Context,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    wait_messages(js, "facts_operational", target, timeout).await
}

/// Polls stream `name` every 10 ms until it holds `target` messages;
/// returns when it saw them.
pub(super) async fn wait_messages(
    js: &jetstream::Context,
    name: &str,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = js.get_stream(name).await?.info().await?.state.messages;
        if n >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{name}: timed out at {n} of {target} messages");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
