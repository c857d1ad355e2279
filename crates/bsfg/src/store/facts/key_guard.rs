//! The in-process key guard: the keys (idempotency tokens) being appended
//! right now.
//!
//! Why: an append's cross-category look-up and its publish must be atomic
//! for one key. JetStream makes the publish atomic inside a category; the
//! guard makes concurrent appends of the same key inside this node wait for
//! each other. It holds exactly the keys in flight, so its memory is
//! bounded by the batches in flight.
//!
//! Invariant: a key is held by at most one batch at a time (`hold` takes
//! all of a batch's keys or none, so two batches cannot deadlock); the
//! guard is empty when no batch is in flight.

use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::Notify;

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
    use std::sync::Arc;
    use std::time::Duration;

    /// Paused time: the waits below pass only when nothing else can run.
    #[tokio::test(start_paused = true)]
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
