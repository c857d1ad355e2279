//! `bsfg-bench crossing`'s flags.

use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct CrossArgs {
    /// Markdown file whose crossing results section is written/overwritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub(super) out: PathBuf,
    /// Facts per BSFG catch-up / steady-state measurement.
    #[arg(long, default_value_t = 20_000)]
    pub(super) facts: u64,
    /// Backlog of 256 B messages for native leaf-node sourcing.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) native_facts: u64,
    /// Backlog drained after a partition for the RSS measurement (e); 0 skips.
    #[arg(long, default_value_t = 1_000_000)]
    pub(super) backlog_facts: u64,
    /// Artifact size in MiB for (f).
    #[arg(long, default_value_t = 1024)]
    pub(super) artifact_mib: u64,
    /// Offered rate (facts/s) for the two-hop lag measurement.
    #[arg(long, default_value_t = 5000.0)]
    pub(super) lag_rate: f64,
    /// A second, lower offered rate for the lag measurement (0 skips).
    #[arg(long, default_value_t = 1000.0)]
    pub(super) lag_low_rate: f64,
    /// Seconds of offered load for the lag measurement.
    #[arg(long, default_value_t = 10.0)]
    pub(super) lag_secs: f64,
    /// One-way delay in ms of the "WAN" runs (RTT = 2x).
    #[arg(long, default_value_t = 10)]
    pub(super) delay_ms: u64,
    /// Concurrency of the AppendFact pre-fill at the source.
    #[arg(long, default_value_t = 64)]
    pub(super) concurrency: usize,
    /// Facts per AppendFacts request of the steady-state load (then
    /// `--concurrency` requests in flight); 0: one AppendFact per fact.
    #[arg(long, default_value_t = 0)]
    pub(super) append_batch: usize,
    /// Node transport: plaintext-dev, or mtls (site CA, node and app certificates generated per run).
    #[arg(long, default_value = "plaintext-dev")]
    pub(super) tls: String,
    /// Run only the catch-up and steady-state phases (a)/(c) against BSFG (no native, lag, drain, artifact).
    #[arg(long)]
    pub(super) only_bsfg_throughput: bool,
    /// Run only the two-hop lag measurement (d) and print it (nothing written); for quick A/B runs.
    #[arg(long)]
    pub(super) only_lag: bool,
    /// Run only the substrate references (native sourcing and the bare bridge), print them (nothing written).
    #[arg(long)]
    pub(super) only_reference: bool,
    /// JetStream `sync_interval` of every nats-server of the run, the zones'
    /// and the references' alike: `always` (the default) is what a zone
    /// node's embedded server ships with; `2m` is JetStream's own default.
    #[arg(long, default_value = "always")]
    pub(super) nats_sync: String,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    pub(super) nats_server: PathBuf,
    #[arg(long, default_value = "target/release/bsfg")]
    pub(super) bsfg: PathBuf,
}
