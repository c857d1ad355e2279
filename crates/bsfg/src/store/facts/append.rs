//! An append batch, round by round: the facts are prepared, handed to the
//! NATS client in order under one deadline (pipelined, or as atomic
//! batches, `atomic`), and answered from their acknowledgements.

use super::ack::Finished;
use super::errors::is_transient;
use super::fence::Ticket;
use super::prepare::{Prepared, Ready};
use super::{AppendItem, Appended, FactLog, Order};
use crate::store::failure::unavailable;
use crate::store::publish::Round;
use crate::store::statuses::{LastStatus, STATUS_KIND};
use async_nats::HeaderMap;
use bsfg_domain::Rejection;
use bsfg_domain::identity::key_token;
use std::pin::Pin;
use tokio::time::Sleep;

// One per fact of an append round, in a Vec that lives for the round:
// boxing `Ready` would cost an allocation per fact for no memory saved.
#[allow(clippy::large_enum_variant)]
pub(super) enum InFlight {
    Done(Result<Appended, Rejection>),
    /// Handed to the NATS client; its acknowledgement is in the round's
    /// slot of the same position. The ticket is its place behind the
    /// category's fence (`fence`).
    Sent(Ready, Ticket),
    /// Not sent: its category's stream end is not known (`fence`); to be
    /// published again once it is.
    Fenced(Ready),
}

/// A fact's outcome of one publish pass: answered, or refused by the fence
/// (nothing stored) and to be looked up and published again once its
/// category's stream end is read (`FactLog::pipelined`).
// Nearly every fact is `Done`: boxing `Ready` would allocate per fact.
#[allow(clippy::large_enum_variant)]
pub(super) enum Pass {
    Done(Finished),
    Fenced(Ready),
}

/// Passes a fact refused by the fence goes through within one round (its
/// deadline also bounds them): the first fence refusal after another
/// writer's write or a lost publish is followed by one re-read; more is a
/// store changing under the node without pause.
const FENCED_PASSES_MAX: usize = 3;

/// The status facts of a batch, by position (see `store::statuses`).
fn status_facts(items: &[super::AppendItem]) -> Vec<(usize, LastStatus)> {
    items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.valid.subject_kind == STATUS_KIND)
        .filter_map(|(n, i)| {
            LastStatus::parse(&i.envelope.from_zone, &i.valid.fact.object_json).map(|s| (n, s))
        })
        .collect()
}

impl FactLog {
    /// Appends facts in order, one result per item. The publishes are
    /// pipelined: all are sent on the one NATS connection, in order, before
    /// any acknowledgement is awaited, so JetStream assigns offsets in item
    /// order (per-origin order is kept) while one batch costs about one round
    /// trip instead of one per fact; a category's facts are one atomic batch
    /// (one durable commit) when there are enough of them (`atomic`). With
    /// `Order::AsGiven` a fact is never stored after a later one of the same
    /// batch (see `Order`).
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
        let statuses = status_facts(&items);
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
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect();
        for (i, status) in statuses {
            if results[i].is_ok() {
                self.statuses.record(status);
            }
        }
        results
    }

    /// One round of a batch: distinct keys, all held by the key guard. The
    /// facts of a category with enough of them are committed as atomic
    /// batches (`atomic`), the others pipelined, side by side.
    async fn append_round(
        &self,
        items: Vec<(AppendItem, String)>,
        order: Order,
    ) -> Vec<Result<Appended, Rejection>> {
        let count = items.len();
        // Before the look-ups: a category whose stream's end this node does
        // not know is read again, and its index caught up to it (`fence`).
        self.resync_fences(&items).await;
        let mut prepared = match self.prepare_round(items).await {
            Ok(prepared) => prepared,
            Err(r) => return (0..count).map(|_| Err(r.clone())).collect(),
        };
        // The last check before the publishes: a node that lost the writer
        // lease (or never held it) stores nothing.
        if let Err(r) = self.gate.check() {
            return (0..count).map(|_| Err(r.clone())).collect();
        }
        // One deadline for the whole round, sends and acknowledgements
        // alike. Why: each acknowledgement's own timeout starts when it is
        // awaited, so awaiting a stalled server's acknowledgements one after
        // another took one timeout per fact (a round of 40 facts, 200 s).
        let until = tokio::time::Instant::now() + self.config.nats.request_timeout;
        let chunks = self.plan_atomic(&mut prepared, order);
        if chunks.is_empty() {
            let finished = self.pipelined(prepared, order, until).await;
            return self.index_stored(finished).await;
        }
        // The facts left to publish pipelined, and their slots.
        let (slots, rest): (Vec<usize>, Vec<Option<Prepared>>) = prepared
            .into_iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .unzip();
        let (atomic, pipelined) = tokio::join!(
            self.commit_chunks(chunks, order, until),
            self.pipelined(rest, order, until)
        );
        let mut finished: Vec<Option<Finished>> = (0..count).map(|_| None).collect();
        for (slot, f) in slots.into_iter().zip(pipelined).chain(atomic) {
            finished[slot] = Some(f);
        }
        let finished = finished
            .into_iter()
            .map(|f| f.expect("every fact of the round was answered"))
            .collect();
        self.index_stored(finished).await
    }

    /// Publishes prepared facts pipelined before `until` and answers each
    /// (in slot order) from its acknowledgement. A fact the fence refused
    /// (nothing stored) is looked up again once its category's stream end
    /// is read, and published again, within the deadline.
    pub(super) async fn pipelined(
        &self,
        prepared: Vec<Option<Prepared>>,
        order: Order,
        until: tokio::time::Instant,
    ) -> Vec<Finished> {
        let mut passes = self.pipelined_pass(prepared, order, until).await;
        for _ in 1..FENCED_PASSES_MAX {
            let fenced: Vec<usize> = (0..passes.len())
                .filter(|&slot| matches!(passes[slot], Pass::Fenced(_)))
                .collect();
            if fenced.is_empty() || tokio::time::Instant::now() >= until {
                break;
            }
            let mut again = Vec::with_capacity(fenced.len());
            for &slot in &fenced {
                let placeholder = Pass::Done((Err(fenced_rejection()), None));
                let Pass::Fenced(ready) = std::mem::replace(&mut passes[slot], placeholder) else {
                    unreachable!("only fenced slots were taken");
                };
                again.push(ready);
            }
            let again = self.publish_again(again, order, until).await;
            for (slot, pass) in fenced.into_iter().zip(again) {
                passes[slot] = pass;
            }
        }
        passes
            .into_iter()
            .map(|pass| match pass {
                Pass::Done(finished) => finished,
                Pass::Fenced(ready) => (Err(fenced(&ready.category)), None),
            })
            .collect()
    }

    /// One publish pass: the facts handed to the NATS client, their
    /// acknowledgements awaited, each answered or handed back fenced.
    async fn pipelined_pass(
        &self,
        prepared: Vec<Option<Prepared>>,
        order: Order,
        until: tokio::time::Instant,
    ) -> Vec<Pass> {
        if prepared.is_empty() {
            return Vec::new();
        }
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline);
        let mut round = by_deadline(&mut deadline, self.publisher.round(prepared.len())).await;
        let in_flight = self
            .send_round(prepared, order, round.as_mut(), &mut deadline)
            .await;
        // Every publish is on its way: wait for their acknowledgements (one
        // wake-up for the round), then answer in order (`answer_round`).
        let acks = match round {
            Some(round) => {
                by_deadline(&mut deadline, round.acknowledged()).await;
                round.into_acks()
            }
            None => Vec::new(),
        };
        self.answer_round(in_flight, acks).await
    }

    /// Facts the fence refused, after their categories' stream ends are
    /// read again: each looked up again (another writer may have stored
    /// it), then published again if it is still new.
    async fn publish_again(
        &self,
        fenced: Vec<Ready>,
        order: Order,
        until: tokio::time::Instant,
    ) -> Vec<Pass> {
        let mut names: Vec<&str> = fenced.iter().map(|r| r.category.as_str()).collect();
        names.dedup();
        let _ = tokio::time::timeout_at(until, self.resync_categories(&names)).await;
        let mut prepared = Vec::with_capacity(fenced.len());
        for ready in fenced {
            prepared.push(Some(self.prepare_again(ready).await));
        }
        self.pipelined_pass(prepared, order, until).await
    }
    /// Hands a round's prepared facts to the NATS client in slot order,
    /// holding the send lock (`round` is None if no round could be started
    /// before the deadline). A fact that is not sent is answered at once.
    async fn send_round(
        &self,
        prepared: Vec<Option<Prepared>>,
        order: Order,
        mut round: Option<&mut Round<'_>>,
        deadline: &mut Pin<&mut Sleep>,
    ) -> Vec<InFlight> {
        let mut in_flight = Vec::with_capacity(prepared.len());
        let sending = match round {
            Some(_) => by_deadline(deadline, self.sending.lock()).await,
            None => None,
        };
        let mut send_failed = sending.is_none();
        for (slot, p) in prepared.into_iter().enumerate() {
            let flight = match (p.expect("every fact was prepared"), round.as_deref_mut()) {
                (Prepared::Answered(done), _) => {
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
                (Prepared::Ready(_), Some(_)) if send_failed => InFlight::Done(Err(unavailable(
                    "publishing the fact",
                    "it or an earlier fact of the same batch could not be sent \
                     within the request timeout",
                ))),
                (Prepared::Ready(_), None) => InFlight::Done(Err(unavailable(
                    "publishing the fact",
                    "too many acknowledgements awaited; none could be sent \
                     within the request timeout",
                ))),
                (Prepared::Ready(ready), Some(round)) => {
                    let fence = &self.categories[&ready.category].fence;
                    match fence.publish(&ready.token) {
                        Some((tail, ticket)) => {
                            let mut headers = ready.headers();
                            tail.expect_in(&mut headers, true);
                            match publish(round, slot, ready, headers, deadline).await {
                                Ok(ready) => InFlight::Sent(ready, ticket),
                                Err(r) => {
                                    send_failed = true;
                                    InFlight::Done(Err(r))
                                }
                            }
                        }
                        // Nothing is sent to a stream whose end is unknown;
                        // with the order kept, nothing after it either.
                        None => {
                            send_failed |= order == Order::AsGiven;
                            InFlight::Fenced(ready)
                        }
                    }
                }
            };
            in_flight.push(flight);
        }
        drop(sending);
        in_flight
    }
}

/// A placeholder answer, replaced before anything reads it.
fn fenced_rejection() -> Rejection {
    fenced("")
}

/// The refusal for a fact not stored because its category's stream did not
/// end where this node expected, within the round's passes (`fence`).
pub(super) fn fenced(category: &str) -> Rejection {
    Rejection::new(
        bsfg_domain::Code::Unavailable,
        bsfg_domain::Reason::WriterFenced,
        format!(
            "not stored: this node is reading the end of category {category}'s stream again \
             (a publish did not land as expected, or another node of the zone wrote there); \
             retry with the same message_id"
        ),
    )
}

/// Hands one fact to the NATS client before the round's deadline; its
/// acknowledgement goes to `slot`. `Err` says why it was not sent.
async fn publish(
    round: &mut Round<'_>,
    slot: usize,
    ready: Ready,
    headers: HeaderMap,
    deadline: &mut Pin<&mut Sleep>,
) -> Result<Ready, Rejection> {
    let subject = ready.subject.clone();
    let sent = round.publish(slot, subject, headers, ready.payload.clone());
    match by_deadline(deadline, sent).await {
        Some(Ok(())) => Ok(ready),
        failed => {
            let why = match failed {
                Some(Err(e)) => e.to_string(),
                _ => "not sent within the request timeout".to_string(),
            };
            Err(unavailable("publishing the fact", why))
        }
    }
}

/// `work`'s output, or None once the round's deadline has passed: one
/// timer for the whole round (its send lock, publishes and
/// acknowledgements), not one more per fact.
pub(super) async fn by_deadline<T>(
    deadline: &mut Pin<&mut Sleep>,
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
pub(super) async fn fill_slots<T, F: std::future::Future<Output = T>>(
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
