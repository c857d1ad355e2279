//! `bsfg-bench crossing`: replication across zones vs native JetStream
//! stream sourcing over a leaf node, in the same run.
//!
//! Topology: three zones `plant-a` → `idmz` → `enterprise`, each its own
//! nats-server (JetStream domain = zone name) and its own release
//! `bsfg serve` process, `[tls] mode = "plaintext-dev"`. `idmz` pulls from
//! `plant-a` and `enterprise` pulls from `idmz`, each through a
//! `bsfg_testkit::faultproxy::FaultProxy` (cut / restore / delay). Facts of kind
//! `hop1` are addressed to `idmz` (one hop), kind `hop2` to `enterprise`
//! (two hops; idmz's `to-enterprise` consumer only carries `hop2`).
//! Arrivals are counted from the destination zone's `facts_operational`
//! stream state.
//!
//! Reference: a hub nats-server (domain `hub`) and a leaf nats-server
//! (domain `leaf`) joined by `leafnodes` through another FaultProxy; a stream
//! on the leaf `sources` the hub's stream with `external.api =
//! "$JS.hub.API"`. Beside it, on the same servers and backlog, a bare bridge
//! (see `reference_runs`): the substrate's ceiling for any crossing that
//! stores one JetStream message per fact.
//!
//! The phases, one module each, run in this order: `reference` (b),
//! `throughput` (a) and (c), `backlog` (e), `lag` (d) (after (e): its
//! open-loop flood would inflate plant-a's RSS), `artifact` (f); then
//! `report`.

mod artifact;
mod backlog;
mod bridge;
mod cli;
mod config;
mod lag;
mod load;
mod reference;
mod report;
mod throughput;
mod zones;

pub use cli::CrossArgs;
pub(crate) use config::{issue_certs, node_config as zone_node_config, parse_tls};
pub(crate) use load::{append_many, tag};
pub(crate) use zones::{count, wait_count};

use crate::child::scopeguard;
use crate::now_ms;
use std::time::Duration;

/// A row of the measurements table.
struct Row {
    name: String,
    rate: f64,
    detail: String,
}

pub async fn run(a: CrossArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("bsfg-bench-crossing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = scopeguard(dir.clone());
    eprintln!("run dir {}", dir.display());
    let delay = Duration::from_millis(a.delay_ms);
    let started_at = now_ms();
    let mut rows: Vec<Row> = Vec::new();
    let mut rss_lines: Vec<String> = Vec::new();

    // (b) native sourcing, and a bare bridge
    let reference = if a.only_bsfg_throughput || a.only_lag {
        None
    } else {
        Some(reference::reference_runs(&a, &dir, delay).await?)
    };
    if let Some(r) = &reference {
        rows.extend(reference::rows(&a, r));
        rss_lines.push(r.rss_line.clone());
        if a.only_reference {
            report::print_rows(&rows);
            return Ok(());
        }
    }

    // BSFG zones
    let (p1, p2, zones) = zones::start_zones(&a, &dir).await?;
    let _ = zones["plant-a"].port;
    let timeout = Duration::from_secs(3600);

    // (a)+(c) catch-up, (a) steady state
    let catch_up = throughput::catch_up(&a, &zones, (&p1, &p2), delay, timeout, &mut rows).await?;
    throughput::steady_state(&a, &zones, timeout, &mut rows).await?;
    if a.only_bsfg_throughput {
        report::print_throughput_only(&a, &rows);
        return Ok(());
    }
    let rss_lifetime = zones::node_peak_rss(&zones);

    // (e) backlog after a partition, RSS
    let backlog = backlog::backlog_run(&a, &zones, &p2, timeout).await?;
    let rss = zones::rss_snapshot(&zones);

    // (d) two-hop lag (after (e): the open-loop flood inflates plant-a's RSS)
    let (lag, lag_cpu, lag_low) = lag::lag_runs(&a, &zones, timeout).await?;
    if a.only_lag {
        report::print_peak_rss(&rss);
        return Ok(());
    }

    // (f) artifact crossing
    let artifact = artifact::artifact_run(&a, &zones, timeout).await?;
    let rss_after_artifact = zones::node_peak_rss(&zones);

    let results = report::Results {
        started_at,
        reference,
        catch_up,
        rows,
        rss_lines,
        backlog,
        rss,
        rss_lifetime,
        lag,
        lag_cpu,
        lag_low,
        artifact,
        rss_after_artifact,
    };
    report::write(&a, &results)
}
