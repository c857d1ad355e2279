//! The pace of every stage's retries.

use std::time::Duration;

/// Exponential backoff with jitter: each wait is a random 50–100 % of the
/// current step, which doubles up to `max` and returns to `min` on reset.
/// The jitter comes from a seed (each link draws one at start and logs it),
/// so a schedule can be replayed.
///
/// Invariants, asserted: `0 < min <= max`; every delay lies in
/// `[step / 2, step]` with `min <= step <= max`.
pub(super) struct Backoff {
    step: Duration,
    min: Duration,
    max: Duration,
    /// xorshift64* state, never 0.
    rng: u64,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        assert!(
            !min.is_zero() && min <= max,
            "backoff bounds {min:?}..{max:?}: the config check requires 0 < min <= max"
        );
        Self {
            step: min,
            min,
            max,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The next delay; the step after it doubles (up to `max`).
    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.step.mul_f64(0.5 + 0.5 * self.unit());
        assert!(delay >= self.step / 2 && delay <= self.step);
        self.step = (self.step * 2).min(self.max);
        delay
    }

    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub(super) fn reset(&mut self) {
        self.step = self.min;
    }

    /// A uniform draw in [0, 1).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_their_bounds_and_replay_from_the_seed() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let delays = |seed| {
            let mut b = Backoff::new(min, max, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let first = delays(7);
        assert_eq!(first, delays(7), "the same seed, the same schedule");
        assert_ne!(first, delays(8));
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (delay, step) in first.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} for step {step:?}"
            );
        }
        let mut b = Backoff::new(min, max, 7);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    #[should_panic(expected = "0 < min <= max")]
    fn bounds_out_of_order_are_refused() {
        Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 0);
    }

    /// Paused time: `wait` sleeps the drawn delay, and `reset`
    /// starts the schedule again from `min`.
    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_drawn_delay_and_reset_starts_over() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let expected: Vec<Duration> = {
            let mut b = Backoff::new(min, max, 3);
            (0..3).map(|_| b.next_delay()).collect()
        };
        let mut b = Backoff::new(min, max, 3);
        for delay in &expected {
            let started = tokio::time::Instant::now();
            b.wait().await;
            // Tokio's timer rounds a sleep up to its next millisecond.
            let slept = started.elapsed();
            assert!(
                slept >= *delay && slept <= *delay + Duration::from_millis(1),
                "slept {slept:?} for a drawn {delay:?}"
            );
        }
        b.reset();
        let after_reset = b.next_delay();
        assert!(
            after_reset >= min / 2 && after_reset <= min,
            "{after_reset:?}"
        );
    }
}
