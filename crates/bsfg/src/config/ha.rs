//! `[ha]`: several nodes for one zone, one of them the writer. Absent: the
//! node is its zone's only node and always writes.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's name among the zone's nodes (distinct per node).
    pub node_id: String,
    /// The URL clients reach this node's boundary port at; a standby names
    /// the active node's in its refusals. Default: the `listen` address
    /// with `https://` (`http://` in plaintext-dev).
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// How long the writer lease lasts unless renewed (renewed every third
    /// of it). A node stops acknowledging appends before its lease can
    /// pass to another node; a dead writer is replaced after about this
    /// long.
    #[serde(with = "humantime_serde", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
}

/// The default `[ha] lease_ttl`: 3 s.
pub const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(3);

fn default_lease_ttl() -> Duration {
    LEASE_TTL_DEFAULT
}
