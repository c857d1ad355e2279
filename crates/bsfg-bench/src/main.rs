//! bsfg-bench: measures a real BSFG zone node against its two lower bounds,
//! raw JetStream and the bare RPC stack, in one run.
//!
//! Processes: the bench starts its own nats-server (free loopback port,
//! temporary store, `jetstream { domain: bench }`), a release `bsfg serve`
//! node pointed at it, and two echo-server processes (this binary,
//! `echo-server` subcommand): the bare RPC stack, and a bare append (an echo
//! that stores each request in JetStream before it answers). Clients run in
//! this process on a multi-threaded tokio runtime. Every configuration runs
//! for a fixed duration (or a fixed count for drains), `--reps` times; the
//! report gives medians.

mod ab;
mod batch_sweep;
mod child;
mod cli;
mod crossing;
mod drive;
mod echo_server;
mod ha;
mod key_index;
mod metrics;
mod node_config;
mod publish;
mod report;
mod rpc;
mod stats;
mod store;
mod substrate;
mod zone;

mod echo_proto {
    #![allow(missing_docs, clippy::all)]
    connectrpc::include_generated!();
}

use clap::Parser;
use cli::{Args, Cmd};
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.command {
        Some(Cmd::EchoServer { addr, jetstream }) => {
            rt.block_on(echo_server::echo_server(addr.clone(), jetstream.clone()))
        }
        Some(Cmd::Crossing(a)) => rt.block_on(crossing::run(a.clone())),
        Some(Cmd::Substrate(a)) => rt.block_on(substrate::run(a.clone())),
        Some(Cmd::KeyIndex(a)) => key_index::run(a.clone()),
        Some(Cmd::Ab(a)) => rt.block_on(ab::run(a.clone())),
        Some(Cmd::Batches(a)) => rt.block_on(batch_sweep::run(a.clone())),
        Some(Cmd::Ha(a)) => rt.block_on(ha::run(a.clone())),
        None => rt.block_on(zone::run(args)),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A canonical JSON object of exactly `size` bytes.
pub(crate) fn object_json(size: usize) -> String {
    let base = r#"{"pad":""}"#.len();
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(size.saturating_sub(base)))
}

/// This run's id (hex milliseconds at first use), in the message ids and
/// tags the bench writes.
static RUN_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
pub(crate) fn run_id() -> &'static str {
    RUN_ID.get_or_init(|| format!("{:x}", now_ms()))
}
