//! The store-checked fence: a publish is stored only if the category's
//! stream ends where this node's key index says it does.
//!
//! The key guard makes a key's look-up and its publish atomic only against
//! this node's own appends; the writer lease (`writer_gate`) keeps other
//! nodes out only as long as every node's clock and every timeout behave.
//! A node frozen (SIGSTOP, a stalled VM) after its gate check, or holding
//! publishes in its NATS client's buffer, can wake up after another node
//! took the lease and wrote. The fence makes the store itself refuse such
//! a publish, whatever the lease and the client's buffering did.
//!
//! How: per category, the fence keeps the stream's *tail* as this node
//! expects it after everything it sent: the last sequence, and the message
//! id of the last fact it published there. Every publish carries both
//! (`Nats-Expected-Last-Sequence`, `Nats-Expected-Last-Msg-Id`), so
//! JetStream stores it only if the stream's last fact is the one this node
//! published just before it (a foreign write, or a lost publish of this
//! node in between, makes it refuse this one and every one after it). An
//! atomic batch may carry only the sequence (nats-server refuses a message
//! id in a batch): it is sent only when nothing else of this node is in
//! flight to the stream, so its expected sequence is one the stream had
//! acknowledged, not a prediction a lost publish could make right by chance.
//!
//! The tail becomes unknown when a publish was not stored as predicted (a
//! refusal, a duplicate, no answer in time) and when this node takes the
//! lease. Nothing is sent to a category with an unknown tail: it is read
//! again (`FactLog::resync_fences`) once this node has nothing in flight
//! there, and set only when the key index covers the stream up to it.
//!
//! Invariants:
//! * A fact is stored only after every fact before it in its stream was
//!   seen by this node's key index (read in, or published by this node
//!   behind the same tail): the tail is set only over a covered stream,
//!   and advances only over this node's own publishes.
//! * An atomic batch is sent only with nothing else of this node in flight
//!   to its stream (`in_flight == 0`).
//! * Every publish sent holds a [`Ticket`]; `in_flight` counts them, and a
//!   ticket dropped without `stored` makes the tail unknown.

use super::{AppendItem, Category, FactLog};
use async_nats::HeaderMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a resync looks again whether the key index covers the stream
/// (its gap filler reads in what another writer stored, within a second
/// or two).
const RESYNC_POLL: Duration = Duration::from_millis(50);

const EXPECTED_LAST_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Sequence";
const EXPECTED_LAST_MSG_ID_HEADER: &str = "Nats-Expected-Last-Msg-Id";

/// The end of a category's stream as this node expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tail {
    pub(super) last_sequence: u64,
    /// The message id of the fact at `last_sequence`, when this node
    /// published it (unknown after the tail was read from the stream).
    pub(super) last_msg_id: Option<String>,
}

impl Tail {
    /// Names this tail as what a publish expects.
    pub(super) fn expect_in(&self, headers: &mut HeaderMap, with_msg_id: bool) {
        headers.insert(
            EXPECTED_LAST_SEQUENCE_HEADER,
            self.last_sequence.to_string().as_str(),
        );
        if with_msg_id && let Some(id) = &self.last_msg_id {
            headers.insert(EXPECTED_LAST_MSG_ID_HEADER, id.as_str());
        }
    }
}

#[derive(Debug, Default)]
struct State {
    tail: Option<Tail>,
    /// Publishes (an atomic batch counts once) sent and not yet answered.
    in_flight: u64,
    /// Bumped each time the tail becomes unknown, so that a resync read
    /// before that does not set a stale tail.
    epoch: u64,
}

/// One category's fence; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Fence {
    state: Mutex<State>,
    /// Woken when `in_flight` drops to 0.
    idle: tokio::sync::Notify,
}

impl Fence {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fence poisoned")
    }

    /// The tail a publish of `msg_id` must expect, and its ticket; None
    /// while the tail is unknown (nothing may be sent). Call under the send
    /// lock, in the order the publishes go out.
    pub(super) fn publish(self: &Arc<Self>, msg_id: &str) -> Option<(Tail, Ticket)> {
        let mut state = self.state();
        let expected = state.tail.clone()?;
        state.tail = Some(Tail {
            last_sequence: expected.last_sequence + 1,
            last_msg_id: Some(msg_id.to_string()),
        });
        Some((expected, self.ticket(&mut state, None)))
    }

    /// The sequence an atomic batch of `count` facts, the last with id
    /// `last_msg_id`, must expect, and its ticket; None while the tail is
    /// unknown or another publish of this node is in flight to the stream.
    pub(super) fn publish_batch(
        self: &Arc<Self>,
        count: u64,
        last_msg_id: &str,
    ) -> Option<(Tail, Ticket)> {
        let mut state = self.state();
        if state.in_flight > 0 {
            return None;
        }
        let expected = state.tail.clone()?;
        state.tail = Some(Tail {
            last_sequence: expected.last_sequence + count,
            last_msg_id: Some(last_msg_id.to_string()),
        });
        Some((expected.clone(), self.ticket(&mut state, Some(expected))))
    }

    fn ticket(self: &Arc<Self>, state: &mut State, before: Option<Tail>) -> Ticket {
        state.in_flight += 1;
        Ticket {
            fence: self.clone(),
            before,
            after: state.tail.clone(),
            epoch: state.epoch,
            answered: false,
        }
    }

    pub(super) fn is_known(&self) -> bool {
        self.state().tail.is_some()
    }

    /// Makes the tail unknown (a publish was not stored as predicted, or
    /// another node may have written).
    pub(super) fn forget(&self) {
        let mut state = self.state();
        state.tail = None;
        state.epoch += 1;
    }

    /// Waits until nothing of this node is in flight to the stream; returns
    /// the epoch then, for [`Fence::set_read`].
    pub(super) async fn idle(&self) -> u64 {
        loop {
            let woken = self.idle.notified();
            {
                let state = self.state();
                if state.in_flight == 0 {
                    return state.epoch;
                }
            }
            woken.await;
        }
    }

    /// Sets the tail read from the stream (its last sequence), if the
    /// tail is still unknown, nothing is in flight and it was not forgotten
    /// since `epoch`. The caller has checked that the key index covers the
    /// stream up to `last_sequence`.
    pub(super) fn set_read(&self, epoch: u64, last_sequence: u64) -> bool {
        let mut state = self.state();
        if state.tail.is_some() || state.in_flight > 0 || state.epoch != epoch {
            return false;
        }
        state.tail = Some(Tail {
            last_sequence,
            last_msg_id: None,
        });
        true
    }

    fn answered(&self, ticket: &Ticket, outcome: Outcome) {
        let mut state = self.state();
        assert!(
            state.in_flight > 0,
            "a ticket answered with nothing in flight"
        );
        state.in_flight -= 1;
        let same_epoch = state.epoch == ticket.epoch;
        match outcome {
            Outcome::Stored => {}
            // Nothing stored: the tail goes back to before the batch if
            // nothing was sent behind it.
            Outcome::NothingStored
                if same_epoch && ticket.before.is_some() && state.tail == ticket.after =>
            {
                state.tail = ticket.before.clone();
            }
            Outcome::NothingStored | Outcome::Failed => {
                state.tail = None;
                state.epoch += 1;
            }
        }
        if state.in_flight == 0 {
            self.idle.notify_waiters();
        }
    }
}

impl FactLog {
    /// Reads the end of each category of `items` whose fence does not know
    /// it (`resync_categories`).
    pub(super) async fn resync_fences(&self, items: &[(AppendItem, String)]) {
        let mut names: Vec<&str> = Vec::new();
        for (item, _) in items {
            let name = self
                .config
                .category_for_kind(&item.valid.subject_kind)
                .name
                .as_str();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        self.resync_categories(&names).await;
    }

    /// Reads the end of each of the categories `names` whose fence does not
    /// know it, within `[nats] request_timeout` each. A category still
    /// unknown after that refuses its facts (`writer_fenced`) and is read
    /// again by the next round.
    pub(super) async fn resync_categories(&self, names: &[&str]) {
        for name in names {
            let category = &self.categories[*name];
            if category.fence.is_known() {
                continue;
            }
            let until = tokio::time::Instant::now() + self.config.nats.request_timeout;
            if tokio::time::timeout_at(until, self.resync(category))
                .await
                .is_err()
            {
                tracing::warn!(
                    category = %category.config.name,
                    "the end of the category's stream could not be read in time; its appends \
                     are refused writer_fenced and it is read again"
                );
            }
        }
    }

    /// Waits until nothing of this node is in flight to `c`'s stream, reads
    /// its last sequence, and sets the fence there once the key index
    /// covers it.
    async fn resync(&self, c: &Category) {
        loop {
            let epoch = c.fence.idle().await;
            let mut stream = c.stream.clone();
            let last = match stream.info().await {
                Ok(info) => info.state.last_sequence,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the stream's end for the fence");
                    tokio::time::sleep(RESYNC_POLL).await;
                    continue;
                }
            };
            if self.index.through(&c.config.name) >= last {
                if c.fence.set_read(epoch, last) {
                    tracing::info!(
                        category = %c.config.name,
                        last_offset = last,
                        "the category's stream end read for the fence; appends go on"
                    );
                }
                if c.fence.is_known() {
                    return;
                }
            }
            tokio::time::sleep(RESYNC_POLL).await;
        }
    }

    /// Makes every category's stream end unknown, to be read again before
    /// the next append there: what a node does when it takes the writer
    /// lease (another node may have written meanwhile).
    pub fn forget_stream_ends(&self) {
        for c in self.categories.values() {
            c.fence.forget();
        }
    }
}

enum Outcome {
    Stored,
    NothingStored,
    Failed,
}

/// One publish (or atomic batch) in flight; see [`Fence`]. Dropped without
/// an answer, it counts as not stored as predicted.
#[derive(Debug)]
pub(super) struct Ticket {
    fence: Arc<Fence>,
    /// An atomic batch's tail before it (to go back to if refused whole).
    before: Option<Tail>,
    /// The tail right after this publish.
    after: Option<Tail>,
    epoch: u64,
    answered: bool,
}

impl Ticket {
    /// Stored where predicted.
    pub(super) fn stored(mut self) {
        self.answered = true;
        self.fence.answered(&self, Outcome::Stored);
    }

    /// An atomic batch refused whole for a reason other than the stream's
    /// tail (nothing of it stored).
    pub(super) fn nothing_stored(mut self) {
        self.answered = true;
        self.fence.answered(&self, Outcome::NothingStored);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.answered {
            self.fence.answered(self, Outcome::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(at: u64) -> Arc<Fence> {
        let fence = Arc::new(Fence::default());
        fence.forget();
        let epoch = fence.state().epoch;
        assert!(fence.set_read(epoch, at));
        fence
    }

    #[test]
    fn each_publish_expects_the_one_this_node_sent_before_it() {
        let fence = known(10);
        let (first, a) = fence.publish("k1").unwrap();
        let (second, b) = fence.publish("k2").unwrap();
        assert_eq!(first.last_sequence, 10);
        assert_eq!(
            first.last_msg_id, None,
            "read from the stream: sequence only"
        );
        assert_eq!(second.last_sequence, 11);
        assert_eq!(second.last_msg_id.as_deref(), Some("k1"));
        a.stored();
        b.stored();
        let (third, _c) = fence.publish("k3").unwrap();
        assert_eq!(third.last_sequence, 12);
    }

    #[test]
    fn a_publish_not_stored_makes_the_tail_unknown_until_read_again() {
        let fence = known(10);
        let (_, a) = fence.publish("k1").unwrap();
        let (_, b) = fence.publish("k2").unwrap();
        let epoch_before = fence.state().epoch;
        drop(a);
        assert!(!fence.is_known());
        assert!(fence.publish("k3").is_none(), "nothing is sent meanwhile");
        // A read made before the failure does not count.
        assert!(!fence.set_read(epoch_before, 10));
        b.stored();
        let epoch = fence.state().epoch;
        assert!(fence.set_read(epoch, 11));
        assert_eq!(fence.publish("k3").unwrap().0.last_sequence, 11);
    }

    #[test]
    fn an_atomic_batch_waits_for_nothing_in_flight_and_a_refusal_rolls_it_back() {
        let fence = known(10);
        let (_, a) = fence.publish("k1").unwrap();
        assert!(
            fence.publish_batch(3, "b3").is_none(),
            "a publish is in flight"
        );
        a.stored();
        let (expected, batch) = fence.publish_batch(3, "b3").unwrap();
        assert_eq!(expected.last_sequence, 11);
        batch.nothing_stored();
        let (again, batch) = fence.publish_batch(3, "b3").unwrap();
        assert_eq!(
            again.last_sequence, 11,
            "refused whole: back to before the batch"
        );
        batch.stored();
        let (next, _) = fence.publish("k5").unwrap();
        assert_eq!(next.last_sequence, 14);
        assert_eq!(next.last_msg_id.as_deref(), Some("b3"));
    }

    #[test]
    fn a_refused_batch_with_publishes_behind_it_forgets_the_tail() {
        let fence = known(10);
        let (_, batch) = fence.publish_batch(3, "b3").unwrap();
        let (_, behind) = fence.publish("k4").unwrap();
        batch.nothing_stored();
        assert!(!fence.is_known());
        drop(behind);
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_answer() {
        let fence = known(1);
        let (_, a) = fence.publish("k1").unwrap();
        let waiting = tokio::spawn({
            let fence = fence.clone();
            async move { fence.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.stored();
        let epoch = waiting.await.unwrap();
        assert_eq!(epoch, fence.state().epoch);
    }

    #[test]
    fn the_headers_name_the_sequence_and_the_id_when_known() {
        let mut headers = HeaderMap::new();
        let tail = Tail {
            last_sequence: 7,
            last_msg_id: Some("k7".into()),
        };
        tail.expect_in(&mut headers, true);
        assert_eq!(
            headers.get(EXPECTED_LAST_SEQUENCE_HEADER).unwrap().as_str(),
            "7"
        );
        assert_eq!(
            headers.get(EXPECTED_LAST_MSG_ID_HEADER).unwrap().as_str(),
            "k7"
        );
        let mut batch = HeaderMap::new();
        tail.expect_in(&mut batch, false);
        assert!(batch.get(EXPECTED_LAST_MSG_ID_HEADER).is_none());
    }
}
