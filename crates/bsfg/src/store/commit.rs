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
//! Invariants: every queued fact is answered exactly once (stored,
//! refused, or `node_stopping`), in the answer the log gave for it
//! (results are matched to callers by position, asserted); a caller that
//! stopped waiting before its batch formed is not published; at most
//! `batches_in_flight_max` batches are in the log at once.

use super::facts::{AppendItem, Appended, FactLog};
use crate::config::CommitConfig;
use crate::metrics::Metrics;
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

struct Pending {
    item: AppendItem,
    reply: oneshot::Sender<Result<Appended, Rejection>>,
}

/// The producer side of the group-commit queue.
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the commit task in front of `log`. The task ends when this
    /// handle is dropped (its queue closes).
    pub fn start(log: Arc<FactLog>, config: CommitConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, pending) = mpsc::channel(config.queue_facts_max.max(1));
        tokio::spawn(run(log, pending, config, metrics));
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
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
    config: CommitConfig,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(config.batches_in_flight_max.max(1)));
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
        let mut batch = Vec::with_capacity(config.batch_facts_max.min(64));
        batch.push(first);
        while batch.len() < config.batch_facts_max {
            match pending.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A caller whose request timed out while its fact queued has been
        // answered `request_timeout`; publishing it now would store a fact
        // nobody was told about (a retry would find it, but nothing waits).
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics.commit_batch_facts.observe(batch.len() as f64);
        let log = log.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            let results = log.append_batch(items, super::facts::Order::Any).await;
            assert_eq!(results.len(), replies.len(), "one answer per fact");
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away (deadline) no longer needs its answer.
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}
