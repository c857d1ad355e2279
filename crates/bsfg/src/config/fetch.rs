//! `[fetch]`: bounds and defaults of FetchFacts.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Facts a FetchFacts answers when its `limit` is 0 (old name
    /// `limit_default`).
    #[serde(alias = "limit_default")]
    pub facts_default: u32,
    /// Most facts one FetchFacts answers (old name `limit_max`).
    #[serde(alias = "limit_max")]
    pub facts_max: u32,
    /// Bytes a FetchFacts answers when its `max_bytes` is 0.
    pub bytes_default: u64,
    /// Most bytes one FetchFacts answers.
    pub bytes_max: u64,
    /// Longest long-poll a FetchFacts may ask for (old name `wait_ms_max`,
    /// milliseconds).
    #[serde(alias = "wait_ms_max", with = "super::duration")]
    pub wait_max: Duration,
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
            facts_default: 100,
            facts_max: 10_000,
            bytes_default: 1024 * 1024,
            bytes_max: 16 * 1024 * 1024,
            wait_max: Duration::from_secs(30),
            read_ahead_bytes_max: 1024 * 1024,
            compress: false,
        }
    }
}
