//! `[boundary]`: bounds of the boundary port.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Bounds of the boundary port (see `node::boundary`). Every field caps
/// what callers can make the node hold or wait for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoundaryConfig {
    /// Open connections at once; more are closed at accept and counted
    /// (`bsfg_connections_refused`). Each can buffer up to 8 MiB of
    /// request data it has sent but the node has not read yet.
    pub connections_max: usize,
    /// Request memory the node admits at once, in bytes. A request is
    /// admitted with about four times its largest possible message (a
    /// declared, uncompressed body counts its length) and waits for room
    /// for up to `body_timeout`, then is refused `node_busy`.
    pub request_memory_bytes_max: usize,
    /// A unary request's body must arrive within it; a streamed upload must
    /// send something at least this often.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
}

impl Default for BoundaryConfig {
    fn default() -> Self {
        Self {
            connections_max: 256,
            request_memory_bytes_max: 64 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            connection_idle_timeout: Duration::from_secs(300),
        }
    }
}
