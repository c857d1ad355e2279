//! Refusal records per identity, rate-limited: a caller that is refused
//! again and again gets a few records of its own, then one summary record
//! per interval that counts the rest by reason. Why: every refusal was a
//! record, so any site certificate could fill the audit category with
//! refusals and silence it (1,400 refusals in 5 s did).
//!
//! Pure logic with the time passed in, so it is tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Records one identity may have at once (a burst), and how fast it earns
/// another one.
pub const BURST_RECORDS: u32 = 20;
pub const REFILL_INTERVAL: Duration = Duration::from_millis(500);
/// Identities tracked at once; the rest share one bucket (so the map cannot
/// grow with the number of certificates an attacker presents).
pub const IDENTITIES_MAX: usize = 1024;
const SHARED_BUCKET: &str = "(other identities)";

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record it.
    Record,
    /// Count it into the identity's next summary.
    Suppress,
}

/// Refusals of one identity not recorded one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub identity: String,
    pub count: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub first: Instant,
    pub last: Instant,
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    refilled_at: Instant,
    suppressed: Option<Suppressed>,
}

#[derive(Debug, Default)]
pub struct RefusalLimiter {
    buckets: HashMap<String, Bucket>,
}

impl RefusalLimiter {
    /// Decides about one refusal of `identity` for `reason` at `now`.
    pub fn admit(&mut self, identity: &str, reason: &str, now: Instant) -> Verdict {
        let key = if self.buckets.contains_key(identity) || self.buckets.len() < IDENTITIES_MAX {
            identity
        } else {
            SHARED_BUCKET
        };
        let bucket = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: BURST_RECORDS,
            refilled_at: now,
            suppressed: None,
        });
        let earned = (now
            .saturating_duration_since(bucket.refilled_at)
            .as_millis()
            / REFILL_INTERVAL.as_millis()) as u32;
        if earned > 0 {
            bucket.tokens = (bucket.tokens + earned).min(BURST_RECORDS);
            bucket.refilled_at = now;
        }
        if bucket.tokens > 0 {
            bucket.tokens -= 1;
            return Verdict::Record;
        }
        let s = bucket.suppressed.get_or_insert_with(|| Suppressed {
            identity: key.to_string(),
            count: 0,
            by_reason: BTreeMap::new(),
            first: now,
            last: now,
        });
        s.count += 1;
        *s.by_reason.entry(reason.to_string()).or_default() += 1;
        s.last = now;
        Verdict::Suppress
    }

    /// Takes every identity's suppressed refusals (for summary records),
    /// and forgets identities that are full again and quiet.
    pub fn take_suppressed(&mut self, now: Instant) -> Vec<Suppressed> {
        let out: Vec<Suppressed> = self
            .buckets
            .values_mut()
            .filter_map(|b| b.suppressed.take())
            .collect();
        let quiet = REFILL_INTERVAL * BURST_RECORDS;
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.refilled_at) < quiet);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_recorded_then_the_rest_is_counted_by_reason() {
        let mut l = RefusalLimiter::default();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..100)
            .map(|i| {
                l.admit(
                    "stranger",
                    if i % 2 == 0 { "unknown_identity" } else { "x" },
                    t0,
                )
            })
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Record).count(),
            BURST_RECORDS as usize
        );
        assert!(
            verdicts[..BURST_RECORDS as usize]
                .iter()
                .all(|v| *v == Verdict::Record),
            "the burst comes first"
        );
        // Another identity is not affected.
        assert_eq!(l.admit("other", "unknown_identity", t0), Verdict::Record);
        let summary = l.take_suppressed(t0);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].identity, "stranger");
        assert_eq!(summary[0].count, 80);
        assert_eq!(summary[0].by_reason.values().sum::<u64>(), 80);
        assert!(l.take_suppressed(t0).is_empty(), "a summary is taken once");
    }

    #[test]
    fn records_are_earned_back_over_time() {
        let mut l = RefusalLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST_RECORDS {
            assert_eq!(l.admit("a", "r", t0), Verdict::Record);
        }
        assert_eq!(l.admit("a", "r", t0), Verdict::Suppress);
        assert_eq!(l.admit("a", "r", t0 + REFILL_INTERVAL), Verdict::Record);
        assert_eq!(l.admit("a", "r", t0 + REFILL_INTERVAL), Verdict::Suppress);
        assert_eq!(
            l.admit("a", "r", t0 + REFILL_INTERVAL * 100),
            Verdict::Record,
            "refilled"
        );
    }

    #[test]
    fn many_identities_share_one_bucket_past_the_bound() {
        let mut l = RefusalLimiter::default();
        let t0 = Instant::now();
        for i in 0..IDENTITIES_MAX + 500 {
            l.admit(&format!("cert-{i}"), "unknown_identity", t0);
        }
        assert_eq!(l.buckets.len(), IDENTITIES_MAX + 1, "the map is bounded");
        let shared = l
            .take_suppressed(t0)
            .into_iter()
            .find(|s| s.identity == SHARED_BUCKET)
            .expect("the overflow is counted");
        assert_eq!(shared.count, 500 - BURST_RECORDS as u64);
        // Quiet identities are forgotten once their bucket would be full again.
        l.take_suppressed(t0 + REFILL_INTERVAL * BURST_RECORDS);
        assert!(l.buckets.is_empty());
    }
}
