//! Atomic batches: the facts of one category in an append round committed
//! as one JetStream atomic batch (ADR-50), one durable commit for all of
//! them, instead of one pipelined publish (and, at `sync_interval: always`,
//! one fsync) each.
//!
//! Which facts: per category, the facts of a round that are ready to
//! publish, when there are at least `[commit] atomic_batch_facts_min` of
//! them and the category's stream takes atomic batches; in batches of at
//! most [`ATOMIC_BATCH_FACTS_MAX`]. Fewer go the pipelined way: an atomic
//! batch costs nats-server a fixed 1–3 ms of CPU (it stages the batch in a
//! store of its own), which only a batch of a few dozen facts earns back
//! (BENCHMARKS.md, "Atomic batches").
//!
//! How: the facts go to the NATS client back to back under the send lock,
//! each with `Nats-Msg-Id` (as pipelined), `Nats-Batch-Id` and
//! `Nats-Batch-Sequence`; only the last, with `Nats-Batch-Commit: 1`, has a
//! reply subject. nats-server stores the batch whole or not at all, at
//! consecutive stream sequences, and acknowledges the commit with the last
//! sequence and the count, from which each fact's offset follows. The
//! batch headers are stored with each fact (about 55 bytes more per fact).
//!
//! Duplicates and refusals: keys already stored were answered before
//! (`prepare`: the key index), so a batch holds only keys the index does
//! not know. nats-server refuses a whole batch for one key its duplicate
//! window knows (a retry whose first acknowledgement was lost and that the
//! index has not read in yet), for a stream that would overflow, and for
//! anything else it does not like; a refused batch stored nothing, and its
//! facts are published again pipelined, so that each gets its own answer
//! (duplicate, stored, `category_full`) and no fact waits on another's.
//! A batch with no answer in time, or one that cannot be read, may or may
//! not be stored (whole): each fact is answered `unavailable`, and a retry
//! finds it stored or stores it.
//!
//! Fence: the first fact names the stream's last sequence
//! (`Nats-Expected-Last-Sequence`; JetStream refuses
//! `Nats-Expected-Last-Msg-Id` inside a batch), and a batch is sent only
//! when nothing else of this node is in flight to the stream (`fence`).
//! Refused for that, its facts are answered `writer_fenced`.
//!
//! Order: a batch is all or nothing, so no fact of it is stored after a
//! later one. With `Order::AsGiven` the batches of a category are
//! committed one after another, and nothing after one that failed and will
//! be retried is sent.
//!
//! A server without atomic batches (before 2.12) does not keep `allow_atomic`
//! on the stream: the category stays pipelined, logged once at start-up.
//! A refusal because the stream does not take them (its configuration
//! changed under the node) turns them off for the category, logged once.

use super::ack::{Finished, fence_refused};
use super::append::by_deadline;
use super::errors::is_transient;
use super::fence::{Tail, Ticket};
use super::prepare::{Prepared, Ready};
use super::{Category, FactLog, Order};
use crate::metrics::labels;
use crate::store::publish::{Ack, Round};
use crate::store::unavailable;
use async_nats::jetstream::ErrorCode;
use bsfg_domain::Rejection;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::MutexGuard;
use tokio::time::{Instant, Sleep};

/// Most facts in one atomic batch: nats-server's default limit
/// (`jetstream { limits { max_batch_size } }`). A server configured lower
/// refuses larger batches, whose facts then go pipelined.
pub const ATOMIC_BATCH_FACTS_MAX: usize = 1000;

const BATCH_ID_HEADER: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE_HEADER: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT_HEADER: &str = "Nats-Batch-Commit";

/// An atomic batch's turn to be sent (`batch_turn`).
enum Turn<'a> {
    /// Sent now, holding the send lock, expecting the tail.
    Go(MutexGuard<'a, ()>, Tail, Ticket),
    /// The stream's end is not known (`fence`).
    Unknown,
    /// Not before the round's deadline.
    Late,
}

/// The facts of a batch, to publish pipelined.
fn as_prepared(facts: Vec<Ready>) -> Vec<Option<Prepared>> {
    facts
        .into_iter()
        .map(|r| Some(Prepared::Ready(r)))
        .collect()
}

/// One atomic batch of a round: facts of one category, in slot order.
pub(super) struct Chunk {
    category: String,
    slots: Vec<usize>,
    facts: Vec<Ready>,
}

/// Batch ids unique to this node process: a prefix and a counter.
/// nats-server keys a batch in flight by its id, so a restarted node must
/// not reuse its predecessor's ids (it would join a batch left unfinished):
/// the prefix mixes the node's seed for this purpose with its start time,
/// as a fixed `random_seed` repeats the seed.
pub(super) struct BatchIds {
    prefix: u32,
    next: AtomicU64,
}

/// The seed purpose of the batch-id prefix (`bsfg_domain::seed`).
pub(super) const BATCH_IDS_PURPOSE: &str = "facts/batch_ids";

impl BatchIds {
    pub(super) fn new(seed: u64) -> Self {
        let started = crate::store::now_unix_ms() as u64;
        Self {
            prefix: bsfg_domain::seed::derive(seed, &started.to_string()) as u32,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:x}", self.prefix)
    }
}

impl FactLog {
    /// Takes out of `prepared` the facts to commit as atomic batches (see
    /// the module documentation); what is left goes pipelined. With
    /// `Order::AsGiven`, only facts before the first one that failed and
    /// will be retried are taken: the pipelined path holds back every fact
    /// after that one (`send_round`), and so must this.
    pub(super) fn plan_atomic(
        &self,
        prepared: &mut [Option<Prepared>],
        order: Order,
    ) -> Vec<Chunk> {
        let min = self.config.atomic_batch_facts_min();
        if min == 0 || prepared.len() < min {
            return Vec::new();
        }
        let end = match order {
            Order::AsGiven => prepared
                .iter()
                .position(|p| matches!(p, Some(Prepared::Answered(Err(r))) if is_transient(r)))
                .unwrap_or(prepared.len()),
            Order::Any => prepared.len(),
        };
        let mut by_category: Vec<(String, Vec<usize>)> = Vec::new();
        for (slot, p) in prepared[..end].iter().enumerate() {
            let Some(Prepared::Ready(ready)) = p else {
                continue;
            };
            match by_category.iter_mut().find(|(c, _)| *c == ready.category) {
                Some((_, slots)) => slots.push(slot),
                None => by_category.push((ready.category.clone(), vec![slot])),
            }
        }
        let mut chunks = Vec::new();
        for (category, slots) in by_category {
            if slots.len() < min || !self.categories[&category].takes_atomic() {
                continue;
            }
            // Batches as even as the limit allows (1,001 facts: 501 + 500).
            let size = slots
                .len()
                .div_ceil(slots.len().div_ceil(ATOMIC_BATCH_FACTS_MAX));
            for part in slots.chunks(size) {
                let facts = part
                    .iter()
                    .map(|&slot| match prepared[slot].take() {
                        Some(Prepared::Ready(ready)) => ready,
                        _ => unreachable!("only slots ready to publish were planned"),
                    })
                    .collect();
                chunks.push(Chunk {
                    category: category.clone(),
                    slots: part.to_vec(),
                    facts,
                });
            }
        }
        chunks
    }

    /// Commits `chunks` one after another before `until`; answers each
    /// fact by its slot. With `Order::AsGiven`, the chunks of a category
    /// after one with a fact that will be retried are not sent.
    pub(super) async fn commit_chunks(
        &self,
        chunks: Vec<Chunk>,
        order: Order,
        until: Instant,
    ) -> Vec<(usize, Finished)> {
        let mut answered = Vec::new();
        let mut held_back: Vec<String> = Vec::new();
        for chunk in chunks {
            let slots = chunk.slots.clone();
            let finished = if held_back.contains(&chunk.category) {
                let why = unavailable(
                    "publishing the fact",
                    "an earlier fact of the same batch could not be stored; it is retried first",
                );
                chunk
                    .facts
                    .iter()
                    .map(|_| (Err(why.clone()), None))
                    .collect()
            } else {
                let category = chunk.category.clone();
                let finished = self.commit_chunk(chunk, order, until).await;
                let retried = finished
                    .iter()
                    .any(|(r, _)| matches!(r, Err(e) if is_transient(e)));
                if order == Order::AsGiven && retried {
                    held_back.push(category);
                }
                finished
            };
            debug_assert_eq!(slots.len(), finished.len());
            answered.extend(slots.into_iter().zip(finished));
        }
        answered
    }

    /// One atomic batch: sent, acknowledged, answered (or published again
    /// pipelined if refused).
    async fn commit_chunk(&self, chunk: Chunk, order: Order, until: Instant) -> Vec<Finished> {
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline);
        let Some(mut round) = by_deadline(&mut deadline, self.publisher.round(1)).await else {
            let why = unavailable(
                "publishing the fact",
                "too many acknowledgements awaited; none could be sent within the request timeout",
            );
            return chunk
                .facts
                .iter()
                .map(|_| (Err(why.clone()), None))
                .collect();
        };
        let ticket = match self.send_chunk(&chunk, &mut round, &mut deadline).await {
            Ok(Some(ticket)) => ticket,
            // The stream's end is not known: pipelined, which reads it.
            Ok(None) => {
                drop(round);
                return self.pipelined(as_prepared(chunk.facts), order, until).await;
            }
            // Not committed: nats-server drops the unfinished batch.
            Err(why) => {
                return chunk
                    .facts
                    .iter()
                    .map(|_| (Err(why.clone()), None))
                    .collect();
            }
        };
        by_deadline(&mut deadline, round.acknowledged()).await;
        let ack = round.into_acks().pop().flatten();
        self.answer_chunk(chunk, ack, ticket, order, until).await
    }

    /// Hands a chunk's facts to the NATS client back to back under the send
    /// lock, the last one committing the batch, the first naming the
    /// stream's end (`fence`). `Err` says why it was not all sent; None:
    /// nothing was sent, the stream's end is not known.
    async fn send_chunk(
        &self,
        chunk: &Chunk,
        round: &mut Round<'_>,
        deadline: &mut Pin<&mut Sleep>,
    ) -> Result<Option<Ticket>, Rejection> {
        let not_sent = |why: String| unavailable("publishing the atomic batch", why);
        let (_sending, tail, ticket) = match self.batch_turn(chunk, deadline).await {
            Turn::Go(sending, tail, ticket) => (sending, tail, ticket),
            Turn::Unknown => return Ok(None),
            Turn::Late => return Err(not_sent("not sent within the request timeout".into())),
        };
        let id = self.batch_ids.next();
        let last = chunk.facts.len();
        for (sequence, ready) in (1..).zip(&chunk.facts) {
            let mut headers = ready.headers();
            if sequence == 1 {
                tail.expect_in(&mut headers, false);
            }
            headers.insert(BATCH_ID_HEADER, id.as_str());
            headers.insert(BATCH_SEQUENCE_HEADER, sequence.to_string().as_str());
            let (subject, payload) = (ready.subject.clone(), ready.payload.clone());
            let sent = if sequence < last {
                let sent = round.publish_unanswered(subject, headers, payload);
                by_deadline(deadline, sent).await
            } else {
                headers.insert(BATCH_COMMIT_HEADER, "1");
                by_deadline(deadline, round.publish(0, subject, headers, payload)).await
            };
            match sent {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(not_sent(e.to_string())),
                None => return Err(not_sent("not sent within the request timeout".into())),
            }
        }
        Ok(Some(ticket))
    }

    /// The chunk's turn: the send lock, with nothing else of this node in
    /// flight to its stream, and the fence's tail and ticket for it.
    async fn batch_turn(&self, chunk: &Chunk, deadline: &mut Pin<&mut Sleep>) -> Turn<'_> {
        let fence = &self.categories[&chunk.category].fence;
        let count = chunk.facts.len() as u64;
        let last_id = &chunk.facts.last().expect("a chunk is never empty").token;
        loop {
            if by_deadline(deadline, fence.idle()).await.is_none() {
                return Turn::Late;
            }
            let Some(sending) = by_deadline(deadline, self.sending.lock()).await else {
                return Turn::Late;
            };
            if !fence.is_known() {
                return Turn::Unknown;
            }
            // None: something was sent between idle and the lock; wait again.
            if let Some((tail, ticket)) = fence.publish_batch(count, last_id) {
                return Turn::Go(sending, tail, ticket);
            }
        }
    }

    /// A chunk's answers from its commit's acknowledgement (None: none in
    /// time).
    async fn answer_chunk(
        &self,
        chunk: Chunk,
        ack: Option<Ack>,
        ticket: Ticket,
        order: Order,
        until: Instant,
    ) -> Vec<Finished> {
        let log = &self.categories[&chunk.category];
        let count = chunk.facts.len() as u64;
        let outcome = match &ack {
            Some(Ack::BatchStored { count: stored, .. }) if *stored == count => "committed",
            Some(Ack::Refused { .. }) => "refused",
            _ => "unknown",
        };
        self.metrics
            .atomic_batches_total
            .get_or_create(&labels(&[
                ("category", &chunk.category),
                ("outcome", outcome),
            ]))
            .inc();
        match ack {
            Some(Ack::BatchStored {
                last_sequence,
                count: stored,
            }) if stored == count && last_sequence >= count => {
                ticket.stored();
                // Contiguous: nats-server stores a batch at consecutive
                // sequences, in order, ending at the acknowledged one.
                let first = last_sequence + 1 - count;
                (chunk.facts.into_iter().zip(first..))
                    .map(|(ready, offset)| self.stored(offset, ready))
                    .collect()
            }
            Some(Ack::Refused { err_code, .. }) if fence_refused(err_code) => {
                // Not where the fence expected: nothing stored; the facts go
                // pipelined, which reads the stream's end again first.
                drop(ticket);
                self.count_fence_refusal(&chunk.category);
                self.pipelined(as_prepared(chunk.facts), order, until).await
            }
            Some(Ack::Refused {
                err_code,
                description,
            }) => {
                ticket.nothing_stored();
                // nats-server's JSAtomicPublishDisabledErr: the stream lacks
                // allow_atomic.
                if err_code == ErrorCode::ATOMIC_PUBLISH_DISABLED {
                    log.stop_atomic(&description);
                }
                tracing::debug!(
                    category = %chunk.category,
                    facts = count,
                    err_code = err_code.0,
                    %description,
                    "atomic batch refused (nothing stored); its facts are published pipelined"
                );
                self.pipelined(as_prepared(chunk.facts), order, until).await
            }
            other => {
                drop(ticket);
                self.answer_unknown(log, chunk, other).await
            }
        }
    }

    /// The answers for a chunk whose outcome is unknown: no acknowledgement
    /// in time, or one that does not fit the batch.
    async fn answer_unknown(
        &self,
        log: &Category,
        chunk: Chunk,
        ack: Option<Ack>,
    ) -> Vec<Finished> {
        let ack = match ack {
            Some(odd @ (Ack::BatchStored { .. } | Ack::Stored { .. })) => {
                // Not a batch of this size: the server did not treat it as
                // one. Whatever it stored, a retry answers as a duplicate.
                let why = format!(
                    "nats-server answered an atomic batch of {} facts with {odd:?}",
                    chunk.facts.len()
                );
                tracing::error!(category = %chunk.category, "{why}");
                log.stop_atomic(&why);
                Some(Ack::Unreadable(why))
            }
            other => other,
        };
        let mut finished = Vec::with_capacity(chunk.facts.len());
        for ready in chunk.facts {
            finished.push(self.finish(ack.clone(), ready).await);
        }
        finished
    }
}
