//! `[commit]`: group commit of appends and the idempotency key index.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Group-commit batches in flight by default when appends are pipelined.
const BATCHES_IN_FLIGHT_MAX_PIPELINED: usize = 2;

/// Group commit: concurrent AppendFact calls are appended in batches (one
/// key-index look-up and one pipelined publish per batch), and the
/// idempotency key index they are checked against (`store::key_index`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    /// Most facts in one batch.
    pub batch_facts_max: usize,
    /// Facts of one category in one append round (a group-commit batch, a
    /// replicated batch) from which they are committed as JetStream atomic
    /// batches (one durable commit and one acknowledgement per batch of up
    /// to 1,000) instead of pipelined publishes (one of each per fact); 0:
    /// never. Unset: 32 when `[nats] sync_interval` is `always`, where a
    /// commit costs an fsync per fact, else 0 (with periodic syncs an atomic
    /// batch is slower than pipelined publishes at every size). An atomic
    /// batch costs nats-server a fixed ~1–3 ms of CPU, so small batches stay
    /// pipelined (`store::facts::atomic`, `bsfg-bench batches`,
    /// BENCHMARKS.md "Atomic batches"). With `[nats] url` (an external
    /// server) the default assumes it syncs `always`, as a zone's must.
    pub atomic_batch_facts_min: Option<usize>,
    /// Most batches being appended at once. Unset: 1 when atomic batches
    /// are on (`atomic_batch_facts_min` above 0, as at `sync_interval:
    /// always`), else 2. Why 1 there: a category's atomic batches are sent
    /// one at a time anyway (`store::facts::fence`), and a second batch
    /// formed while the first commits is formed early, from the few appends
    /// queued by then, so commits get smaller; with one, the next batch takes
    /// everything that queued during the commit (BENCHMARKS.md, "AppendFacts").
    pub batches_in_flight_max: Option<usize>,
    /// Most appends waiting for a batch; beyond it callers wait. An
    /// AppendFacts request waits as one (its facts' bytes are bounded by the
    /// boundary's request memory budget).
    pub queue_facts_max: usize,
    /// The key index file; by default `key-index.<zone>.kix` beside the
    /// nats store directory (`[nats] store_dir`).
    pub key_index_path: Option<PathBuf>,
    /// How often the key index is checkpointed at the latest: its buffered
    /// entries merged into the pages, the pages fsynced, the header written,
    /// the table grown. A full buffer checkpoints sooner. Losing the
    /// buffer costs only a re-read of those facts at start-up (at most
    /// `key_index_buffered_facts_max`; 100,000 take about 0.2 s). Each merge
    /// writes every page its entries touch, once, so merging rarely writes
    /// far less to disk (`bsfg-bench key-index`, BENCHMARKS.md "Merging
    /// from a memory buffer").
    #[serde(with = "humantime_serde")]
    pub key_index_sync_interval: Duration,
    /// Recorded key index entries held in memory (about 40 bytes each,
    /// twice that while a merge sorts them) before they are merged into
    /// the index file's pages.
    pub key_index_buffered_facts_max: usize,
    /// Most acknowledged facts waiting in memory for the key index's
    /// writer; beyond it appends wait (a failing disk), then are refused.
    pub key_index_staged_facts_max: usize,
    /// Memory of the key filter that answers most look-ups of new keys
    /// without reading a page (a power of two, 1 MiB to 1 GiB). It never
    /// loses a key; a fuller one only reads pages more often: with 1 byte
    /// per retained fact about 2.4 % of new keys read a page, with 2 bytes
    /// 0.24 %. The default, 4 MiB, suits up to about 4M retained facts.
    pub key_filter_bytes: usize,
}

/// Where atomic batches start to pay at `sync_interval: always` (see
/// `atomic_batch_facts_min`), in facts.
pub const ATOMIC_BATCH_FACTS_MIN_ALWAYS: usize = 32;

impl CommitConfig {
    /// `batches_in_flight_max`, or its default for the server's
    /// `sync_interval`.
    pub fn batches_in_flight_max(&self, sync_interval: &str) -> usize {
        self.batches_in_flight_max
            .unwrap_or(match self.atomic_batch_facts_min(sync_interval) {
                0 => BATCHES_IN_FLIGHT_MAX_PIPELINED,
                _ => 1,
            })
    }

    /// `atomic_batch_facts_min`, or its default for the server's
    /// `sync_interval`.
    pub fn atomic_batch_facts_min(&self, sync_interval: &str) -> usize {
        self.atomic_batch_facts_min.unwrap_or(match sync_interval {
            "always" => ATOMIC_BATCH_FACTS_MIN_ALWAYS,
            _ => 0,
        })
    }
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            batch_facts_max: 256,
            atomic_batch_facts_min: None,
            batches_in_flight_max: None,
            queue_facts_max: 4096,
            key_index_path: None,
            key_index_sync_interval: Duration::from_secs(300),
            key_index_buffered_facts_max: crate::store::key_index::BUFFERED_ENTRIES_MAX_DEFAULT,
            key_index_staged_facts_max: 65_536,
            key_filter_bytes: crate::store::key_index::FILTER_BYTES_DEFAULT,
        }
    }
}
