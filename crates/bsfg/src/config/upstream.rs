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
    #[serde(default = "default_batch_limit")]
    pub batch_limit: u32,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes_max: u64,
    /// Long-poll wait of each fetch.
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u32,
    /// Batches fetched ahead of the one being screened (memory bound:
    /// (pipeline_depth + 3) x batch_bytes_max, see `replicator`).
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: usize,
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

fn default_batch_limit() -> u32 {
    1000
}
fn default_batch_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_wait_ms() -> u32 {
    1000
}
fn default_pipeline_depth() -> usize {
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
