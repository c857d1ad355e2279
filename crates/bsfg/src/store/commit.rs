//! Group commit for AppendFact, and the in-process key guard.
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
//! Why a key guard: the cross-category look-up and the publish must be
//! atomic for one key. JetStream makes the publish atomic inside a category;
//! the guard makes concurrent appends of the same key inside this node wait
//! for each other. It holds exactly the keys in flight, so its memory is
//! bounded by the batches in flight.

use super::facts::{AppendItem, Appended, FactLog};
use crate::config::CommitConfig;
use crate::metrics::Metrics;
use bsfg_domain::{Code, Rejection};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

struct Pending {
    item: AppendItem,
    reply: oneshot::Sender<Result<Appended, Rejection>>,
}

/// The producer side of the group-commit queue.
pub struct CommitQueue {
    queue: mpsc::Sender<Pending>,
}

impl CommitQueue {
    /// Starts the commit task. It holds the log weakly and ends when the log
    /// (which owns this queue) is dropped.
    pub fn start(log: Weak<FactLog>, config: CommitConfig, metrics: Arc<Metrics>) -> Self {
        let (queue, pending) = mpsc::channel(config.queue_facts_max.max(1));
        tokio::spawn(run(log, pending, config, metrics));
        Self { queue }
    }

    pub async fn append(&self, item: AppendItem) -> Result<Appended, Rejection> {
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
        "node_stopping",
        "the node is shutting down; retry against the restarted node",
    )
}

async fn run(
    log: Weak<FactLog>,
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
        let Some(log) = log.upgrade() else { return };
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.reply)).unzip();
            let results = log.append_batch(items, super::facts::Order::Any).await;
            debug_assert_eq!(results.len(), replies.len());
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away (deadline) no longer needs its answer.
                let _ = reply.send(result);
            }
            drop(permit);
        });
    }
}

/// The keys (idempotency tokens) being appended right now.
#[derive(Default)]
pub struct KeyGuard {
    in_flight: Mutex<HashSet<String>>,
    released: Notify,
}

/// Held keys; released on drop.
pub struct HeldKeys<'a> {
    guard: &'a KeyGuard,
    tokens: Vec<String>,
}

impl KeyGuard {
    /// Waits until none of `tokens` is in flight elsewhere, then holds them
    /// all. All-or-nothing, so two batches cannot deadlock.
    pub async fn hold(&self, tokens: &[String]) -> HeldKeys<'_> {
        let mut distinct: Vec<String> = tokens.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Register for a wake-up before checking, so a release between
            // the check and the wait is not missed.
            released.as_mut().enable();
            {
                let mut in_flight = self.in_flight.lock().expect("key guard poisoned");
                if distinct.iter().all(|t| !in_flight.contains(t)) {
                    in_flight.extend(distinct.iter().cloned());
                    return HeldKeys {
                        guard: self,
                        tokens: distinct,
                    };
                }
            }
            released.await;
        }
    }
}

impl Drop for HeldKeys<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.guard.in_flight.lock().expect("key guard poisoned");
        for t in &self.tokens {
            in_flight.remove(t);
        }
        drop(in_flight);
        self.guard.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_keys_wait_for_each_other_and_disjoint_keys_do_not() {
        let guard = Arc::new(KeyGuard::default());
        let held = guard.hold(&["a".into(), "b".into()]).await;
        // Disjoint keys are held at once.
        let other =
            tokio::time::timeout(Duration::from_millis(100), guard.hold(&["c".into()])).await;
        assert!(other.is_ok(), "disjoint keys must not wait");
        drop(other);
        // An overlapping set waits until the first holder releases.
        let g = guard.clone();
        let waiter = tokio::spawn(async move {
            let _h = g.hold(&["b".into(), "d".into()]).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "an overlapping key must wait");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released keys wake the waiter")
            .unwrap();
        assert!(
            guard.in_flight.lock().unwrap().is_empty(),
            "every key is released"
        );
    }
}
