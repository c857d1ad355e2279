//! Regathering a group-commit batch: after a commit answers its callers,
//! the next batch waits briefly for them to queue again, so that callers
//! in a closed loop stay in one batch instead of settling into two halves
//! committed in turn (`commit`, BENCHMARKS.md "AppendFacts").
//!
//! Invariants (asserted): a batch waits only until its predecessor's commit
//! duration / [`SHARE_DIVISOR`], at most [`WAIT_MAX`], after that commit
//! answered; it takes no unit once it holds `batch_facts_max` facts.
//! tokio's timer has a 1 ms resolution: a wait ends at the first tick after
//! its deadline, up to a millisecond late.

use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest a batch waits for the last commit's callers to come back.
/// Under load they come back in milliseconds, not microseconds: each is
/// answered, sends again and is decoded one after another on the same
/// cores as the servers (64 AppendFact callers: ~3.5 ms of node and client
/// CPU). A shorter cap leaves a round's stragglers to a small batch of
/// their own, committed pipelined at the store's cost per fact
/// (BENCHMARKS.md, "AppendFacts").
pub const WAIT_MAX: Duration = Duration::from_millis(3);

/// A batch waits at most this share (1 / n) of its predecessor's commit:
/// callers that do not come back cost a commit at most half more.
pub const SHARE_DIVISOR: u32 = 2;

/// A queued request: its facts, and when it queued.
pub trait Unit {
    fn facts(&self) -> usize;
    fn queued_at(&self) -> Instant;
}

/// What a commit leaves the next batch to wait for: its callers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Returning {
    /// When the commit answered its callers (just before the first answer).
    pub since: Instant,
    /// How many units (requests) it answered.
    pub units: usize,
    /// Until when the next batch may wait for them.
    pub until: Instant,
}

impl Returning {
    /// After a commit that started at `started` and answered `units` units
    /// at `answered`.
    pub fn after(started: Instant, answered: Instant, units: usize) -> Self {
        let wait = (answered.saturating_duration_since(started) / SHARE_DIVISOR).min(WAIT_MAX);
        Self {
            since: answered,
            units,
            until: answered + wait,
        }
    }
}

/// Waits, until `returning.until`, for the units the last commit answered
/// to queue again (units queued since it answered), adding each arrival to
/// `batch`, while the batch holds fewer than `batch_facts_max` facts.
pub async fn regather<U: Unit>(
    batch: &mut Vec<U>,
    pending: &mut mpsc::Receiver<U>,
    returning: Returning,
    batch_facts_max: usize,
) {
    assert!(
        returning.until - returning.since <= WAIT_MAX,
        "a batch waits at most WAIT_MAX for returning callers"
    );
    let is_back = |u: &U| u.queued_at() >= returning.since;
    let mut facts: usize = batch.iter().map(Unit::facts).sum();
    let mut back = batch.iter().filter(|u| is_back(u)).count();
    while back < returning.units && facts < batch_facts_max {
        let arrival = tokio::time::timeout_at(returning.until, pending.recv()).await;
        let Ok(Some(unit)) = arrival else {
            break;
        };
        back += usize::from(is_back(&unit));
        facts += unit.facts();
        batch.push(unit);
    }
    assert_bound(batch, batch_facts_max);
}

/// A batch took no unit once it held `batch_facts_max` facts.
pub fn assert_bound<U: Unit>(batch: &[U], batch_facts_max: usize) {
    let facts: usize = batch.iter().map(Unit::facts).sum();
    let last = batch.last().map_or(0, Unit::facts);
    assert!(
        facts - last < batch_facts_max,
        "no unit taken past the batch's bound"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Request {
        facts: usize,
        queued_at: Instant,
    }

    impl Unit for Request {
        fn facts(&self) -> usize {
            self.facts
        }
        fn queued_at(&self) -> Instant {
            self.queued_at
        }
    }

    fn request(facts: usize) -> Request {
        Request {
            facts,
            queued_at: Instant::now(),
        }
    }

    /// A commit of `ms` that answered `units` units just now.
    fn answered(ms: u64, units: usize) -> Returning {
        let now = Instant::now();
        Returning::after(now - Duration::from_millis(ms), now, units)
    }

    #[test]
    fn the_wait_is_half_the_commit_and_at_most_wait_max() {
        let now = Instant::now();
        let short = Returning::after(now - Duration::from_micros(400), now, 3);
        assert_eq!(short.until - short.since, Duration::from_micros(200));
        let long = Returning::after(now - Duration::from_millis(40), now, 3);
        assert_eq!(long.until - long.since, WAIT_MAX);
        let clock_went_back = Returning::after(now + Duration::from_millis(5), now, 3);
        assert_eq!(clock_went_back.until, now, "no wait, not a panic");
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_waits_for_the_answered_callers_and_no_longer() {
        let (tx, mut rx) = mpsc::channel(16);
        // Queued while the commit ran: not one of its callers.
        let mut batch = vec![Request {
            facts: 32,
            queued_at: Instant::now() - Duration::from_micros(1),
        }];
        let returning = answered(4, 2);
        let sender = tokio::spawn(async move {
            for facts in [16, 16, 1] {
                tokio::task::yield_now().await;
                tx.send(request(facts)).await.unwrap();
            }
            tx
        });
        let started = Instant::now();
        regather(&mut batch, &mut rx, returning, 256).await;
        assert_eq!(
            batch.iter().map(Unit::facts).collect::<Vec<_>>(),
            [32, 16, 16]
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "done when both are back");
        let _tx = sender.await.unwrap();
        // Queued after both callers came back: left for the next batch.
        assert_eq!(rx.try_recv().map(|r| r.facts), Ok(1));
    }

    #[tokio::test(start_paused = true)]
    async fn callers_that_do_not_come_back_cost_at_most_the_wait() {
        let (_tx, mut rx) = mpsc::channel::<Request>(16);
        let mut batch = vec![request(1)];
        // A commit of 4 ms answered 10 callers; one is back, no other.
        let started = Instant::now();
        regather(&mut batch, &mut rx, answered(4, 10), 256).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(2));
        // A commit of 40 ms: the wait is capped.
        let started = Instant::now();
        regather(&mut batch, &mut rx, answered(40, 10), 256).await;
        assert_eq!(started.elapsed(), WAIT_MAX);
        // A commit of 1 ms: half a millisecond, which tokio's timer (1 ms
        // resolution) rounds up to at most a millisecond.
        let started = Instant::now();
        regather(&mut batch, &mut rx, answered(1, 10), 256).await;
        assert!(started.elapsed() <= Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_caller_that_is_back_or_a_full_batch_does_not_wait() {
        let (_tx, mut rx) = mpsc::channel::<Request>(16);
        let returning = answered(3, 1);
        // The one caller the commit answered, queued after it answered.
        let mut batch = vec![request(1)];
        let started = Instant::now();
        regather(&mut batch, &mut rx, returning, 256).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Full already: nothing is awaited, whoever is missing.
        let mut full = vec![Request {
            facts: 256,
            queued_at: returning.since - Duration::from_micros(1),
        }];
        regather(&mut full, &mut rx, answered(3, 5), 256).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_batch_stops_taking_at_its_bound() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut batch = vec![Request {
            facts: 200,
            queued_at: Instant::now() - Duration::from_millis(1),
        }];
        let returning = answered(4, 3);
        for facts in [40, 40, 40] {
            tx.send(request(facts)).await.unwrap();
        }
        regather(&mut batch, &mut rx, returning, 256).await;
        // 200 + 40 < 256 takes one more; 280 takes none.
        assert_eq!(batch.iter().map(Unit::facts).sum::<usize>(), 280);
        assert_eq!(rx.try_recv().map(|r| r.facts), Ok(40));
    }
}
