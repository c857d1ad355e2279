//! The zone's fact log: one JetStream stream per category.
//!
//! Facts are published to `facts.<category>.<kind>` (a subject per kind,
//! so nats-server's per-subject state stays small whatever the backlog) with
//! the key token of (`from_zone`, `message_id`) as `Nats-Msg-Id` (facts of
//! the older stored format also carry their content digest as a header, see
//! `record`). Idempotency for as long as a fact is retained
//! comes from the key index (`key_index`): every batch looks its keys up
//! there first, in every category (the same key must not be stored twice
//! under different kinds either); a hit is read back and compared, so an
//! identical retry gets the original offset and `duplicate = true`, anything
//! else `conflicting_duplicate`. Only after JetStream has acknowledged the
//! new facts are they added to the index. The in-process key guard
//! (`key_guard`) makes the look-up and the publish atomic per key,
//! which relies on the node being the only writer of its zone's fact
//! streams; JetStream's duplicate window still catches a retry whose first
//! acknowledgement was lost, and the key index's gap filler reads such a
//! fact in within a second.
//!
//! # The append path
//!
//! Every append comes through [`FactLog::append_batch`]: AppendFact calls
//! and audit records through group commit (`store::commit`, a stage in
//! front of the log, [`Order::Any`]), the replicator's batches with
//! [`Order::AsGiven`]. A batch, in steps:
//!
//! 1. Wait until the key index holds every stored fact, and hold its epoch
//!    so that a rebuild of the index waits for the batch (`index`).
//! 2. Hold every key of the batch in the key guard. A key that occurs twice
//!    goes into a later round, so the keys of a round are distinct
//!    (`append`).
//! 3. Prepare the round (`prepare`): look its keys up, staged entries
//!    first, then the file. A stored key is read back and compared
//!    (`record`): `duplicate` or `conflicting_duplicate`. Any other fact is
//!    checked by `refuse_if_full` (the disk's free-space floor, the
//!    category's fill threshold, `category`), then its attachments are
//!    checked and frozen and its record is encoded.
//! 4. Send the round (`append`): one deadline (`[nats] request_timeout`)
//!    for the whole round. The facts of a category with at least `[commit]
//!    atomic_batch_facts_min` of them in the round are committed as
//!    JetStream atomic batches, one durable commit each (`atomic`); the
//!    others are handed to the NATS client in order, back to back under the
//!    send lock, before any acknowledgement is awaited. Every publish names where the
//!    category's fence expects the stream to end (`fence`): the last
//!    sequence and the id of the fact this node published before it there,
//!    so that JetStream stores nothing behind a write this node's key index
//!    has not seen. A category whose end the fence does not know (at start,
//!    after a publish that did not land as expected, after taking the
//!    writer lease) is read again before step 3, once nothing of this node
//!    is in flight to it and its key index covers it.
//! 5. Answer each fact from its acknowledgement (`ack`): stored; a retry the
//!    duplicate window knew (read back and compared); the stream full; the
//!    stream not ending where the fence expected (`writer_fenced`); an error;
//!    none in time. An atomic batch is answered from its commit's
//!    acknowledgement (its facts at consecutive offsets); a refused one is
//!    published again pipelined, so each of its facts gets its own answer.
//! 6. Stage the keys of the facts stored for the key index before the key
//!    guard is released (`index`). The index's writer thread records them;
//!    its background work (`index_upkeep`) reads in any fact stored around
//!    the node and prunes what retention truncated.
//!
//! Invariants:
//! * Contiguous offsets: JetStream numbers each stream's facts in the order
//!   they reach it (an atomic batch at consecutive sequences, whole or not
//!   at all), the streams deny deletes and retention only truncates a
//!   prefix, so a category's offsets run from its first to its last
//!   without a hole; the key index records how far it covers them without
//!   a gap, and reads in the rest.
//! * One fact per (`from_zone`, `message_id`) across all categories, for as
//!   long as it is retained: the key guard makes a key's look-up and
//!   publish atomic against this node, the fence against every other
//!   writer (whatever the lease did), the key index answers a retry, and JetStream's
//!   duplicate window one whose first acknowledgement was lost until the
//!   gap filler has read that fact in.
//! * Order kept for `Order::AsGiven`: a fact is never stored after a later
//!   fact of its batch in its stream. Nothing after a fact that was not
//!   sent, or that failed and will be retried, is sent; each pipelined fact
//!   names its predecessor, so JetStream refuses every fact after one that
//!   was lost on the way; an atomic batch is stored whole or not at all.

use super::key_index::{IndexWriter, KeyIndex};
use super::objects::Objects;
use super::publish::Publisher;
use crate::config::ZoneConfig;
use crate::metrics::Metrics;
use async_nats::jetstream;
use bsfg_domain::validate::ValidFact;
use bsfg_proto::bsfg::v1::{Envelope, Provenance};
use key_guard::KeyGuard;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod ack;
mod append;
mod atomic;
mod category;
mod errors;
mod fence;
mod index;
mod index_upkeep;
mod key_guard;
mod order;
mod prepare;
mod record;

pub use atomic::ATOMIC_BATCH_FACTS_MAX;
use category::FillAccount;
pub use category::{Category, fact_subject, stream_config, stream_name};
use index_upkeep::maintain_index;
pub use order::Order;
pub use record::decode_record;

/// The header that carries a fact's key token: JetStream's duplicate
/// window keys on it, and the key index reads it back from stored facts.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// How often facts stored around the node (an acknowledgement lost on the
/// way back) are read into the key index, at most. It is independent of
/// the (longer) checkpoint interval: until a fact is read in, only
/// JetStream's duplicate window answers its retry.
const GAP_FILL_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// One fact to append.
pub struct AppendItem {
    pub envelope: Envelope,
    pub valid: ValidFact,
    /// Set by the replicator for facts that crossed zones.
    pub provenance: Option<Provenance>,
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub offset: u64,
    pub duplicate: bool,
    pub category: String,
}

/// The zone's fact log: its categories' streams, the key index and the
/// append path (see the module documentation).
pub struct FactLog {
    config: Arc<ZoneConfig>,
    jetstream: jetstream::Context,
    categories: HashMap<String, Category>,
    objects: Arc<Objects>,
    /// Free space of the store's and the key index's filesystems.
    disk: Arc<super::disk::DiskWatch>,
    keys: KeyGuard,
    index: Arc<KeyIndex>,
    /// Stages acknowledged facts for the index's writer thread.
    index_writer: IndexWriter,
    /// True once the key index has read every fact stored before start-up.
    index_ready: tokio::sync::watch::Sender<bool>,
    /// Append batches hold it shared; a rebuild of the key index holds it
    /// exclusively, so no batch looks a key up in an index being emptied.
    index_epoch: tokio::sync::RwLock<()>,
    /// Held while a round's facts (or an atomic batch) are handed to the
    /// NATS client, so the facts of one round reach each stream back to
    /// back: what `Order::AsGiven` relies on (this node is its streams' only
    /// writer, and nats-server takes one connection's messages in order, so
    /// no batch is committed between two facts of a round).
    sending: tokio::sync::Mutex<()>,
    /// Publishes facts; their acknowledgements come back per round.
    publisher: Publisher,
    /// Ids for atomic batches (`atomic`).
    batch_ids: atomic::BatchIds,
    /// Whether this node is its zone's writer now; checked before every
    /// round's publishes.
    gate: Arc<super::writer_gate::WriterGate>,
    metrics: Arc<Metrics>,
    /// The last status fact stored of each origin zone (see `statuses`).
    pub statuses: super::statuses::LastStatuses,
    /// The key index's background task (`index_upkeep`). It holds the log
    /// while it reads the streams in (seconds, when the store is gone), so
    /// a stopping node aborts it (`stop_upkeep`) rather than wait for it
    /// to let go of the key index file.
    upkeep: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl FactLog {
    pub async fn open(
        jetstream: jetstream::Context,
        config: Arc<ZoneConfig>,
        objects: Arc<Objects>,
        disk: Arc<super::disk::DiskWatch>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut categories = HashMap::new();
        for (position, c) in config.categories.iter().enumerate() {
            let category = open_category(&jetstream, &config, position, c).await?;
            categories.insert(c.name.clone(), category);
        }
        let names: Vec<String> = config.categories.iter().map(|c| c.name.clone()).collect();
        let index = Arc::new(
            open_key_index(
                config.key_index_path(),
                names,
                config.commit.key_index_buffered_facts_max,
                config.commit.key_filter_bytes,
                config.seed_for(super::key_index::HASH_KEY_PURPOSE),
            )
            .await?,
        );
        let publisher = Publisher::start(jetstream.client()).await?;
        let index_writer = IndexWriter::start(
            index.clone(),
            config.commit.key_index_sync_interval,
            config.commit.key_index_staged_facts_max,
        );
        let sync_interval = config.commit.key_index_sync_interval;
        let batch_ids = atomic::BatchIds::new(config.seed_for(atomic::BATCH_IDS_PURPOSE));
        let gate = Arc::new(match config.ha {
            Some(_) => super::writer_gate::WriterGate::closed(),
            None => super::writer_gate::WriterGate::always_open(),
        });
        let log = Arc::new(Self {
            config,
            jetstream,
            categories,
            objects,
            disk,
            keys: KeyGuard::default(),
            index,
            index_writer,
            index_ready: tokio::sync::watch::Sender::new(false),
            index_epoch: tokio::sync::RwLock::new(()),
            sending: tokio::sync::Mutex::new(()),
            publisher,
            batch_ids,
            gate,
            metrics,
            statuses: Default::default(),
            upkeep: std::sync::Mutex::new(None),
        });
        let upkeep = tokio::spawn(maintain_index(
            Arc::downgrade(&log),
            sync_interval.min(GAP_FILL_INTERVAL_MAX),
        ));
        *log.upkeep.lock().expect("upkeep poisoned") = Some(upkeep.abort_handle());
        Ok(log)
    }

    /// Stops the key index's background task: a stopping node calls it, so
    /// that the task lets go of the log (and the key index file) at once.
    pub fn stop_upkeep(&self) {
        if let Some(upkeep) = self.upkeep.lock().expect("upkeep poisoned").take() {
            upkeep.abort();
        }
    }

    /// Whether this node may write now (see `writer_gate`).
    pub fn gate(&self) -> &Arc<super::writer_gate::WriterGate> {
        &self.gate
    }

    /// Whether the key index covers every fact stored in every category
    /// now: what a node taking the writer lease waits for.
    pub async fn index_covers_streams(&self) -> anyhow::Result<bool> {
        for c in self.categories.values() {
            let mut stream = c.stream.clone();
            let last = stream.info().await?.state.last_sequence;
            if self.index.through(&c.config.name) < last {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.get(name)
    }

    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.values()
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True once the key index holds every stored fact (appends accepted).
    pub fn index_ready(&self) -> bool {
        *self.index_ready.borrow()
    }
}

/// A category's stream, created or updated to its configuration (zones
/// created before a setting, e.g. `allow_atomic`, get it at their next
/// start), and its fill as stored.
async fn open_category(
    jetstream: &jetstream::Context,
    config: &ZoneConfig,
    position: usize,
    c: &crate::config::CategoryConfig,
) -> anyhow::Result<Category> {
    let stream_config = stream_config(
        &config.zone,
        config.limits.fact_bytes_max,
        config.nats.replicas,
        c,
    );
    match jetstream.get_stream(&stream_config.name).await {
        Ok(_) => {
            jetstream.update_stream(stream_config.clone()).await?;
        }
        Err(_) => {
            jetstream.create_stream(stream_config.clone()).await?;
        }
    }
    let mut stream = jetstream.get_stream(&stream_config.name).await?;
    let info = stream.info().await?;
    let (bytes, atomic) = (info.state.bytes, info.config.allow_atomic_publish);
    let category = Category {
        config: c.clone(),
        stream,
        position,
        fill: FillAccount::new(bytes),
        atomic: std::sync::atomic::AtomicBool::new(config.atomic_batch_facts_min() > 0),
        fence: Default::default(),
    };
    if !atomic {
        category.stop_atomic("nats-server did not keep allow_atomic (it needs 2.12 or later)");
    }
    Ok(category)
}

/// Opens the key index, waiting up to 10 s while a node that is shutting
/// down (in this process or another) still holds the file's lock.
async fn open_key_index(
    path: std::path::PathBuf,
    categories: Vec<String>,
    buffered_entries_max: usize,
    filter_bytes: usize,
    hash_key_seed: u64,
) -> anyhow::Result<KeyIndex> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (p, c) = (path.clone(), categories.clone());
        match tokio::task::spawn_blocking(move || {
            KeyIndex::open(&p, &c, buffered_entries_max, filter_bytes, hash_key_seed)
        })
        .await?
        {
            Err(e)
                if e.downcast_ref::<super::key_index::AlreadyOpen>().is_some()
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}
