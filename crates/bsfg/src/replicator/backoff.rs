//! The pace of every stage's retries.

use std::time::Duration;

/// Exponential backoff with full jitter.
pub(super) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }
    pub(super) async fn wait(&mut self) {
        let jittered = self.next.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(jittered).await;
        self.next = (self.next * 2).min(self.max);
    }
    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }
}
