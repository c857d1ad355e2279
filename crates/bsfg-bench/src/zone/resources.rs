//! After the phases: what the processes and the node's stream hold at the
//! end of the run.

use super::setup::Bench;
use bsfg_testkit::procfs::{cpu_seconds, rss};
use std::path::Path;

/// The run's end state, for the report's resources section.
pub(super) struct Resources {
    /// nats-server's stream-state file of the node's operational stream.
    pub(super) state_file_mib: String,
    pub(super) operational_facts: u64,
    /// The node's VmHWM and VmRSS (KiB).
    pub(super) node_hwm: u64,
    pub(super) node_rss: u64,
    /// VmHWM (KiB) of nats-server and of the echo server.
    pub(super) nats_hwm: u64,
    pub(super) echo_hwm: u64,
    /// The node's CPU seconds over the whole run.
    pub(super) node_cpu_total: f64,
}

pub(super) async fn measure(bench: &Bench, dir: &Path) -> anyhow::Result<Resources> {
    // nats-server's periodic stream-state file for the node's stream: it
    // holds a record per subject (per kind now; per fact before the key index).
    let state_file_mib = std::fs::metadata(
        dir.join("js-bench/jetstream/$G/streams/facts_operational/msgs/index.db"),
    )
    .map_or_else(
        |_| "not written yet".to_string(),
        |m| format!("{:.1} MiB", m.len() as f64 / 1048576.0),
    );
    let operational_facts = bench
        .js
        .get_stream("facts_operational")
        .await?
        .info()
        .await?
        .state
        .messages;
    let node = rss(bench.node.pid());
    let (node_hwm, node_rss) = (node.peak_kib, node.resident_kib);
    let nats_hwm = rss(bench.nats.pid()).peak_kib;
    let echo_hwm = rss(bench.echo.pid()).peak_kib;
    let node_cpu_total = cpu_seconds(bench.node.pid());
    Ok(Resources {
        state_file_mib,
        operational_facts,
        node_hwm,
        node_rss,
        nats_hwm,
        echo_hwm,
        node_cpu_total,
    })
}
