//! Group commit: the stage in front of the fact log that AppendFact calls
//! and audit records go through.
//!
//! Why group commit: an append costs a key look-up in every other category
//! plus a guarded publish. Done one fact at a time, every one of those is a
//! NATS request of its own, and the node and nats-server spend their CPU on
//! per-request overhead (syscalls, inbox routing, JSON) rather than on facts.
//! Concurrent AppendFact calls therefore queue here; a single task takes
//! whatever has queued up (up to `batch_facts_max`) as one batch, which is
//! looked up with one request per category and published pipelined. At
//! concurrency 1 a batch is one fact and nothing waits; under load batches
//! grow by themselves. At most `batches_in_flight_max` batches run at once,
//! and the queue is bounded (`queue_facts_max`): when it is full, callers
//! wait, which is back-pressure, not loss.
//!
//! Appends flow one way: caller → [`GroupCommit`] → `FactLog::append_batch`
//! (the replicator, which batches by itself, calls the log directly). The
//! commit task holds the log; it ends when the last `GroupCommit` handle is
//! dropped.
//!
//! A request queues as one unit: one fact (AppendFact) or several in the
//! caller's order (AppendFacts). A unit is never split between batches, and
//! a batch holding a unit of several facts is appended with
//! `Order::AsGiven`, so a request's facts are stored in its order. The
//! queue holds at most `queue_facts_max` units; their bytes belong to
//! requests the boundary admitted, so the request memory budget bounds them.
//!
//! Regathering (one batch in flight, as at `sync_interval: always`): the
//! callers a commit answered usually send again within a client round trip,
//! while the commit took milliseconds. Taken the moment the commit ends, the
//! next batch would hold only what queued during it, and concurrent callers
//! would settle into two halves committed in turn, each commit paying the
//! store's fixed cost for half the facts (BENCHMARKS.md, "AppendFacts"). So
//! the next batch waits for the units the commit answered to come back (those
//! queued after it answered), but at most half that commit's duration and
//! at most 3 ms, and never once it is full (`regather`). A
//! lone sequential caller is its own returning unit and never waits.
//!
//! Invariants: every queued fact is answered exactly once (stored,
//! refused, or `node_stopping`), in the answer the log gave for it
//! (results are matched to callers by position, asserted); a caller that
//! stopped waiting before its batch formed is not published; at most
//! `batches_in_flight_max` batches are in the log at once; a batch takes
//! no unit once it holds `batch_facts_max` facts, so it holds fewer than
//! `batch_facts_max` plus its last unit's facts (asserted); a batch waits
//! for returning units only until its predecessor's commit duration / 2
//! (at most 3 ms) after that commit answered (asserted in `regather`).

use super::facts::{AppendItem, Appended, FactLog, Order};
use super::regather::{Returning, Unit, assert_bound, regather};
use crate::config::CommitConfig;
use crate::metrics::Metrics;
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// One request's facts, answered together, by position.
struct Pending {
    items: Vec<AppendItem>,
    reply: oneshot::Sender<Vec<Result<Appended, Rejection>>>,
    /// When it queued: after a commit answered, it is one of its callers
    /// coming back (or a new one).
    queued_at: Instant,
}

impl Unit for Pending {
    fn facts(&self) -> usize {
        self.items.len()
    }

    fn queued_at(&self) -> Instant {
        self.queued_at
    }
}

/// The producer side of the group-commit queue.
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the commit task in front of `log`. The task ends when this
    /// handle is dropped (its queue closes).
    /// `in_flight_max`: batches appended at once (`batches_in_flight_max`
    /// resolved for the server's sync setting).
    pub fn start(
        log: Arc<FactLog>,
        config: CommitConfig,
        in_flight_max: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        assert!(in_flight_max >= 1, "at least one batch in flight");
        let (queue, pending) = mpsc::channel(config.queue_facts_max.max(1));
        tokio::spawn(run(log, pending, (config, in_flight_max), metrics));
        Self { queue }
    }

    /// Appends one validated fact with the next batch. `provenance` is set
    /// by the replicator for facts that crossed zones; local appends start
    /// a fresh one.
    pub async fn append(
        &self,
        envelope: Envelope,
        valid: ValidFact,
        provenance: Option<Provenance>,
    ) -> Result<Appended, Rejection> {
        let item = AppendItem {
            envelope,
            valid,
            provenance,
        };
        let mut answers = self.queue_unit(vec![item]).await;
        assert_eq!(answers.len(), 1, "one answer per fact");
        answers.pop().expect("one answer")
    }

    /// Appends one request's local facts with the next batch, in their
    /// order (never split between batches): one answer per fact, by
    /// position.
    pub async fn append_all(
        &self,
        facts: Vec<(Envelope, ValidFact)>,
    ) -> Vec<Result<Appended, Rejection>> {
        let items = facts
            .into_iter()
            .map(|(envelope, valid)| AppendItem {
                envelope,
                valid,
                provenance: None,
            })
            .collect();
        self.queue_unit(items).await
    }

    async fn queue_unit(&self, items: Vec<AppendItem>) -> Vec<Result<Appended, Rejection>> {
        let count = items.len();
        if count == 0 {
            return Vec::new();
        }
        let (reply, answer) = oneshot::channel();
        let queued = Pending {
            items,
            reply,
            queued_at: Instant::now(),
        };
        let answers = match self.queue.send(queued).await {
            Ok(()) => answer.await.unwrap_or_else(|_| vec![Err(stopped()); count]),
            Err(_) => vec![Err(stopped()); count],
        };
        assert_eq!(answers.len(), count, "one answer per fact of the request");
        answers
    }
}

fn stopped() -> Rejection {
    Rejection::new(
        Code::Unavailable,
        Reason::NodeStopping,
        "the node is shutting down; retry against the restarted node",
    )
}

async fn run(
    log: Arc<FactLog>,
    mut pending: mpsc::Receiver<Pending>,
    (config, in_flight_max): (CommitConfig, usize),
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    // Set by the one batch in flight when it answers; read by the next.
    let returning: Arc<Mutex<Option<Returning>>> = Arc::default();
    loop {
        // Take the permit before the batch: while every batch slot is busy,
        // arrivals keep queueing and the next batch grows.
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let Some(first) = pending.recv().await else {
            return;
        };
        let mut batch = take_batch(first, &mut pending, config.batch_facts_max);
        let last_commit = returning.lock().expect("returning lock").take();
        if in_flight_max == 1
            && let Some(returning) = last_commit
        {
            regather(&mut batch, &mut pending, returning, config.batch_facts_max).await;
        }
        // A caller whose request timed out while its fact queued has been
        // answered `request_timeout`; publishing it now would store a fact
        // nobody was told about (a retry would find it, but nothing waits).
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (log, metrics, returning) = (log.clone(), metrics.clone(), returning.clone());
        tokio::spawn(async move {
            let (started, units) = (Instant::now(), batch.len());
            let answered = commit_batch(&log, batch, &metrics).await;
            *returning.lock().expect("returning lock") =
                Some(Returning::after(started, answered, units));
            drop(permit);
        });
    }
}

/// `first` and whatever else has queued, whole units, until the batch holds
/// `batch_facts_max` facts.
fn take_batch(
    first: Pending,
    pending: &mut mpsc::Receiver<Pending>,
    batch_facts_max: usize,
) -> Vec<Pending> {
    let mut facts = first.items.len();
    let mut batch = vec![first];
    while facts < batch_facts_max {
        match pending.try_recv() {
            Ok(p) => {
                facts += p.items.len();
                batch.push(p);
            }
            Err(_) => break,
        }
    }
    assert_bound(&batch, batch_facts_max);
    batch
}

/// Appends a batch's units as one log batch and answers each unit with its
/// facts' results, by position; returns when it answered them.
async fn commit_batch(log: &FactLog, batch: Vec<Pending>, metrics: &Metrics) -> Instant {
    // A unit of several facts is one request's, stored in its order.
    let order = if batch.iter().any(|p| p.items.len() > 1) {
        Order::AsGiven
    } else {
        Order::Any
    };
    let mut sizes = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.iter().map(|p| p.items.len()).sum());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        sizes.push(p.items.len());
        items.extend(p.items);
        replies.push(p.reply);
    }
    metrics.commit_batch_facts.observe(items.len() as f64);
    let count = items.len();
    let mut results = log.append_batch(items, order).await.into_iter();
    assert_eq!(results.len(), count, "one answer per fact");
    // Before the first answer: a caller may queue again right after it.
    let answered = Instant::now();
    for (reply, size) in replies.into_iter().zip(sizes) {
        // A caller that went away (deadline) no longer needs its answer.
        let _ = reply.send(results.by_ref().take(size).collect());
    }
    answered
}
