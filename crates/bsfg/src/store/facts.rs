//! The zone's fact log: one JetStream stream per category.
//!
//! Idempotency without a side index: every fact is published to
//! `facts.<category>.<kind>.<key-token>`, where the token is the hash of
//! (`from_zone`, `message_id`), with `Nats-Expected-Last-Subject-Sequence: 0`
//! over `facts.<category>.*.<token>`. JetStream refuses the write atomically
//! when that key already has a fact, for as long as the fact is retained and
//! across restarts of the node and of nats-server; the duplicate window is
//! only a first line. On refusal we read the stored fact back and compare
//! content: identical means a retry (original offset, duplicate = true),
//! anything else a conflicting duplicate.
//!
//! The same key must not be stored in two categories either (same
//! `message_id`, different subject kind), which the subject guard cannot
//! see across streams: each batch looks its keys up in the other
//! categories first. A per-category key filter (a fixed-size Bloom filter,
//! `bsfg_domain::key_filter`) rules most of those look-ups out. It is filled
//! from the stored facts' subjects at start-up and from every append *before*
//! its publish, so it can only over-approximate what is stored; until it is
//! filled, every look-up goes to JetStream. This relies on the node being
//! the only writer of its zone's fact streams.

use super::{now_unix_ms, objects::Objects, unavailable};
use crate::config::{CategoryConfig, ZoneConfig};
use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bsfg_domain::identity::{content_digest, key_token};
use bsfg_domain::key_filter::KeyFilter;
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance, StoredFact};
use buffa::Message as _;
use std::collections::HashMap;
use super::commit::{CommitQueue, KeyGuard};
use super::direct::DirectGets;
use crate::metrics::{Metrics, labels};
use futures::TryStreamExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

const CONTENT_HEADER: &str = "Bsfg-Content";

/// One category's stream and its fill accounting.
pub struct Category {
    pub config: CategoryConfig,
    pub stream: stream::Stream,
    /// Stream bytes at the last refresh plus bytes appended since.
    bytes_estimate: AtomicU64,
    /// Every key token stored in this category may be in it (see module
    /// docs); `None` when `[commit] key_filter_bits = 0`.
    key_filter: Option<Mutex<KeyFilter>>,
    /// Set once the start-up scan has put every stored key in the filter.
    key_filter_ready: AtomicBool,
}

impl Category {
    pub fn stream_name(&self) -> String {
        stream_name(&self.config.name)
    }
    pub fn fill_percent(&self) -> f64 {
        self.bytes_estimate.load(Ordering::Relaxed) as f64 * 100.0 / self.config.capacity_bytes as f64
    }
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes_estimate.store(bytes, Ordering::Relaxed);
    }
    fn is_full(&self) -> bool {
        self.fill_percent() >= f64::from(self.config.fill_threshold_percent)
    }
    /// Records a key about to be stored here (before its publish, so that
    /// an unanswered publish is still covered).
    fn remember_key(&self, token: &str) {
        if let Some(filter) = &self.key_filter {
            filter.lock().expect("key filter poisoned").insert(token);
        }
    }
    /// The filter, once it holds every stored key: a key it does not
    /// contain is certainly not stored in this category.
    fn ready_key_filter(&self) -> Option<std::sync::MutexGuard<'_, KeyFilter>> {
        let filter = self.key_filter.as_ref().filter(|_| self.key_filter_ready.load(Ordering::Acquire))?;
        Some(filter.lock().expect("key filter poisoned"))
    }
}

pub fn stream_name(category: &str) -> String {
    format!("facts_{category}")
}

fn key_filter(category: &str, token: &str) -> String {
    format!("facts.{category}.*.{token}")
}

/// One fact to append.
pub struct AppendItem {
    pub envelope: Envelope,
    pub valid: ValidFact,
    /// Set by the replicator for facts that crossed zones.
    pub provenance: Option<Provenance>,
}

/// A fact ready to publish.
struct Ready {
    subject: String,
    category: String,
    token: String,
    content_hex: String,
    envelope: Envelope,
    payload: bytes::Bytes,
}

impl Ready {
    /// Idempotency: refuse the write if the key already has a fact in this
    /// category (any kind); the duplicate window is only a first line.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.token.as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", key_filter(&self.category, &self.token).as_str());
        headers.insert(CONTENT_HEADER, self.content_hex.as_str());
        headers
    }
}

enum InFlight {
    Done(Result<Appended, Rejection>),
    Sent(async_nats::jetstream::context::PublishAckFuture, Ready),
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub offset: u64,
    pub duplicate: bool,
    pub category: String,
}

pub struct FactLog {
    config: Arc<ZoneConfig>,
    jetstream: jetstream::Context,
    categories: HashMap<String, Category>,
    objects: Arc<Objects>,
    keys: KeyGuard,
    lookups: Arc<DirectGets>,
    commit: CommitQueue,
    metrics: Arc<Metrics>,
}

impl FactLog {
    pub async fn open(
        jetstream: jetstream::Context,
        config: Arc<ZoneConfig>,
        objects: Arc<Objects>,
        lookups: Arc<DirectGets>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut categories = HashMap::new();
        for c in &config.categories {
            let stream_config = stream::Config {
                name: stream_name(&c.name),
                description: Some(format!("BSFG zone {} category {}", config.zone, c.name)),
                subjects: vec![format!("facts.{}.>", c.name)],
                retention: stream::RetentionPolicy::Limits,
                // Hard stop; the node refuses earlier, at the fill threshold.
                max_bytes: c.capacity_bytes as i64,
                max_messages: -1,
                max_messages_per_subject: -1,
                // Age and confirmed-prefix truncation is done by the node's
                // retention task: JetStream's max_age would ignore consumers.
                max_age: std::time::Duration::ZERO,
                max_message_size: (config.limits.fact_bytes_max + 4096) as i32,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: false,
                storage: stream::StorageType::File,
                num_replicas: 1,
                duplicate_window: c.duplicate_window,
                // Key look-ups are direct gets (batched: see `direct`).
                allow_direct: true,
                allow_rollup: false,
                deny_delete: true,
                deny_purge: false,
                max_consumers: -1,
                no_ack: false,
                ..Default::default()
            };
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
                    bytes_estimate: AtomicU64::new(bytes),
                    key_filter: (config.commit.key_filter_bits > 0).then(|| Mutex::new(KeyFilter::new(config.commit.key_filter_bits))),
                    key_filter_ready: AtomicBool::new(false),
                },
            );
        }
        let log = Arc::new_cyclic(|log| Self {
            lookups,
            commit: CommitQueue::start(log.clone(), config.commit.clone(), metrics.clone()),
            config,
            jetstream,
            categories,
            objects,
            keys: KeyGuard::default(),
            metrics,
        });
        for category in log.categories.values().filter(|c| c.key_filter.is_some()) {
            tokio::spawn(fill_key_filter(Arc::downgrade(&log), category.config.name.clone()));
        }
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

    /// Appends one validated fact through group commit (see `commit`).
    /// `provenance` is set by the replicator for facts that crossed zones;
    /// local appends start a fresh one.
    pub async fn append(
        &self,
        envelope: Envelope,
        valid: ValidFact,
        provenance: Option<Provenance>,
    ) -> Result<Appended, Rejection> {
        self.commit.append(AppendItem { envelope, valid, provenance }).await
    }

    /// Appends facts in order, one result per item. The publishes are
    /// pipelined: all are sent on the one NATS connection, in order, before
    /// any acknowledgement is awaited, so JetStream assigns offsets in item
    /// order (per-origin order is kept) while one batch costs about one round
    /// trip instead of one per fact.
    pub async fn append_batch(&self, items: Vec<AppendItem>) -> Vec<Result<Appended, Rejection>> {
        let tokens: Vec<String> = items.iter().map(|i| key_token(&i.envelope.from_zone, &i.envelope.message_id)).collect();
        let _held = self.keys.hold(&tokens).await;
        // A key that occurs twice in one batch must see its first occurrence
        // stored before it is looked up, so it goes into a later round.
        let mut results: Vec<Option<Result<Appended, Rejection>>> = (0..items.len()).map(|_| None).collect();
        let mut waiting: Vec<(usize, AppendItem, String)> =
            items.into_iter().zip(tokens).enumerate().map(|(i, (item, token))| (i, item, token)).collect();
        while !waiting.is_empty() {
            let mut round_keys = std::collections::HashSet::new();
            let (round, later): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(_, _, token)| round_keys.insert(token.clone()));
            waiting = later;
            let (indices, round): (Vec<usize>, Vec<(AppendItem, String)>) =
                round.into_iter().map(|(i, item, token)| (i, (item, token))).unzip();
            for (i, result) in indices.into_iter().zip(self.append_round(round).await) {
                results[i] = Some(result);
            }
        }
        results.into_iter().map(|r| r.expect("every item has a result")).collect()
    }

    /// One round of a batch: distinct keys, all held by the key guard.
    async fn append_round(&self, items: Vec<(AppendItem, String)>) -> Vec<Result<Appended, Rejection>> {
        // Each fact's category, resolved once.
        let homes: Vec<&CategoryConfig> = items.iter().map(|(item, _)| self.config.category_for_kind(&item.valid.subject_kind)).collect();
        let mut existing = match self.look_up_elsewhere(&items, &homes).await {
            Ok(existing) => existing,
            Err(r) => return items.iter().map(|_| Err(r.clone())).collect(),
        };
        let prepared = futures::future::join_all(items.into_iter().zip(homes).map(|((item, token), home)| {
            let found = existing.remove(&token);
            self.prepare(item, token, home, found)
        }))
        .await;
        let mut in_flight = Vec::with_capacity(prepared.len());
        for p in prepared {
            in_flight.push(match p {
                Err(done) => InFlight::Done(done),
                Ok(ready) => {
                    self.categories[&ready.category].remember_key(&ready.token);
                    let headers = ready.headers();
                    match self.jetstream.publish_with_headers(ready.subject.clone(), headers, ready.payload.clone()).await {
                        Ok(ack) => InFlight::Sent(ack, ready),
                        Err(e) => InFlight::Done(Err(unavailable("publishing the fact", e))),
                    }
                }
            });
        }
        futures::future::join_all(in_flight.into_iter().map(|f| async move {
            match f {
                InFlight::Done(result) => result,
                InFlight::Sent(ack, ready) => self.finish(ack.await, ready).await,
            }
        }))
        .await
    }

    /// For every item, the fact already stored under its key in a category
    /// other than the item's own (same key, different kind), if any: one
    /// batched look-up per category, all categories concurrently. The own
    /// category needs none: its publish is refused atomically.
    async fn look_up_elsewhere(
        &self,
        items: &[(AppendItem, String)],
        homes: &[&CategoryConfig],
    ) -> Result<HashMap<String, (String, StreamMessage)>, Rejection> {
        let lookups = self.categories.values().map(|c| {
            // One lock per category and batch; released before any await.
            let filter = c.ready_key_filter();
            let mut ruled_out_count = 0;
            let subjects: Vec<String> = items
                .iter()
                .zip(homes)
                .filter(|(_, home)| home.name != c.config.name)
                .filter(|((_, token), _)| {
                    let ruled_out = filter.as_ref().is_some_and(|f| !f.may_contain(token));
                    ruled_out_count += u64::from(ruled_out);
                    !ruled_out
                })
                .map(|((_, token), _)| key_filter(&c.config.name, token))
                .collect();
            drop(filter);
            if ruled_out_count > 0 {
                self.metrics.key_lookups_ruled_out_total.get_or_create(&labels(&[("category", c.config.name.as_str())])).inc_by(ruled_out_count);
            }
            async move {
                if subjects.is_empty() {
                    return Ok((c, HashMap::new()));
                }
                self.lookups.last_by_key(&c.stream_name(), &subjects).await.map(|found| (c, found))
            }
        });
        let mut existing = HashMap::new();
        for answer in futures::future::join_all(lookups).await {
            let (category, found) = answer?;
            for (token, message) in found {
                existing.insert(token, (category.config.name.clone(), message));
            }
        }
        Ok(existing)
    }

    /// Everything before the publish: routing to a category, the answer for
    /// a key found in another category, capacity, attachments, encoding.
    /// `Err` carries a final answer (a duplicate found elsewhere, or a
    /// rejection).
    async fn prepare(
        &self,
        item: AppendItem,
        token: String,
        category: &CategoryConfig,
        found_elsewhere: Option<(String, StreamMessage)>,
    ) -> Result<Ready, Result<Appended, Rejection>> {
        let AppendItem { envelope, valid, provenance } = item;
        let log = &self.categories[&category.name];
        let content_hex = hex::encode(content_digest(&valid.fact));
        if let Some((other, existing)) = found_elsewhere {
            return Err(compare_existing(existing, &content_hex, &envelope, &other));
        }
        if log.is_full() {
            // A retry of something already stored is answered even when full.
            return Err(match self.find_by_token(log, &token).await {
                Err(r) => Err(r),
                Ok(Some(existing)) => compare_existing(existing, &content_hex, &envelope, &category.name),
                Ok(None) => Err(Rejection::new(
                    Code::ResourceExhausted,
                    "category_full",
                    format!(
                        "category {} is {:.1}% full (threshold {}%); appends are refused until confirmed facts are truncated. Consumers must confirm, or raise capacity_bytes",
                        category.name,
                        log.fill_percent(),
                        category.fill_threshold_percent
                    ),
                )),
            });
        }
        self.objects.check_and_freeze(&valid.fact.attachments).await.map_err(Err)?;

        let record = StoredFact {
            offset: 0,
            category: category.name.clone(),
            envelope: envelope.clone().into(),
            fact: valid.fact.clone().into(),
            provenance: provenance.unwrap_or_else(|| Provenance { origin_zone: envelope.from_zone.clone(), ..Default::default() }).into(),
            appended_at_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        let payload = record.encode_to_vec();
        if payload.len() > self.config.limits.fact_bytes_max {
            return Err(Err(Rejection::invalid(
                "fact_too_large",
                format!("the fact record is {} bytes; the limit is {}", payload.len(), self.config.limits.fact_bytes_max),
            )));
        }
        Ok(Ready {
            subject: format!("facts.{}.{}.{}", category.name, valid.subject_kind, token),
            category: category.name.clone(),
            token,
            content_hex,
            envelope,
            payload: payload.into(),
        })
    }

    /// Turns a JetStream acknowledgement into the append's answer.
    async fn finish(&self, ack: Result<async_nats::jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError>, ready: Ready) -> Result<Appended, Rejection> {
        let log = &self.categories[&ready.category];
        match ack {
            Ok(ack) if !ack.duplicate => {
                log.bytes_estimate.fetch_add(ready.payload.len() as u64 + 100, Ordering::Relaxed);
                Ok(Appended { offset: ack.sequence, duplicate: false, category: ready.category })
            }
            // Duplicate window hit, or the key already has a fact: read it
            // back and compare content.
            Ok(_) => self.resolve_existing(log, &ready.token, &ready.content_hex, &ready.envelope).await,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.resolve_existing(log, &ready.token, &ready.content_hex, &ready.envelope).await
            }
            Err(e) if e.to_string().contains("maximum bytes") || e.to_string().contains("10077") => {
                log.set_bytes(log.config.capacity_bytes);
                Err(Rejection::new(
                    Code::ResourceExhausted,
                    "category_full",
                    format!("category {} reached its capacity; appends are refused until confirmed facts are truncated", ready.category),
                ))
            }
            Err(e) => Err(unavailable("waiting for the JetStream acknowledgement", e)),
        }
    }

    async fn resolve_existing(
        &self,
        log: &Category,
        token: &str,
        content_hex: &str,
        envelope: &Envelope,
    ) -> Result<Appended, Rejection> {
        let existing = self.find_by_token(log, token).await?.ok_or_else(|| {
            Rejection::new(Code::Internal, "key_lookup_failed", format!("JetStream reported the key of message_id {} as stored, but it cannot be read back", envelope.message_id))
        })?;
        compare_existing(existing, content_hex, envelope, &log.config.name)
    }

    /// The fact stored under a key token in a category, if any.
    async fn find_by_token(&self, log: &Category, token: &str) -> Result<Option<StreamMessage>, Rejection> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match log.stream.direct_get_last_for_subject(key_filter(&log.config.name, token)).await {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("looking up the idempotency key", e)),
        }
    }

    /// Reads one stored fact by offset, validating it on the way out.
    pub async fn read(&self, category: &str, offset: u64) -> Result<StoredFact, Rejection> {
        let log = self.categories.get(category).ok_or_else(|| Rejection::new(Code::NotFound, "unknown_category", format!("no category {category}")))?;
        let message = log.stream.direct_get(offset).await.map_err(|e| unavailable("reading a fact", e))?;
        decode_record(&message.payload, offset)
    }
}

/// Start-up scan: puts every key stored in a category into its filter,
/// then marks the filter ready. Retries with backoff; until it succeeds the
/// category's look-ups simply all go to JetStream.
async fn fill_key_filter(log: Weak<FactLog>, category: String) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(log) = log.upgrade() else { return };
        let c = &log.categories[&category];
        match scan_key_tokens(c).await {
            Ok(keys) => {
                c.key_filter_ready.store(true, Ordering::Release);
                log.metrics.key_filter_ready.get_or_create(&labels(&[("category", category.as_str())])).set(1);
                tracing::info!(category, keys, "key filter filled from the stored facts");
                return;
            }
            Err(e) => tracing::warn!(category, error = %e, retry_in_ms = backoff.as_millis() as u64, "filling the key filter failed; key look-ups all go to JetStream meanwhile"),
        }
        drop(log);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Every stored key token of a category, read with an ordered consumer that
/// delivers headers only (no bodies), in pulls of bounded size, so the
/// scan's memory does not grow with the backlog. It stops at the last fact
/// stored when it began; later facts were remembered by their appends.
async fn scan_key_tokens(c: &Category) -> anyhow::Result<u64> {
    use async_nats::jetstream::consumer;
    let mut stream = c.stream.clone();
    let last_at_start = stream.info().await?.state.clone();
    if last_at_start.messages == 0 {
        return Ok(0);
    }
    let scan = c
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("facts.{}.>", c.config.name),
            headers_only: true,
            deliver_policy: consumer::DeliverPolicy::All,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    let mut messages = scan.messages().await?;
    let mut keys = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.try_next()).await;
        let Some(message) = next.map_err(|_| anyhow::anyhow!("no stored fact delivered within 30 s"))?? else {
            anyhow::bail!("the scan ended before the last stored fact");
        };
        c.remember_key(message.subject.as_str().rsplit('.').next().unwrap_or_default());
        keys += 1;
        let info = message.info().map_err(|e| anyhow::anyhow!("scan message without JetStream metadata: {e}"))?;
        if info.stream_sequence >= last_at_start.last_sequence || info.pending == 0 {
            return Ok(keys);
        }
    }
}

fn compare_existing(
    existing: StreamMessage,
    content_hex: &str,
    envelope: &Envelope,
    category: &str,
) -> Result<Appended, Rejection> {
    let stored_content = header_value(&existing, CONTENT_HEADER).unwrap_or_default();
    if stored_content == content_hex {
        return Ok(Appended { offset: existing.sequence, duplicate: true, category: category.to_string() });
    }
    Err(Rejection::new(
        Code::AlreadyExists,
        "conflicting_duplicate",
        format!(
            "message_id {:?} from zone {} is already stored at offset {} of category {} with different content; a correction is a new fact with a new message_id",
            envelope.message_id, envelope.from_zone, existing.sequence, category
        ),
    ))
}

fn header_value(message: &StreamMessage, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_string())
}

/// Decodes a stored record and checks its invariants: it must carry an
/// envelope and a fact whose key token matches how it was stored.
pub fn decode_record(payload: &[u8], offset: u64) -> Result<StoredFact, Rejection> {
    let mut record = StoredFact::decode_from_slice(payload).map_err(|e| {
        Rejection::new(Code::DataLoss, "corrupt_record", format!("stored fact at offset {offset} cannot be decoded: {e}"))
    })?;
    if record.envelope.message_id.is_empty() || record.fact.subject.is_empty() {
        return Err(Rejection::new(Code::DataLoss, "corrupt_record", format!("stored fact at offset {offset} lacks its envelope or fact")));
    }
    record.offset = offset;
    Ok(record)
}
