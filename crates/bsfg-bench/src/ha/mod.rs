//! `bsfg-bench ha`: a zone on a three-server JetStream cluster, in one run,
//! every nats-server at `--nats-sync`:
//!
//! 1. AppendFact c64 and AppendFacts (`--batch-requests` ×
//!    `--batch-facts`) against a node on the cluster (`[nats] urls`,
//!    `replicas = 3`), raw pipelined publish to R3 streams on it (256 B, and
//!    the node's records), echo c64 and the bare append c64; the same on one
//!    server (R1) for reference (`append`).
//! 2. One-hop catch-up into a zone on the cluster and into a zone on one
//!    server (`catch_up`).
//! 3. Failover between two nodes of one zone with `[ha]`: the active node
//!    killed again and again (`failover`).
//!
//! Prints Markdown tables (`report`); `--parts` runs a subset.

mod append;
mod catch_up;
mod failover;
mod report;

use crate::child::scopeguard;
use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct HaArgs {
    /// Seconds of each measured loop of item 1 (AppendFact c64,
    /// AppendFacts, raw publish, echo, bare append).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before each measured loop (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Repetitions of items 1 and 2 (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// In-flight window of the raw pipelined publisher.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// AppendFacts requests in flight (the batch writer).
    #[arg(long, default_value_t = 4)]
    batch_requests: usize,
    /// Facts (256 B) per AppendFacts request.
    #[arg(long, default_value_t = 64)]
    batch_facts: usize,
    /// Facts (256 B) of the catch-up's backlog.
    #[arg(long, default_value_t = 100_000)]
    backlog_facts: u64,
    /// Kills of the active node in the failover item.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Items to run: append, catch-up, failover.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "append,catch-up,failover"
    )]
    parts: Vec<String>,
    /// JetStream `sync_interval` of every nats-server of the run (and the
    /// nodes' `[nats] sync_interval`): `always` is what a zone ships with.
    #[arg(long, default_value = "always")]
    nats_sync: String,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
    #[arg(long, default_value = "target/release/bsfg")]
    bsfg: PathBuf,
}

pub async fn run(a: HaArgs) -> anyhow::Result<()> {
    for part in &a.parts {
        anyhow::ensure!(
            ["append", "catch-up", "failover"].contains(&part.as_str()),
            "--parts {part}: expected append, catch-up or failover"
        );
    }
    let root = std::env::temp_dir().join(format!("bsfg-bench-ha-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let _cleanup = scopeguard(root.clone());
    eprintln!("run dir {}", root.display());
    let runs = |part: &str| a.parts.iter().any(|p| p == part);
    let mut results = report::Results::started();
    if runs("append") {
        results.append = append::runs(&a, &root.join("append")).await?;
    }
    if runs("catch-up") {
        results.catch_up = catch_up::runs(&a, &root.join("catch-up")).await?;
    }
    if runs("failover") {
        results.failover = Some(failover::run(&a, &root.join("failover")).await?);
    }
    results.finish();
    print!("{}", report::markdown(&a, &results));
    Ok(())
}
