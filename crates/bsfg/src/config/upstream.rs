//! `[[upstreams]]`: the peers this node pulls facts from.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One peer this node replicates from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The peer principal (must be a `kind = "peer"` principal of this zone:
    /// its origins and import policy apply to what is pulled).
    pub peer: String,
    /// The peer's boundary URL (https:// with mTLS, this node's certificate).
    pub url: String,
    /// The consumer on the peer exported to this zone.
    pub consumer: String,
    /// Most facts one fetch asks for (old name `batch_limit`).
    #[serde(default = "default_batch_facts_max", alias = "batch_limit")]
    pub batch_facts_max: u32,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes_max: u64,
    /// Long-poll wait of each fetch (old name `wait_ms`, milliseconds).
    #[serde(default = "default_wait", alias = "wait_ms", with = "super::duration")]
    pub wait: Duration,
    /// How long the next fetch waits after one that drained the peer with
    /// a small batch (under half of `batch_facts_max`), so that facts
    /// arriving at a steady low rate cross in batches of several rather
    /// than one commit each. At most `UPSTREAM_LINGER_MAX` (50 ms); 0 turns
    /// it off. It adds at most this much to a hop's lag.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Batches fetched ahead of the one being screened (memory bound:
    /// (batches_ahead_max + 3) x batch_bytes_max, see `replicator`; old
    /// name `pipeline_depth`).
    #[serde(default = "default_batches_ahead_max", alias = "pipeline_depth")]
    pub batches_ahead_max: usize,
    /// Retry backoff bounds (with jitter).
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Directory where artifacts are spooled while they are pulled, so an
    /// interrupted transfer resumes where it stopped.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
}

fn default_batch_facts_max() -> u32 {
    1000
}
fn default_batch_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_linger() -> Duration {
    Duration::from_millis(2)
}
fn default_batches_ahead_max() -> usize {
    2
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("data/spool")
}
