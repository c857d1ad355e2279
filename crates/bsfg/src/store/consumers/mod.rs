//! Named consumers: durable, server-side read cursors.
//!
//! Each configured consumer is a durable JetStream pull consumer with
//! `AckPolicy::All` on its category's stream, so JetStream itself keeps the
//! frontier (its ack floor) durably. `ConfirmReceipt(offset)` acknowledges
//! the delivered message at `offset`, which confirms it and everything
//! delivered before it.
//!
//! The node keeps, per consumer, the ack reply subjects of what it has
//! delivered and not yet seen confirmed (bounded by `unconfirmed_max`, which
//! is also JetStream's `max_ack_pending`). That is how a confirm of an offset
//! that was never delivered to this consumer is told apart and refused.
//!
//! A consumer is never deleted to move it. At start-up an existing consumer
//! is kept (its configured limits and filter are applied with an update) and
//! reset to its ack floor with JetStream's consumer reset (nats-server 2.14+):
//! whatever was delivered but unconfirmed before a restart is delivered again
//! at once, instead of after the redelivery timeout. The same reset serves a
//! peer that restarts from the frontier, and an operator's replay. Deleting
//! and re-creating instead would leave a window in which a crash loses the
//! durable frontier. Only a replay to before the consumer's configured start
//! (which JetStream refuses to reset to) still re-creates it.
//!
//! **Read-ahead.** A consumer that is behind fetches, confirms and fetches
//! again; without help, JetStream's read of the next batch waits for all of
//! that. When a fetch leaves facts pending, the node pulls the next batch
//! (same size, at most `[fetch] read_ahead_bytes_max`) while the caller is
//! busy with this one, and the next fetch is served from it. Facts pulled
//! ahead are delivered as far as JetStream knows, so they are never dropped
//! quietly: a later cumulative confirm would cover them. They are served
//! first, before anything pulled after them, and the only ways to drop them
//! are the consumer resets (restart from the frontier, replay), which make
//! JetStream deliver them again. Memory: one read-ahead batch per consumer.
//!
//! **A frontier only passes what was served.** Every delivery JetStream
//! makes to a consumer is numbered; the node serves nothing past a delivery
//! it did not take in, and resets the consumer to its frontier instead (see
//! [`puller`] for the invariants and why a cumulative confirm needs them).
//! A stored record that cannot be decoded is quarantined, not served: the
//! caller of `fetch` audits and counts it, and the consumer moves past it.

mod provision;
mod puller;

use super::failure::unavailable;
use super::{FactLog, served::ServedFact};
use crate::config::{ConsumerConfig, StartPosition, ZoneConfig};
use crate::metrics::Metrics;
use anyhow::Context as _;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::ConsumerResetErrorKind;
use bsfg_domain::{Code, Reason, Rejection};
use provision::{open_cursor, parse_start_time};
use puller::{JsMessage, PullError, Puller};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A bounded fetch request, already capped by the node's limits.
#[derive(Debug, Clone, Copy)]
pub struct FetchBounds {
    /// Redeliver everything after the frontier first (see the contract).
    pub restart_from_frontier: bool,
    pub limit: usize,
    pub bytes_max: usize,
    pub wait: Duration,
}

#[derive(Debug, Default)]
struct Delivery {
    frontier: u64,
    /// offset -> ack reply subject, for delivered and unconfirmed facts.
    unconfirmed: BTreeMap<u64, async_nats::Subject>,
    delivered_max: u64,
    /// Facts JetStream reported still pending after the last fetch. When
    /// none were, a long-poll fetch waits at once instead of first asking
    /// for what is ready: one JetStream round trip, not two.
    pending_after_last_fetch: u64,
}

/// What one fetch hands out.
#[derive(Debug)]
pub struct Fetched {
    pub facts: Vec<ServedFact>,
    /// Delivered records this node could not decode: not served, counted
    /// as delivered so the consumer moves past them (the caller audits them).
    pub quarantined: Vec<Quarantined>,
    pub frontier: u64,
    /// The highest offset delivered by this fetch (served or quarantined),
    /// or the frontier if none was: what the caller confirms to move on.
    pub last_delivered_offset: u64,
    pub backlog: u64,
}

/// A stored record that could not be served.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub offset: u64,
    pub reason: String,
}

pub struct Cursor {
    pub config: ConsumerConfig,
    /// The JetStream consumer and its read-ahead; the lock also serialises
    /// fetches (a consistent delivery order) and resets.
    puller: tokio::sync::Mutex<Puller>,
    /// The explicit consumer configuration, re-used when it is re-created.
    template: pull::Config,
    stream: async_nats::jetstream::stream::Stream,
    delivery: Mutex<Delivery>,
}

/// What an operator sees of a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct CursorStatus {
    pub name: String,
    pub category: String,
    pub frontier: u64,
    pub delivered_max: u64,
    pub unconfirmed: usize,
    /// Facts after the frontier not yet confirmed, from JetStream (None if
    /// it could not be read).
    pub pending: Option<u64>,
}

pub struct Consumers {
    client: async_nats::Client,
    cursors: HashMap<String, Cursor>,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    /// Pull size that always fits one fact of the largest allowed size.
    single_fact_bytes: usize,
    /// Most bytes pulled ahead per consumer (0: no read-ahead).
    read_ahead_bytes_max: usize,
    zone: String,
}

impl Consumers {
    pub async fn open(
        client: async_nats::Client,
        facts: &FactLog,
        config: Arc<ZoneConfig>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut cursors = HashMap::new();
        for c in &config.consumers {
            let category = facts.category(&c.category).expect("config checked");
            let cursor = open_cursor(c, &category.stream, &config, &metrics).await?;
            cursors.insert(c.name.clone(), cursor);
        }
        let single_fact_bytes = config.limits.fact_bytes_max + 8 * 1024;
        let read_ahead_bytes_max =
            usize::try_from(config.fetch.read_ahead_bytes_max).unwrap_or(usize::MAX);
        Ok(Self {
            client,
            cursors,
            metrics,
            request_timeout: config.nats.request_timeout,
            single_fact_bytes,
            read_ahead_bytes_max,
            zone: config.zone.clone(),
        })
    }

    fn cursor(&self, name: &str) -> Result<&Cursor, Rejection> {
        bsfg_domain::validate::consumer_name(name)?;
        self.cursors.get(name).ok_or_else(|| {
            Rejection::new(Code::NotFound, Reason::UnknownConsumer, format!("consumer {name:?} is not configured in this zone; consumers are declared in the zone configuration"))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.cursors.keys().map(String::as_str)
    }

    pub fn config(&self, name: &str) -> Result<&ConsumerConfig, Rejection> {
        Ok(&self.cursor(name)?.config)
    }

    pub async fn status(&self) -> Vec<CursorStatus> {
        let mut all = Vec::with_capacity(self.cursors.len());
        for c in self.cursors.values() {
            let pending = match c.stream.consumer_info(&c.config.name).await {
                Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
                Err(e) => {
                    tracing::warn!(consumer = %c.config.name, error = %e, "could not read the consumer's pending count");
                    None
                }
            };
            let d = c.delivery.lock().unwrap();
            all.push(CursorStatus {
                name: c.config.name.clone(),
                category: c.config.category.clone(),
                frontier: d.frontier,
                delivered_max: d.delivered_max,
                unconfirmed: d.unconfirmed.len(),
                pending,
            });
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Lowest frontier of the consumers of a category (None if it has none).
    pub fn lowest_frontier(&self, category: &str) -> Option<u64> {
        self.cursors
            .values()
            .filter(|c| c.config.category == category)
            .map(|c| c.delivery.lock().unwrap().frontier)
            .min()
    }

    /// The next facts for `name` after what it was already delivered, with
    /// the frontier and the backlog (facts still pending for this consumer
    /// after the last one returned). A delivery gap (see [`puller`]) resets
    /// the consumer to its frontier and pulls again, once; a second gap in
    /// the same fetch answers nothing, and the next fetch starts over.
    pub async fn fetch(&self, name: &str, bounds: FetchBounds) -> Result<Fetched, Rejection> {
        let cursor = self.cursor(name)?;
        let mut puller = cursor.puller.lock().await;
        let mut restart = bounds.restart_from_frontier;
        for _attempt in 0..2 {
            if puller.is_suspect() && !puller.verify().await? {
                self.count_gap(
                    name,
                    "a pull was lost; JetStream delivered more than this node took in",
                );
                restart = true;
            }
            if restart {
                self.restart_from_frontier(cursor, &mut puller).await?;
            }
            match self.pull(cursor, &mut puller, &bounds).await {
                Ok(messages) => return Ok(self.serve(cursor, &mut puller, messages, &bounds)),
                Err(PullError::Store(rejection)) => return Err(rejection),
                Err(PullError::Gap(gap)) => {
                    self.count_gap(
                        name,
                        &format!(
                            "delivery {} arrived where {} was due",
                            gap.got, gap.expected
                        ),
                    );
                    restart = true;
                }
            }
        }
        let frontier = cursor.delivery.lock().unwrap().frontier;
        Ok(Fetched {
            facts: Vec::new(),
            quarantined: Vec::new(),
            frontier,
            last_delivered_offset: frontier,
            backlog: 0,
        })
    }

    fn count_gap(&self, consumer: &str, what: &str) {
        self.metrics
            .delivery_gaps_total
            .get_or_create(&vec![("consumer".to_string(), consumer.to_string())])
            .inc();
        tracing::warn!(
            consumer,
            gap = what,
            "deliveries this node did not take in; redelivering from the frontier"
        );
    }

    /// Resets the consumer to its ack floor: whatever was delivered and not
    /// confirmed is delivered again, and no earlier delivery can be
    /// confirmed any more.
    async fn restart_from_frontier(
        &self,
        cursor: &Cursor,
        puller: &mut Puller,
    ) -> Result<(), Rejection> {
        puller
            .reset(None)
            .await
            .map_err(|e| unavailable("redelivering from the frontier", e))?;
        let mut d = cursor.delivery.lock().unwrap();
        d.unconfirmed.clear();
        d.delivered_max = d.frontier;
        d.pending_after_last_fetch = 1;
        Ok(())
    }

    /// The deliveries for one fetch: what was read ahead, then what is
    /// ready, then (if nothing was) a long poll for the first fact.
    async fn pull(
        &self,
        cursor: &Cursor,
        puller: &mut Puller,
        bounds: &FetchBounds,
    ) -> Result<Vec<JsMessage>, PullError> {
        let mut messages = puller.take_ahead(bounds.limit, bounds.bytes_max).await?;
        // The read-ahead was smaller than this request and more was pending
        // then (a caller that asks for more than before): the rest, as a
        // normal fetch would have returned it.
        let ahead_used_up = !messages.is_empty() && puller.ahead_is_empty();
        if ahead_used_up
            && messages
                .last()
                .and_then(|m| m.info().ok())
                .is_some_and(|info| info.pending > 0)
        {
            top_up(puller, &mut messages, bounds).await?;
        }
        // A reset marks facts as maybe pending (see `restart_from_frontier`).
        let maybe_ready =
            bounds.wait.is_zero() || cursor.delivery.lock().unwrap().pending_after_last_fetch > 0;
        if messages.is_empty() && maybe_ready {
            messages = puller.pull_now(bounds.limit, bounds.bytes_max).await?;
        }
        if maybe_ready && messages.is_empty() && bounds.bytes_max < self.single_fact_bytes {
            // The next fact alone may be larger than the caller's max_bytes;
            // JetStream then returns nothing. Deliver that one fact anyway.
            messages = puller.pull_now(1, self.single_fact_bytes).await?;
        }
        if messages.is_empty() && !bounds.wait.is_zero() {
            messages = puller.long_poll(bounds.wait).await?;
            // Only when more may be ready: new facts pending, or this one a
            // redelivery (JetStream's pending count leaves redeliveries out,
            // and others may be due with it). At low rates the first fact
            // is usually the only one.
            let more_pending = messages
                .first()
                .and_then(|m| m.info().ok())
                .is_some_and(|info| info.pending > 0 || info.delivered > 1);
            if more_pending {
                top_up(puller, &mut messages, bounds).await?;
            }
        }
        Ok(messages)
    }

    /// Turns deliveries into served facts and records them as delivered to
    /// the consumer (so they can be confirmed). A record this node cannot
    /// decode is not served: it is quarantined (reported to the caller of
    /// `fetch`, which audits it) and counts as delivered, so the consumer
    /// moves past it instead of failing on it forever.
    fn serve(
        &self,
        cursor: &Cursor,
        puller: &mut Puller,
        messages: Vec<JsMessage>,
        bounds: &FetchBounds,
    ) -> Fetched {
        let mut facts = Vec::with_capacity(messages.len());
        let mut quarantined = Vec::new();
        let mut delivered = Vec::with_capacity(messages.len());
        let mut backlog = 0;
        for message in messages {
            let (Ok(info), Some(reply)) = (message.info(), message.reply.clone()) else {
                unreachable!(
                    "take_in checked the delivery info and reply of every message it took in"
                );
            };
            let offset = info.stream_sequence;
            backlog = info.pending;
            match ServedFact::from_stored(&message.payload, offset, &self.zone) {
                Ok(fact) => facts.push(fact),
                Err(rejection) => quarantined.push(Quarantined {
                    offset,
                    reason: rejection.message,
                }),
            }
            delivered.push((offset, reply));
        }
        let frontier = {
            let mut d = cursor.delivery.lock().unwrap();
            d.pending_after_last_fetch = backlog;
            for (offset, reply) in delivered {
                if offset > d.frontier {
                    d.delivered_max = d.delivered_max.max(offset);
                    d.unconfirmed.insert(offset, reply);
                }
            }
            d.frontier
        };
        if backlog > 0 && self.read_ahead_bytes_max > 0 {
            puller.read_ahead(
                bounds.limit,
                bounds.bytes_max.min(self.read_ahead_bytes_max),
            );
        }
        // A redelivery that raced with a confirm can bring back facts already
        // confirmed; they are never served again.
        facts.retain(|f| f.offset > frontier);
        facts.sort_by_key(|f| f.offset);
        quarantined.retain(|q| q.offset > frontier);
        let last_delivered_offset = facts
            .iter()
            .map(|f| f.offset)
            .chain(quarantined.iter().map(|q| q.offset))
            .max()
            .unwrap_or(frontier);
        Fetched {
            facts,
            quarantined,
            frontier,
            last_delivered_offset,
            backlog,
        }
    }

    /// Replays: the consumer delivers from `start` again and its frontier
    /// moves to just before it; nothing is deleted from the log. A JetStream
    /// consumer reset, so the durable frontier is never absent; only a start
    /// before the consumer's own configured start (which JetStream refuses)
    /// re-creates the consumer.
    pub async fn reset(&self, name: &str, start: StartPosition) -> Result<u64, Rejection> {
        let cursor = self.cursor(name)?;
        let mut puller = cursor.puller.lock().await;
        // Read under the puller's lock: no fetch moves the consumer meanwhile.
        let next = self.replay_start(cursor, name, &start).await?;
        let frontier = match puller.reset(Some(next)).await {
            Ok(frontier) => frontier,
            Err(e) if e.kind() == ConsumerResetErrorKind::InvalidReset => {
                tracing::warn!(
                    consumer = name,
                    next,
                    "replay starts before the consumer's configured start; re-creating it"
                );
                let mut fresh = self
                    .recreate(
                        cursor,
                        DeliverPolicy::ByStartSequence {
                            start_sequence: next,
                        },
                    )
                    .await?;
                let info = fresh
                    .info()
                    .await
                    .map_err(|e| unavailable("reading the consumer", e))?
                    .clone();
                puller.consumer = fresh;
                puller.restarted(info.delivered.consumer_sequence);
                info.ack_floor.stream_sequence
            }
            Err(e) => return Err(unavailable("resetting the consumer", e)),
        };
        *cursor.delivery.lock().unwrap() = Delivery {
            frontier,
            unconfirmed: BTreeMap::new(),
            delivered_max: frontier,
            pending_after_last_fetch: 1,
        };
        self.metrics
            .frontier_offset
            .get_or_create(&vec![("consumer".to_string(), name.to_string())])
            .set(frontier as i64);
        tracing::warn!(consumer = name, frontier, "consumer reset for replay");
        Ok(frontier)
    }

    /// The first offset a replay of `name` from `start` delivers.
    async fn replay_start(
        &self,
        cursor: &Cursor,
        name: &str,
        start: &StartPosition,
    ) -> Result<u64, Rejection> {
        let state = cursor
            .stream
            .clone()
            .info()
            .await
            .map_err(|e| unavailable("reading the stream", e))?
            .state
            .clone();
        Ok(match start {
            StartPosition::Earliest => state.first_sequence.max(1),
            StartPosition::Latest => state.last_sequence + 1,
            // Past the end of the log a replay would skip facts not yet
            // appended (2^64-1 would blank the consumer for good).
            StartPosition::Offset(offset) if *offset > state.last_sequence.saturating_add(1) => {
                return Err(Rejection::new(
                    Code::OutOfRange,
                    Reason::OffsetBeyondEnd,
                    format!(
                        "offset {offset} is beyond the end of consumer {name}'s stream (last offset {}); replay from at most {}",
                        state.last_sequence,
                        state.last_sequence + 1
                    ),
                ));
            }
            StartPosition::Offset(offset) => (*offset).max(1),
            StartPosition::Time(text) => {
                let at = parse_start_time(text)
                    .map_err(|e| Rejection::invalid(Reason::BadStart, e.to_string()))?;
                super::retention::first_sequence_at_or_after(
                    &self.client,
                    &cursor.stream.cached_info().config.name,
                    at,
                    state.last_sequence,
                )
                .await
                .map_err(|e| unavailable("finding the first fact at the replay time", e))?
            }
        })
    }

    /// Deletes and re-creates the JetStream consumer with a new start (only
    /// for a replay to before its configured start; see `reset`).
    async fn recreate(
        &self,
        cursor: &Cursor,
        deliver_policy: DeliverPolicy,
    ) -> Result<consumer::Consumer<pull::Config>, Rejection> {
        let mut config = cursor.template.clone();
        config.deliver_policy = deliver_policy;
        let name = cursor.config.name.as_str();
        cursor
            .stream
            .delete_consumer(name)
            .await
            .map_err(|e| unavailable("re-creating the consumer", e))?;
        cursor
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable("re-creating the consumer", e))
    }

    /// Confirms everything delivered to `name` up to and including `offset`.
    pub async fn confirm(&self, name: &str, offset: u64) -> Result<u64, Rejection> {
        let cursor = self.cursor(name)?;
        let reply = {
            let d = cursor.delivery.lock().unwrap();
            if offset <= d.frontier {
                // Already confirmed: a retried confirm is harmless.
                return Ok(d.frontier);
            }
            match d.unconfirmed.get(&offset) {
                Some(reply) => reply.clone(),
                None if offset > d.delivered_max => {
                    return Err(Rejection::new(
                        Code::FailedPrecondition,
                        Reason::NotDelivered,
                        format!(
                            "offset {offset} has not been delivered to consumer {name} (highest delivered {}); fetch before confirming",
                            d.delivered_max
                        ),
                    ));
                }
                None => {
                    return Err(Rejection::invalid(
                        Reason::NotDeliveredToConsumer,
                        format!(
                            "offset {offset} was never delivered to consumer {name} (it belongs to another category or filter, or was delivered before a restart: fetch again)"
                        ),
                    ));
                }
            }
        };
        let ack = tokio::time::timeout(
            self.request_timeout,
            self.client
                .request(reply, bytes::Bytes::from_static(b"+ACK")),
        )
        .await
        .map_err(|_| unavailable("confirming", "acknowledgement timed out"))?
        .map_err(|e| unavailable("confirming", e))?;
        if ack.status.is_some_and(|s| !s.is_success()) {
            return Err(unavailable(
                "confirming",
                format!("JetStream answered {:?}", ack.status),
            ));
        }
        let frontier = {
            let mut d = cursor.delivery.lock().unwrap();
            d.frontier = d.frontier.max(offset);
            let keep = d.unconfirmed.split_off(&(offset + 1));
            d.unconfirmed = keep;
            d.frontier
        };
        self.metrics
            .frontier_offset
            .get_or_create(&vec![("consumer".to_string(), name.to_string())])
            .set(frontier as i64);
        Ok(frontier)
    }
}

/// Adds what is ready after `messages`, within the fetch's bounds.
async fn top_up(
    puller: &mut Puller,
    messages: &mut Vec<JsMessage>,
    bounds: &FetchBounds,
) -> Result<(), PullError> {
    let bytes_left = bounds
        .bytes_max
        .saturating_sub(messages.iter().map(|m| m.payload.len()).sum());
    if messages.len() < bounds.limit && bytes_left > 0 {
        match puller
            .pull_now(bounds.limit - messages.len(), bytes_left)
            .await
        {
            Ok(more) => messages.extend(more),
            // What was pulled before is still served.
            Err(PullError::Store(rejection)) => {
                tracing::debug!(error = %rejection.message, "topping up a batch failed")
            }
            Err(gap) => return Err(gap),
        }
    }
    Ok(())
}
