//! `[fetch]`: bounds and defaults of FetchFacts.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    pub limit_default: u32,
    pub limit_max: u32,
    pub bytes_default: u64,
    pub bytes_max: u64,
    pub wait_ms_max: u32,
    /// Most bytes a consumer's next batch is pulled ahead while its caller
    /// handles the current one (one such batch per consumer; 0 turns
    /// read-ahead off). See `store::consumers`.
    pub read_ahead_bytes_max: u64,
    /// Compress FetchFacts responses (gzip) for clients that accept it.
    /// Off by default: on a small gateway the CPU is scarcer than the link;
    /// turn it on for thin WAN links.
    pub compress: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            limit_default: 100,
            limit_max: 10_000,
            bytes_default: 1024 * 1024,
            bytes_max: 16 * 1024 * 1024,
            wait_ms_max: 30_000,
            read_ahead_bytes_max: 1024 * 1024,
            compress: false,
        }
    }
}
