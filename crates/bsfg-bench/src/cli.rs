//! The command line: the single-zone run's flags and the other modes'
//! subcommands.

use crate::{ab, batch_sweep, crossing, ha, key_index, substrate};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "BSFG end-to-end benchmark")]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Cmd>,
    /// Markdown file whose results section is written/overwritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub(crate) out: PathBuf,
    /// Seconds per measured configuration.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Repetitions per configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Facts pre-filled and drained by the FetchFacts / raw pull comparison.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) drain_facts: u64,
    /// In-flight window of the raw JetStream pipelined publisher.
    #[arg(long, default_value_t = 256)]
    pub(crate) window: usize,
    /// AppendFacts requests in flight in the AppendFacts closed loop.
    #[arg(long, default_value_t = 4)]
    pub(crate) batch_requests: usize,
    /// Facts (256 B) per AppendFacts request.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_facts: usize,
    /// JetStream `sync_interval` of the bench's nats-server (shared by the
    /// raw baselines and the node): `always` (the default) is what a zone
    /// node's embedded server ships with; `2m` is JetStream's own default.
    #[arg(long, default_value = "always")]
    pub(crate) nats_sync: String,
    /// Wire protocol of the RPC clients (connect or grpc).
    #[arg(long, default_value = "connect")]
    pub(crate) protocol: String,
    /// nats-server binary.
    #[arg(long, default_value = ".tools/bin/nats-server")]
    pub(crate) nats_server: PathBuf,
    /// bsfg node binary (built with --release).
    #[arg(long, default_value = "target/release/bsfg")]
    pub(crate) bsfg: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Internal: serve the echo service on the given address (used by the bench).
    EchoServer {
        addr: String,
        /// A nats-server URL: every echo is first published to JetStream
        /// (subject `bareappend.<n>`, a unique `Nats-Msg-Id`) and answered
        /// only once JetStream acknowledges it (the "bare append").
        #[arg(long)]
        jetstream: Option<String>,
    },
    /// Replication across zones (plant-a -> idmz -> enterprise) vs native
    /// JetStream stream sourcing over a leaf node; writes its own section.
    Crossing(crossing::CrossArgs),
    /// nats-server alone with the storage layouts the node has used, variant
    /// by variant (fixed subjects as now; one subject per fact and its
    /// guard, as before the key index).
    Substrate(substrate::SubstrateArgs),
    /// The idempotency key index alone: CPU per recorded entry and per
    /// look-up as it grows (prints a Markdown table).
    KeyIndex(key_index::KeyIndexArgs),
    /// Two node binaries, A and B, in the same run: AppendFact c64 against
    /// each, a fresh nats-server and node per repetition, alternating order
    /// (prints a Markdown table).
    Ab(ab::AbArgs),
    /// One nats-server, one stream: batches stored as pipelined publishes
    /// against JetStream atomic batches, batch size by batch size (prints a
    /// Markdown table).
    Batches(batch_sweep::BatchSweepArgs),
    /// A zone on a three-server JetStream cluster: AppendFact c64 against
    /// raw publish on R3 (and R1), catch-up into R3 vs R1, failover between
    /// two nodes with `[ha]` (prints Markdown tables).
    Ha(ha::HaArgs),
}
