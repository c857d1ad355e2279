//! An append batch, round by round: the facts are prepared, handed to the
//! NATS client in order under one deadline, and answered from their
//! acknowledgements.

use super::ack::Finished;
use super::errors::is_transient;
use super::order::{EXPECTED_LAST_MSG_ID_HEADER, Predecessors};
use super::prepare::Ready;
use super::{AppendItem, Appended, FactLog, Order};
use crate::config::CategoryConfig;
use crate::store::key_index::{Token, token_bytes};
use crate::store::publish::Ack;
use crate::store::unavailable;
use bsfg_domain::Rejection;
use bsfg_domain::identity::key_token;

// One per fact of an append round, in a Vec that lives for the round:
// boxing `Ready` would cost an allocation per fact for no memory saved.
#[allow(clippy::large_enum_variant)]
pub(super) enum InFlight {
    Done(Result<Appended, Rejection>),
    /// Handed to the NATS client; its acknowledgement is in the round's
    /// slot of the same position.
    Sent(Ready),
}

impl FactLog {
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
