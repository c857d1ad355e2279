//! Item 2: one-hop catch-up into a zone on a three-server cluster (R3)
//! against one into a zone on one server (R1). Each run starts from
//! nothing: an upstream zone `plant-a` on one server and the downstream
//! zone `idmz` on the store measured, configured as the crossing bench's
//! (`crossing::zone_node_config`), idmz pulling plant-a through a
//! `FaultProxy`. With the proxy cut, `--backlog-facts` facts of 256 B
//! addressed to idmz are appended at plant-a (c64); then the proxy is
//! restored and idmz's link drains the backlog. The rate is facts / (the
//! restore → the last fact in idmz's stream).

use super::HaArgs;
use super::append::{CONCURRENCY, FACT_BYTES};
use crate::child::{Child, free_port, start_node};
use crate::crossing::{append_many, count, tag, wait_count, zone_node_config};
use crate::store::Store;
use bsfg::client::BsfgClient;
use bsfg_testkit::faultproxy::FaultProxy;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest a catch-up may take.
const CATCH_UP_MAX: Duration = Duration::from_secs(3600);

/// One catch-up.
pub(super) struct CatchUp {
    /// The downstream zone's replicas.
    pub(super) replicas: usize,
    /// Facts/s drained.
    pub(super) rate: f64,
    /// Facts/s of the backlog's pre-fill at plant-a.
    pub(super) fill_rate: f64,
}

/// `--reps` catch-ups into R3 and into R1, in alternating order.
pub(super) async fn runs(a: &HaArgs, dir: &Path) -> anyhow::Result<Vec<CatchUp>> {
    let mut out = Vec::new();
    for rep in 0..a.reps.max(1) {
        let order = if rep % 2 == 0 { [3, 1] } else { [1, 3] };
        for replicas in order {
            let run_dir = dir.join(format!("r{replicas}-{rep}"));
            let run = one_run(a, &run_dir, replicas).await?;
            eprintln!(
                "catch-up into R{replicas} rep {rep}: {:.0} facts/s (pre-fill {:.0}/s)",
                run.rate, run.fill_rate
            );
            out.push(run);
            if std::env::var_os("BSFG_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&run_dir);
            }
        }
    }
    Ok(out)
}

/// A zone's store and node.
struct Zone {
    store: Store,
    _node: Child,
}

async fn start_zone(
    a: &HaArgs,
    dir: &Path,
    (zone, replicas): (&str, usize),
    (port, ops): (u16, u16),
    upstream_urls: &BTreeMap<&str, String>,
) -> anyhow::Result<Zone> {
    let store = Store::start((&a.nats_server, &a.nats_sync), dir, zone, replicas).await?;
    // The NATS port given here is replaced by the store's URLs.
    let config = zone_node_config(zone, (port, ops, 0), dir, upstream_urls, false)?;
    let config = store.configure(config, &a.nats_sync);
    let (toml, log) = (
        dir.join(format!("{zone}.toml")),
        dir.join(format!("{zone}.node.log")),
    );
    let node = start_node(&a.bsfg, &config, &toml, &log).await?;
    Ok(Zone { store, _node: node })
}

async fn one_run(a: &HaArgs, dir: &Path, replicas: usize) -> anyhow::Result<CatchUp> {
    let upstream_ports = (free_port()?, free_port()?);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", upstream_ports.0).parse()?).await?;
    proxy.cut();
    let urls = BTreeMap::from([("plant-a", format!("http://127.0.0.1:{}", proxy.addr.port()))]);
    let _upstream = start_zone(a, dir, ("plant-a", 1), upstream_ports, &urls).await?;
    let downstream_ports = (free_port()?, free_port()?);
    let downstream = start_zone(a, dir, ("idmz", replicas), downstream_ports, &urls).await?;
    let base = count(&downstream.store.js).await?;
    let client = BsfgClient::connect(&format!("http://127.0.0.1:{}", upstream_ports.0))?;
    let n = a.backlog_facts;
    let fill_rate = append_many(
        &client,
        CONCURRENCY,
        n,
        &tag("ha-cu"),
        "hop1",
        "idmz",
        FACT_BYTES,
    )
    .await?;
    let restored_at = Instant::now();
    proxy.restore();
    let done = wait_count(&downstream.store.js, base + n, CATCH_UP_MAX).await?;
    Ok(CatchUp {
        replicas,
        rate: n as f64 / (done - restored_at).as_secs_f64(),
        fill_rate,
    })
}
