//! How far this zone is behind its peer: the replication lag, from what
//! the link knows.

use std::collections::VecDeque;

/// How long past its wait a long-poll may stay unanswered before the
/// link no longer counts as caught up (round trip, a busy peer).
const POLL_GRACE_MS: i64 = 2_000;

/// What a link knows of how far this zone is behind its peer; times are
/// unix ms (a fact's time is the peer's append time, from its hop).
pub(super) struct Freshness {
    /// Per batch fetched and not yet through the appender, oldest first:
    /// the time of its first fact (of its answer if it carries none).
    pub(super) in_pipeline: VecDeque<i64>,
    /// When the last answer arrived (the link's start before any).
    pub(super) answered_ms: i64,
    /// Whether the last answer left nothing waiting at the peer (backlog 0).
    pub(super) drained: bool,
    /// The time of the newest fact fetched.
    pub(super) newest_fetched_ms: Option<i64>,
    /// A fetch sent after a drained answer and not answered yet: when.
    pub(super) polling_since_ms: Option<i64>,
}

impl Freshness {
    /// The replication lag at `now`: the age of the oldest fact of the peer
    /// that may not be here yet, from what this node knows.
    /// * batches fetched but not yet appended: the age of the first fact of
    ///   the oldest (everything before it is here);
    /// * else, if the last answer still left facts at the peer: the age of
    ///   the newest fact fetched (those left are younger: an upper bound);
    /// * else the link was caught up when that answer arrived: 0 while the
    ///   long-poll sent since is answered in time (the peer answers at once
    ///   when a fact arrives), otherwise, e.g. while the link is cut, the
    ///   time since that answer: it keeps growing until the peer is heard
    ///   from again. Before any answer, the time since the link started.
    pub(super) fn lag_ms(&self, now: i64, wait_ms: i64) -> i64 {
        let since = if let Some(first) = self.in_pipeline.front() {
            *first
        } else if !self.drained {
            self.newest_fetched_ms.unwrap_or(self.answered_ms)
        } else if self
            .polling_since_ms
            .is_some_and(|p| now - p <= wait_ms + POLL_GRACE_MS)
        {
            now
        } else {
            self.answered_ms
        };
        (now - since).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::Freshness;

    #[test]
    fn lag_is_the_age_of_the_oldest_fact_that_may_be_missing() {
        let mut f = Freshness {
            in_pipeline: Default::default(),
            answered_ms: 10_000,
            drained: true,
            newest_fetched_ms: None,
            polling_since_ms: Some(10_000),
        };
        // Caught up and polling: 0 while the poll is in time (wait 1 s + grace).
        assert_eq!(f.lag_ms(12_900, 1_000), 0);
        // An overdue poll, or none (the link is cut): since the last answer.
        assert_eq!(f.lag_ms(13_500, 1_000), 3_500);
        f.polling_since_ms = None;
        assert_eq!(f.lag_ms(30_000, 1_000), 20_000);
        // A batch in the pipeline: the age of its first fact.
        f.in_pipeline.push_back(29_000);
        assert_eq!(f.lag_ms(30_000, 1_000), 1_000);
        // Appended, but the answer left facts at the peer: the newest fetched.
        f.in_pipeline.clear();
        f.drained = false;
        f.newest_fetched_ms = Some(29_500);
        assert_eq!(f.lag_ms(30_000, 1_000), 500);
        // Never negative (clocks of two nodes).
        assert_eq!(f.lag_ms(29_000, 1_000), 0);
    }
}
