//! The zone's fact log: one JetStream stream per category.
//!
//! Facts are published to `facts.<category>.<kind>` (a subject per kind,
//! so nats-server's per-subject state stays small whatever the backlog) with
//! the key token of (`from_zone`, `message_id`) as `Nats-Msg-Id` and the
//! content digest as a header. Idempotency for as long as a fact is retained
//! comes from the key index (`key_index`): every batch looks its keys up
//! there first, in every category (the same key must not be stored twice
//! under different kinds either); a hit is read back and compared, so an
//! identical retry gets the original offset and `duplicate = true`, anything
//! else `conflicting_duplicate`. Only after JetStream has acknowledged the
//! new facts are they added to the index. The in-process key guard
//! (`commit::KeyGuard`) makes the look-up and the publish atomic per key,
//! which relies on the node being the only writer of its zone's fact
//! streams; JetStream's duplicate window still catches a retry whose first
//! acknowledgement was lost, and the key index's gap filler reads such a
//! fact in within a second.

use super::commit::{CommitQueue, KeyGuard};
use super::key_index::{IndexWriter, KeyIndex, Token, WriterStats, token_bytes};
use super::publish::{Ack, ERR_WRONG_LAST_MSG_ID, Publisher};
use super::{now_unix_ms, objects::Objects, unavailable};
use crate::config::{CategoryConfig, ZoneConfig};
use crate::metrics::{Metrics, labels};
use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::identity::{content_digest, key_token};
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance, StoredFact};
use buffa::Message as _;
use futures::TryStreamExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

mod category;
mod errors;
mod record;

use category::FillAccount;
pub use category::{Category, fact_subject, stream_config, stream_name};
use errors::{index_unavailable, is_transient};
pub use record::decode_record;
use record::{compare_existing, header_value};

const MSG_ID_HEADER: &str = "Nats-Msg-Id";
const EXPECTED_LAST_MSG_ID_HEADER: &str = "Nats-Expected-Last-Msg-Id";

/// Facts read into the key index per write transaction (catch-up, gaps).
const READ_IN_CHUNK_FACTS: usize = 4096;

/// How long an append waits for the key index to finish its start-up
/// catch-up before it is refused as unavailable.
const INDEX_READY_WAIT: Duration = Duration::from_secs(5);
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

/// Whether the facts of a batch must be stored in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Replicated facts, whose per-origin order is kept. Each fact published
    /// names the one published before it in the same stream and batch
    /// (`Nats-Expected-Last-Msg-Id`). Why: pipelined publishes can lose a
    /// middle part when the NATS connection breaks (what was written to the
    /// dead socket is gone, what was queued goes out after the reconnect),
    /// and a later fact stored before the retry of an earlier one would break
    /// the order for good. Named predecessors make JetStream refuse every
    /// fact after the gap instead; the retry then stores them in order.
    AsGiven,
    /// Independent appends (the group commit of concurrent AppendFact calls).
    Any,
}

/// For each fact published in a batch, the key token of the fact published
/// before it in the same category, if any (what `Order::AsGiven` names as
/// the expected last message of the stream).
#[derive(Default)]
struct Predecessors {
    last: Vec<(String, String)>,
}

impl Predecessors {
    /// Records `token` as published to `category`; returns the token it
    /// follows there.
    fn follow(&mut self, category: &str, token: &str) -> Option<String> {
        match self.last.iter_mut().find(|(c, _)| c == category) {
            Some((_, last)) => Some(std::mem::replace(last, token.to_string())),
            None => {
                self.last.push((category.to_string(), token.to_string()));
                None
            }
        }
    }
}

/// A fact ready to publish.
struct Ready {
    subject: String,
    category: String,
    token: String,
    raw_token: Token,
    envelope: Envelope,
    payload: bytes::Bytes,
}

impl Ready {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // A retry whose first acknowledgement was lost is answered by the
        // duplicate window before the key index has read the fact in.
        headers.insert(MSG_ID_HEADER, self.token.as_str());
        headers
    }
}

// One per fact of an append round, in a Vec that lives for the round:
// boxing `Ready` would cost an allocation per fact for no memory saved.
#[allow(clippy::large_enum_variant)]
enum InFlight {
    Done(Result<Appended, Rejection>),
    /// Handed to the NATS client; its acknowledgement is in the round's
    /// slot of the same position.
    Sent(Ready),
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub offset: u64,
    pub duplicate: bool,
    pub category: String,
}

/// An answer plus the key-index entry it stored, if any.
/// The entry is `(category position, token, offset)`.
type Finished = (Result<Appended, Rejection>, Option<(usize, Token, u64)>);

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
    /// Held while a round's facts are handed to the NATS client, so the
    /// facts of one round reach each stream back to back: what
    /// `Order::AsGiven` relies on (this node is its streams' only writer).
    sending: tokio::sync::Mutex<()>,
    /// Publishes facts; their acknowledgements come back per round.
    publisher: Publisher,
    commit: CommitQueue,
    metrics: Arc<Metrics>,
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
            let stream_config = stream_config(&config.zone, config.limits.fact_bytes_max, c);
            match jetstream.get_stream(&stream_config.name).await {
                Ok(_) => {
                    jetstream.update_stream(stream_config.clone()).await?;
                }
                Err(_) => {
                    jetstream.create_stream(stream_config.clone()).await?;
                }
            }
            let mut stream = jetstream.get_stream(&stream_config.name).await?;
            let bytes = stream.info().await?.state.bytes;
            categories.insert(
                c.name.clone(),
                Category {
                    config: c.clone(),
                    stream,
                    position,
                    fill: FillAccount::new(bytes),
                },
            );
        }
        let names: Vec<String> = config.categories.iter().map(|c| c.name.clone()).collect();
        let index = Arc::new(
            open_key_index(
                config.key_index_path(),
                names,
                config.commit.key_index_buffered_facts_max,
                config.commit.key_filter_bytes,
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
        let log = Arc::new_cyclic(|log| Self {
            commit: CommitQueue::start(log.clone(), config.commit.clone(), metrics.clone()),
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
            metrics,
        });
        tokio::spawn(maintain_index(
            Arc::downgrade(&log),
            sync_interval.min(GAP_FILL_INTERVAL_MAX),
        ));
        Ok(log)
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

    /// Appends one validated fact through group commit (see `commit`).
    /// `provenance` is set by the replicator for facts that crossed zones;
    /// local appends start a fresh one.
    pub async fn append(
        &self,
        envelope: Envelope,
        valid: ValidFact,
        provenance: Option<Provenance>,
    ) -> Result<Appended, Rejection> {
        self.commit
            .append(AppendItem {
                envelope,
                valid,
                provenance,
            })
            .await
    }

    /// Appends facts in order, one result per item. The publishes are
    /// pipelined: all are sent on the one NATS connection, in order, before
    /// any acknowledgement is awaited, so JetStream assigns offsets in item
    /// order (per-origin order is kept) while one batch costs about one round
    /// trip instead of one per fact. With `Order::AsGiven` a fact is never
    /// stored after a later one of the same batch (see `Order`).
    pub async fn append_batch(
        &self,
        items: Vec<AppendItem>,
        order: Order,
    ) -> Vec<Result<Appended, Rejection>> {
        let _epoch = match self.enter_index_epoch().await {
            Ok(epoch) => epoch,
            Err(r) => return items.iter().map(|_| Err(r.clone())).collect(),
        };
        let tokens: Vec<String> = items
            .iter()
            .map(|i| key_token(&i.envelope.from_zone, &i.envelope.message_id))
            .collect();
        let _held = self.keys.hold(&tokens).await;
        // A key that occurs twice in one batch must see its first occurrence
        // indexed before it is looked up, so it goes into a later round.
        let mut results: Vec<Option<Result<Appended, Rejection>>> =
            (0..items.len()).map(|_| None).collect();
        let mut waiting: Vec<(usize, AppendItem, String)> = items
            .into_iter()
            .zip(tokens)
            .enumerate()
            .map(|(i, (item, token))| (i, item, token))
            .collect();
        while !waiting.is_empty() {
            let mut round_keys = std::collections::HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .partition(|(_, _, token)| round_keys.insert(token.clone()));
            waiting = later;
            let (indices, round): (Vec<usize>, Vec<(AppendItem, String)>) = round
                .into_iter()
                .map(|(i, item, token)| (i, (item, token)))
                .unzip();
            for (i, result) in indices
                .into_iter()
                .zip(self.append_round(round, order).await)
            {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect()
    }

    /// Waits until the key index is ready and holds it there (a rebuild
    /// waits for the batches inside).
    async fn enter_index_epoch(&self) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, Rejection> {
        loop {
            self.wait_for_index().await?;
            let epoch = self.index_epoch.read().await;
            if *self.index_ready.borrow() {
                return Ok(epoch);
            }
        }
    }

    /// A page of the key index failed its check while running: appends
    /// wait (they are answered `key_index_catching_up` after a while) while
    /// the index starts over, empty; the caller then reads every stream in
    /// again, as at start-up.
    async fn rebuild_index(&self) -> anyhow::Result<()> {
        tracing::error!(
            "a key index page is damaged (disk error, or the file was written by something else); rebuilding the index from the streams, appends wait until it is done"
        );
        self.metrics.key_index_ready.set(0);
        self.metrics.key_index_rebuilds_total.inc();
        let _no_batches = self.index_epoch.write().await;
        self.index_ready.send_replace(false);
        self.blocking(|index| index.rebuild()).await
    }

    async fn wait_for_index(&self) -> Result<(), Rejection> {
        let mut ready = self.index_ready.subscribe();
        match tokio::time::timeout(INDEX_READY_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Rejection::new(
                Code::Unavailable,
                "key_index_catching_up",
                "the node is still reading the stored facts into its idempotency key index (after a restart or a lost index file); appends resume when bsfg_key_index_ready is 1, retry with backoff",
            )),
        }
    }

    /// One round of a batch: distinct keys, all held by the key guard.
    async fn append_round(
        &self,
        items: Vec<(AppendItem, String)>,
        order: Order,
    ) -> Vec<Result<Appended, Rejection>> {
        // Each fact's category, resolved once.
        let homes: Vec<&CategoryConfig> = items
            .iter()
            .map(|(item, _)| self.config.category_for_kind(&item.valid.subject_kind))
            .collect();
        let tokens: Vec<Token> = items
            .iter()
            .map(|(_, t)| token_bytes(t).expect("key tokens are 32 hex digits"))
            .collect();
        let found = match self.look_up(&tokens) {
            Ok(found) => found,
            Err(r) => return items.iter().map(|_| Err(r.clone())).collect(),
        };
        // A new key without attachments (nearly every append) is prepared
        // without waiting for anything; only the others (a key already
        // stored, attachments to check) wait, concurrently. Preparing the
        // common case inline, not as one future per fact, spares boxing and
        // moving those futures (6 % of a receiving node's CPU in a profile).
        let mut prepared: Vec<Option<Result<Ready, Result<Appended, Rejection>>>> =
            Vec::with_capacity(items.len());
        let mut waiting = Vec::new();
        for ((((item, token), home), raw), found) in
            items.into_iter().zip(homes).zip(tokens).zip(found)
        {
            if found.is_none() && item.valid.fact.attachments.is_empty() {
                prepared.push(Some(
                    self.refuse_if_full(home)
                        .map_err(Err)
                        .and_then(|()| self.encode(item, token, raw, home)),
                ));
            } else {
                waiting.push((prepared.len(), self.prepare(item, token, raw, home, found)));
                prepared.push(None);
            }
        }
        fill_slots(&mut prepared, waiting).await;
        // One deadline for the whole round, sends and acknowledgements
        // alike. Why: each acknowledgement's own timeout starts when it is
        // awaited, so awaiting a stalled server's acknowledgements one after
        // another took one timeout per fact (a round of 40 facts, 200 s).
        let deadline = tokio::time::sleep(self.config.nats.request_timeout);
        tokio::pin!(deadline);
        let mut in_flight = Vec::with_capacity(prepared.len());
        let mut round = by_deadline(&mut deadline, self.publisher.round(prepared.len())).await;
        let sending = match round {
            Some(_) => by_deadline(&mut deadline, self.sending.lock()).await,
            None => None,
        };
        let mut send_failed = sending.is_none();
        let mut predecessors = Predecessors::default();
        for (slot, p) in prepared.into_iter().enumerate() {
            in_flight.push(match (p.expect("every fact was prepared"), round.as_mut()) {
                (Err(done), _) => {
                    // In a batch whose order is kept, a fact that failed
                    // before it could be sent (its attachments could not be
                    // checked, its key not read back) and will be retried
                    // holds back the facts after it, like one that could
                    // not be sent: published now, they would be stored
                    // ahead of it.
                    if order == Order::AsGiven && matches!(&done, Err(r) if is_transient(r)) {
                        send_failed = true;
                    }
                    InFlight::Done(done)
                }
                // Nothing after a fact that could not be sent is sent: a
                // later fact stored before its retry would break the order.
                (Ok(_), Some(_)) if send_failed => InFlight::Done(Err(unavailable("publishing the fact", "it or an earlier fact of the same batch could not be sent within the request timeout"))),
                (Ok(_), None) => InFlight::Done(Err(unavailable("publishing the fact", "too many acknowledgements awaited; none could be sent within the request timeout"))),
                (Ok(mut ready), Some(round)) => {
                    let mut headers = ready.headers();
                    if order == Order::AsGiven
                        && let Some(previous) = predecessors.follow(&ready.category, &ready.token)
                    {
                        headers.insert(EXPECTED_LAST_MSG_ID_HEADER, previous.as_str());
                    }
                    let subject = std::mem::take(&mut ready.subject);
                    match by_deadline(&mut deadline, round.publish(slot, subject, headers, ready.payload.clone())).await {
                        Some(Ok(())) => InFlight::Sent(ready),
                        failed => {
                            send_failed = true;
                            let why = match failed {
                                Some(Err(e)) => e.to_string(),
                                _ => "not sent within the request timeout".to_string(),
                            };
                            InFlight::Done(Err(unavailable("publishing the fact", why)))
                        }
                    }
                }
            });
        }
        drop(sending);
        // Every publish is on its way: wait for their acknowledgements (one
        // wake-up for the round), then answer in order. Only the unusual
        // ones (a duplicate, an error, none in time) are finished
        // concurrently afterwards.
        let mut acks = match round {
            Some(round) => {
                by_deadline(&mut deadline, round.acknowledged()).await;
                round.into_acks()
            }
            None => Vec::new(),
        };
        let mut finished: Vec<Option<Finished>> = Vec::with_capacity(in_flight.len());
        let mut unusual = Vec::new();
        for (slot, f) in in_flight.into_iter().enumerate() {
            match f {
                InFlight::Done(result) => finished.push(Some((result, None))),
                InFlight::Sent(ready) => match acks.get_mut(slot).and_then(Option::take) {
                    Some(Ack::Stored {
                        sequence,
                        duplicate: false,
                    }) => finished.push(Some(self.stored(sequence, ready))),
                    other => {
                        unusual.push((finished.len(), self.finish(other, ready)));
                        finished.push(None);
                    }
                },
            }
        }
        fill_slots(&mut finished, unusual).await;
        let finished = finished
            .into_iter()
            .map(|f| f.expect("every fact was finished"))
            .collect();
        self.index_stored(finished).await
    }

    /// Where each key is stored, if it is: staged entries first, then the
    /// file (an entry leaves the stage only once it is in the file).
    fn look_up(&self, tokens: &[Token]) -> Result<Vec<Option<(usize, u64)>>, Rejection> {
        let mut found = self.index_writer.look_up_staged(tokens);
        let misses: Vec<Token> = tokens
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(t, _)| *t)
            .collect();
        if misses.is_empty() {
            return Ok(found);
        }
        // On this thread: a look-up reads one page from the OS page cache
        // (microseconds), and a hop to the blocking pool cost more.
        let from_file = self
            .index
            .look_up(&misses)
            .map_err(|e| index_unavailable("looking up idempotency keys", e))?;
        let mut from_file = from_file.into_iter();
        for slot in found.iter_mut().filter(|f| f.is_none()) {
            *slot = from_file.next().expect("one answer per miss");
        }
        Ok(found)
    }

    /// Stages the facts this round stored for the key index (before the key
    /// guard is released). If there is no room (the index writer is
    /// failing), their appends are answered as unavailable: they are stored,
    /// and a retry is a duplicate.
    async fn index_stored(&self, finished: Vec<Finished>) -> Vec<Result<Appended, Rejection>> {
        let entries: Vec<(usize, Token, u64)> = finished
            .iter()
            .filter(|(result, _)| result.is_ok())
            .filter_map(|(_, entry)| *entry)
            .collect();
        let Err(e) = self.index_writer.stage(&entries, INDEX_READY_WAIT).await else {
            return finished.into_iter().map(|(result, _)| result).collect();
        };
        let refused = index_unavailable(
            "recording stored facts (they are stored; retrying the same appends answers them as duplicates)",
            e,
        );
        finished
            .into_iter()
            .map(|(result, entry)| match (result, entry) {
                (Ok(_), Some(_)) => Err(refused.clone()),
                (result, _) => result,
            })
            .collect()
    }

    /// Everything before the publish that may wait: the answer for a key
    /// already stored, the attachments' presence; then `encode`. `Err`
    /// carries a final answer (a duplicate, or a rejection).
    async fn prepare(
        &self,
        item: AppendItem,
        token: String,
        raw_token: Token,
        category: &CategoryConfig,
        found: Option<(usize, u64)>,
    ) -> Result<Ready, Result<Appended, Rejection>> {
        if let Some((position, offset)) = found {
            let home = &self.index.categories()[position];
            if let Some(existing) = self
                .stored_under(home, offset, &raw_token)
                .await
                .map_err(Err)?
            {
                return Err(compare_existing(
                    existing,
                    &content_digest(&item.valid.fact),
                    &item.envelope,
                    home,
                ));
            }
        }
        // Capacity before the attachments: a refused append must not freeze
        // the objects it names.
        self.refuse_if_full(category).map_err(Err)?;
        self.objects
            .check_and_freeze(&item.valid.fact.attachments)
            .await
            .map_err(Err)?;
        self.encode(item, token, raw_token, category)
    }

    /// `disk_full` while the store's or the key index's filesystem is
    /// below its free-space floor (`store::disk`); `category_full` at the
    /// fill threshold (nothing is dropped to make room). Every append path
    /// (AppendFact, the replicator, audit records) comes through here; a
    /// retry of a stored fact is answered before it, writing nothing.
    fn refuse_if_full(&self, category: &CategoryConfig) -> Result<(), Rejection> {
        self.disk.check()?;
        let log = &self.categories[&category.name];
        if !log.is_full() {
            return Ok(());
        }
        Err(Rejection::new(
            Code::ResourceExhausted,
            "category_full",
            format!(
                "category {} is {:.1}% full (threshold {}%); appends are refused until confirmed facts are truncated. Consumers must confirm, or raise capacity_bytes",
                category.name,
                log.fill_percent(),
                category.fill_threshold_percent
            ),
        ))
    }

    /// Everything before the publish that does not wait: routing to a
    /// category, encoding the record (after `refuse_if_full`). `Err`
    /// carries a rejection.
    fn encode(
        &self,
        item: AppendItem,
        token: String,
        raw_token: Token,
        category: &CategoryConfig,
    ) -> Result<Ready, Result<Appended, Rejection>> {
        let AppendItem {
            envelope,
            valid,
            provenance,
        } = item;
        let subject = fact_subject(&category.name, &valid.subject_kind);
        // The record takes the envelope and fact; the envelope comes back
        // after encoding (a duplicate's answer names it), nothing is copied.
        let mut record = StoredFact {
            offset: 0,
            category: category.name.clone(),
            provenance: provenance
                .unwrap_or_else(|| Provenance {
                    origin_zone: envelope.from_zone.clone(),
                    ..Default::default()
                })
                .into(),
            envelope: envelope.into(),
            fact: valid.fact.into(),
            appended_at_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        let payload = record.encode_to_vec();
        let envelope = record
            .envelope
            .take()
            .expect("the record was given the envelope");
        if payload.len() > self.config.limits.fact_bytes_max {
            return Err(Err(Rejection::invalid(
                "fact_too_large",
                format!(
                    "the fact record is {} bytes; the limit is {}",
                    payload.len(),
                    self.config.limits.fact_bytes_max
                ),
            )));
        }
        Ok(Ready {
            subject,
            category: category.name.clone(),
            token,
            raw_token,
            envelope,
            payload: payload.into(),
        })
    }

    /// The fact stored at `offset` of `category` if it carries `token`. An
    /// index entry whose fact is gone (retention) or is another fact is
    /// dropped and the key counts as not stored.
    async fn stored_under(
        &self,
        category: &str,
        offset: u64,
        token: &Token,
    ) -> Result<Option<StreamMessage>, Rejection> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let log = &self.categories[category];
        match log.stream.direct_get(offset).await {
            Ok(message)
                if header_value(&message, MSG_ID_HEADER)
                    .as_deref()
                    .and_then(token_bytes)
                    .as_ref()
                    == Some(token) =>
            {
                return Ok(Some(message));
            }
            Ok(_) => tracing::error!(
                category,
                offset,
                "key index entry points at another fact; dropping the entry"
            ),
            // Gone: retention truncated the fact before the index was pruned.
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => {
                return Err(unavailable(
                    "reading back the fact stored under an idempotency key",
                    e,
                ));
            }
        }
        let (category, token) = (category.to_string(), *token);
        self.blocking(move |index| index.forget(&category, &token, offset))
            .await
            .map(|()| None)
            .map_err(|e| index_unavailable("dropping a stale key index entry", e))
    }

    /// The answer for a fact JetStream has just stored, and its key-index
    /// entry.
    fn stored(&self, offset: u64, ready: Ready) -> Finished {
        let log = &self.categories[&ready.category];
        log.fill.add_appended(ready.payload.len() as u64 + 100);
        (
            Ok(Appended {
                offset,
                duplicate: false,
                category: ready.category,
            }),
            Some((log.position, ready.raw_token, offset)),
        )
    }

    /// Turns a JetStream acknowledgement (None: none within the request
    /// timeout) into the append's answer and the key-index entry to record.
    async fn finish(&self, ack: Option<Ack>, ready: Ready) -> Finished {
        let log = &self.categories[&ready.category];
        let raw = ready.raw_token;
        match ack {
            Some(Ack::Stored {
                sequence,
                duplicate: false,
            }) => self.stored(sequence, ready),
            // The duplicate window knew the key: an earlier attempt was
            // stored (its acknowledgement lost) but may not be indexed yet.
            Some(Ack::Stored {
                sequence,
                duplicate: true,
            }) => match self.stored_under(&ready.category, sequence, &raw).await {
                Ok(Some(existing)) => {
                    let entry = Some((log.position, raw, existing.sequence));
                    // Rare (a retry raced its own lost acknowledgement):
                    // the digest comes from the record about to be published.
                    let compared = decode_record(&ready.payload, 0).and_then(|record| {
                        compare_existing(
                            existing,
                            &content_digest(&record.fact),
                            &ready.envelope,
                            &ready.category,
                        )
                    });
                    (compared, entry)
                }
                Ok(None) => (
                    Err(Rejection::new(
                        Code::Internal,
                        "key_lookup_failed",
                        format!(
                            "JetStream reported message_id {} as stored at offset {sequence}, but that fact cannot be read back",
                            ready.envelope.message_id
                        ),
                    )),
                    None,
                ),
                Err(r) => (Err(r), None),
            },
            Some(Ack::Refused {
                err_code,
                description,
            }) if description.contains("maximum bytes") || err_code == 10077 => {
                log.fill
                    .set_reported(log.config.capacity_bytes, log.fill.appended_counter());
                (
                    Err(Rejection::new(
                        Code::ResourceExhausted,
                        "category_full",
                        format!(
                            "category {} reached its capacity; appends are refused until confirmed facts are truncated",
                            ready.category
                        ),
                    )),
                    None,
                )
            }
            Some(Ack::Refused {
                err_code: ERR_WRONG_LAST_MSG_ID,
                ..
            }) => (
                Err(Rejection::new(
                    Code::Unavailable,
                    "order_guard",
                    format!(
                        "message_id {} was not stored: an earlier fact of its batch did not reach the stream (a lost publish); it is retried after that one, in order",
                        ready.envelope.message_id
                    ),
                )),
                None,
            ),
            Some(Ack::Refused {
                err_code,
                description,
            }) => (
                Err(unavailable(
                    "storing the fact",
                    format_args!("JetStream error {err_code}: {description}"),
                )),
                None,
            ),
            Some(Ack::NoResponders) => (
                Err(unavailable(
                    "storing the fact",
                    format_args!("no stream takes the subject of category {}", ready.category),
                )),
                None,
            ),
            Some(Ack::Unreadable(what)) => (
                Err(unavailable("reading the JetStream acknowledgement", what)),
                None,
            ),
            None => (
                Err(unavailable(
                    "waiting for the JetStream acknowledgement",
                    "none within the request timeout",
                )),
                None,
            ),
        }
    }

    /// Start-up: makes one category's key index match its stream (a
    /// recreated stream empties it; a lost stream tail or retention drops
    /// entries) and reads in every fact after the covered prefix. Returns
    /// the facts read in and the stream's last offset.
    async fn catch_up(&self, c: &Category) -> anyhow::Result<(u64, u64)> {
        let name = c.config.name.clone();
        let mut stream = c.stream.clone();
        let info = stream.info().await?.clone();
        let identity = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        let stored = self
            .blocking({
                let name = name.clone();
                move |index| index.stream_identity(&name)
            })
            .await?;
        if stored != Some(identity) {
            if stored.is_some() {
                tracing::warn!(
                    category = name,
                    "the category's stream was recreated; rebuilding its key index from it"
                );
            }
            let name = name.clone();
            self.blocking(move |index| index.reset(&name, identity))
                .await?;
        }
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let lost = self
            .blocking({
                let name = name.clone();
                move |index| index.forget_after(&name, last)
            })
            .await?;
        if lost > 0 {
            tracing::warn!(
                category = name,
                lost,
                last,
                "key index coverage above the stream's last offset dropped (the stream lost its tail); those offsets are read in again"
            );
        }
        self.blocking({
            let name = name.clone();
            move |index| index.forget_below(&name, first)
        })
        .await?;
        let from = self.index.through(&name) + 1;
        Ok((self.read_in(c, from, last).await?, last))
    }

    /// Maintenance for one category, once per tick: drops entries below the
    /// stream's first offset (retention) and reads in offsets that stayed
    /// unindexed for a whole tick (a lost acknowledgement, a write not made
    /// by this node). `seen_last` is the stream's last offset at the
    /// previous tick: anything at or below it had a tick to be indexed.
    async fn maintain(&self, c: &Category, seen_last: &mut u64) -> anyhow::Result<()> {
        let name = c.config.name.clone();
        let mut stream = c.stream.clone();
        let state = stream.info().await?.state.clone();
        let first = state.first_sequence;
        self.blocking({
            let name = name.clone();
            move |index| index.forget_below(&name, first)
        })
        .await?;
        let target = (*seen_last).min(state.last_sequence);
        let through = self.index.through(&name);
        if through < target {
            let last = self
                .index
                .first_gap(&name)
                .map_or(target, |(_, gap_last)| gap_last.min(target));
            self.read_in(c, through + 1, last).await?;
        }
        *seen_last = state.last_sequence;
        self.metrics
            .key_index_through_offset
            .get_or_create(&labels(&[("category", name.as_str())]))
            .set(self.index.through(&name) as i64);
        Ok(())
    }

    /// Reads the stored facts at offsets `first..=last` into the key index,
    /// with an ordered consumer that delivers headers only, in bounded
    /// chunks (memory does not grow with the backlog).
    async fn read_in(&self, c: &Category, first: u64, last: u64) -> anyhow::Result<u64> {
        use async_nats::jetstream::consumer;
        if first > last {
            return Ok(0);
        }
        let name = c.config.name.clone();
        let scan = c
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("facts.{name}.>"),
                headers_only: true,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first,
                },
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await?;
        let mut messages = scan.messages().await?;
        let (mut read, mut chunk_first, mut chunk) =
            (0u64, first, Vec::with_capacity(READ_IN_CHUNK_FACTS));
        let mut done = false;
        while !done {
            let next = tokio::time::timeout(Duration::from_secs(30), messages.try_next()).await;
            let message =
                next.map_err(|_| anyhow::anyhow!("no stored fact delivered within 30 s"))??;
            // No message at all: nothing is stored from `first` on any more.
            let mut chunk_last = last;
            if let Some(message) = message {
                let info = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("scan message without JetStream metadata: {e}"))?;
                let offset = info.stream_sequence.min(last);
                if info.stream_sequence <= last {
                    match message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(MSG_ID_HEADER))
                        .and_then(|v| token_bytes(v.as_str()))
                    {
                        Some(token) => chunk.push((c.position, token, offset)),
                        None => tracing::warn!(
                            category = name,
                            offset,
                            "stored fact without a key token header; not indexed"
                        ),
                    }
                }
                done = info.stream_sequence >= last || info.pending == 0;
                chunk_last = if done { last } else { offset };
            } else {
                done = true;
            }
            if done || chunk.len() >= READ_IN_CHUNK_FACTS {
                read += chunk.len() as u64;
                let entries = std::mem::take(&mut chunk);
                let covered = [(c.position, chunk_first, chunk_last)];
                self.blocking(move |index| index.record(&entries, &covered))
                    .await?;
                chunk_first = chunk_last + 1;
            }
        }
        if read > 0 {
            self.metrics
                .key_index_read_in_facts_total
                .get_or_create(&labels(&[("category", name.as_str())]))
                .inc_by(read);
            tracing::info!(
                category = name,
                read,
                first,
                last,
                "stored facts read into the key index"
            );
        }
        Ok(read)
    }

    /// Runs a key-index call on the blocking pool (it does file I/O).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyIndex) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || f(&index)).await?
    }
}

/// `work`'s output, or None once the round's deadline has passed: one
/// timer for the whole round (its send lock, publishes and
/// acknowledgements), not one more per fact.
async fn by_deadline<T>(
    deadline: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    work: impl std::future::IntoFuture<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        output = work => Some(output),
        () = deadline.as_mut() => None,
    }
}

/// Runs the `(slot, future)` pairs concurrently and puts each output in
/// its slot (the few facts of an append round that have to wait).
async fn fill_slots<T, F: std::future::Future<Output = T>>(
    slots: &mut [Option<T>],
    waiting: Vec<(usize, F)>,
) {
    if waiting.is_empty() {
        return;
    }
    let (at, futures): (Vec<usize>, Vec<F>) = waiting.into_iter().unzip();
    for (slot, output) in at.into_iter().zip(futures::future::join_all(futures).await) {
        slots[slot] = Some(output);
    }
}

/// Opens the key index, waiting up to 10 s while a node that is shutting
/// down (in this process or another) still holds the file's lock.
async fn open_key_index(
    path: std::path::PathBuf,
    categories: Vec<String>,
    buffered_entries_max: usize,
    filter_bytes: usize,
) -> anyhow::Result<KeyIndex> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (p, c) = (path.clone(), categories.clone());
        match tokio::task::spawn_blocking(move || {
            KeyIndex::open(&p, &c, buffered_entries_max, filter_bytes)
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

/// The key index's background work: the start-up catch-up (retried with
/// backoff; appends wait for it), then every `tick` retention pruning, gap
/// filling and the index's metrics. Ends when the log is dropped.
async fn maintain_index(log: Weak<FactLog>, tick: Duration) {
    let mut seen_last: HashMap<String, u64> = HashMap::new();
    if !catch_up_index(&log, &mut seen_last).await {
        return;
    }
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = WriterStats::default();
    loop {
        ticker.tick().await;
        let Some(strong) = log.upgrade() else { return };
        if strong.index.is_damaged() {
            drop(strong);
            if !catch_up_index(&log, &mut seen_last).await {
                return;
            }
            continue;
        }
        let log = strong;
        let stats = log.index_writer.stats();
        log.metrics
            .key_index_recorded_facts_total
            .inc_by(stats.recorded_entries - published.recorded_entries);
        log.metrics
            .key_index_write_seconds_total
            .inc_by(stats.record_seconds - published.record_seconds);
        log.metrics
            .key_index_staged_facts
            .set(stats.staged_entries as i64);
        let size = log.index.size();
        log.metrics.key_index_entries.set(size.entries as i64);
        log.metrics.key_index_file_bytes.set(size.file_bytes as i64);
        log.metrics
            .key_index_buffered_facts
            .set(size.buffered as i64);
        published = stats;
        for c in log.categories.values() {
            let seen = seen_last.entry(c.config.name.clone()).or_insert(0);
            if let Err(e) = log.maintain(c, seen).await {
                tracing::warn!(category = c.config.name, error = %e, "key index maintenance failed; will retry");
            }
        }
    }
}

/// Makes the key index hold every stored fact (at start-up, and after a
/// rebuild of a damaged index), retrying with backoff; then accepts
/// appends. False if the log was dropped meanwhile.
async fn catch_up_index(log: &Weak<FactLog>, seen_last: &mut HashMap<String, u64>) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(log) = log.upgrade() else {
            return false;
        };
        let caught_up = async {
            if log.index.is_damaged() {
                log.rebuild_index().await?;
            }
            let mut read = 0;
            for c in log.categories.values() {
                let (n, last) = log.catch_up(c).await?;
                read += n;
                seen_last.insert(c.config.name.clone(), last);
            }
            log.blocking(|index| index.sync()).await?;
            anyhow::Ok(read)
        };
        match caught_up.await {
            Ok(read) => {
                log.index_ready.send_replace(true);
                log.metrics.key_index_ready.set(1);
                tracing::info!(
                    read,
                    "key index caught up with the stored facts; appends accepted"
                );
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "key index catch-up failed; appends wait")
            }
        }
        drop(log);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::Predecessors;

    #[test]
    fn each_published_fact_names_the_one_before_it_in_its_own_stream() {
        let mut p = Predecessors::default();
        let named: Vec<Option<String>> = [
            ("ops", "a1"),
            ("docs", "d1"),
            ("ops", "a2"),
            ("ops", "a3"),
            ("docs", "d2"),
        ]
        .iter()
        .map(|(category, token)| p.follow(category, token))
        .collect();
        let expected = [None, None, Some("a1"), Some("a2"), Some("d1")];
        assert_eq!(named, expected.map(|t| t.map(String::from)));
    }
}
