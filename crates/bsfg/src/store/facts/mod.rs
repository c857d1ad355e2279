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
use super::key_index::{IndexWriter, KeyIndex, Token, token_bytes};
use super::publish::{Ack, ERR_WRONG_LAST_MSG_ID, Publisher};
use super::{objects::Objects, unavailable};
use crate::config::{CategoryConfig, ZoneConfig};
use crate::metrics::Metrics;
use async_nats::jetstream;
use bsfg_domain::identity::{content_digest, key_token};
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod category;
mod errors;
mod index;
mod index_upkeep;
mod order;
mod prepare;
mod record;

use category::FillAccount;
pub use category::{Category, fact_subject, stream_config, stream_name};
use errors::is_transient;
use index_upkeep::maintain_index;
pub use order::Order;
use order::{EXPECTED_LAST_MSG_ID_HEADER, Predecessors};
use prepare::Ready;
use record::compare_existing;
pub use record::decode_record;

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
