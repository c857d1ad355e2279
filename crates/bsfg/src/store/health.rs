//! Whether the zone's JetStream answers: its account info is read every
//! second (a connected server whose JetStream disabled itself, e.g. after a
//! storage error, still accepts the connection but answers no JetStream
//! request). Read by `/healthz` and logged at each change.

use crate::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the account is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long one read may take before JetStream counts as unreachable.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

pub struct JetStreamHealth {
    /// A one-line reason while JetStream does not answer.
    problem: Mutex<Option<String>>,
    /// A one-line reason while the store has storage errors (set by the
    /// embedded server's watcher, `node::nats_server`).
    storage_fault: Mutex<Option<String>>,
    metrics: Arc<Metrics>,
}

impl JetStreamHealth {
    /// Starts healthy (the store was just opened through it) and polls
    /// until dropped.
    pub fn start(jetstream: async_nats::jetstream::Context, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.jetstream_available.set(1);
        let health = Arc::new(Self {
            problem: Mutex::new(None),
            storage_fault: Mutex::new(None),
            metrics,
        });
        let weak = Arc::downgrade(&health);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let answer = match tokio::time::timeout(ANSWER_TIMEOUT, jetstream.query_account())
                    .await
                {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("the zone's JetStream account cannot be read: {e}")),
                    Err(_) => Some(format!(
                        "the zone's JetStream did not answer an account request within {ANSWER_TIMEOUT:?}"
                    )),
                };
                let Some(health) = weak.upgrade() else { return };
                health.set(answer);
            }
        });
        health
    }

    fn set(&self, problem: Option<String>) {
        let mut current = self.problem.lock().expect("jetstream health poisoned");
        if current.is_some() != problem.is_some() {
            match &problem {
                Some(why) => {
                    tracing::warn!(problem = %why, "the zone's JetStream is unavailable (disabled, or its account unreachable)")
                }
                None => tracing::warn!("the zone's JetStream answers again"),
            }
        }
        self.metrics
            .jetstream_available
            .set(i64::from(problem.is_none()));
        *current = problem;
    }

    pub fn set_storage_fault(&self, fault: Option<String>) {
        *self
            .storage_fault
            .lock()
            .expect("jetstream health poisoned") = fault;
    }

    pub fn storage_fault(&self) -> Option<String> {
        self.storage_fault
            .lock()
            .expect("jetstream health poisoned")
            .clone()
    }

    /// A one-line reason while JetStream does not answer.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .expect("jetstream health poisoned")
            .clone()
    }
}
