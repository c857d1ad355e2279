//! Which offsets of a category log the key index already covers.
//!
//! Why: the key index is written after JetStream acknowledges each batch,
//! and batches finish out of order; a fact whose acknowledgement was lost
//! is stored but never reported. The index may only persist "every offset
//! up to N is covered" for a contiguous prefix, so that after a crash it
//! re-reads exactly the facts after N. Offsets covered above the prefix are
//! kept as merged runs; in steady state there is one short run (the batch
//! that finished early), so memory stays bounded by the batches in flight
//! and by the gaps the node is about to fill.

use std::collections::BTreeMap;

/// The covered prefix of a log plus the covered runs above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexedRuns {
    /// Every offset `<= through` is covered.
    through: u64,
    /// Covered runs above `through + 1`: start -> end (inclusive),
    /// disjoint and not adjacent to each other or to the prefix.
    runs: BTreeMap<u64, u64>,
}

impl IndexedRuns {
    pub fn new(through: u64) -> Self {
        Self {
            through,
            runs: BTreeMap::new(),
        }
    }

    /// Every offset at or below this one is covered.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Marks `first..=last` covered (any overlap with what is covered is
    /// fine: covering is idempotent).
    pub fn cover(&mut self, first: u64, last: u64) {
        assert!(
            first >= 1 && first <= last,
            "offsets start at 1 and a run is not empty: {first}..={last}"
        );
        if last <= self.through {
            return;
        }
        let mut start = first.max(self.through + 1);
        let mut end = last;
        // Merge with every run that overlaps or touches start..=end.
        let touching: Vec<(u64, u64)> = self
            .runs
            .range(..=end.saturating_add(1))
            .filter(|(_, e)| **e + 1 >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.runs.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if start == self.through + 1 {
            self.through = end;
        } else {
            self.runs.insert(start, end);
        }
        debug_assert!(
            self.runs
                .keys()
                .next()
                .is_none_or(|s| *s > self.through + 1),
            "a run never touches the prefix"
        );
    }

    /// The first offsets not covered while something above them is:
    /// `(first, last)` inclusive.
    pub fn first_gap(&self) -> Option<(u64, u64)> {
        let (start, _) = self.runs.iter().next()?;
        Some((self.through + 1, start - 1))
    }

    /// The highest covered offset (prefix or run).
    pub fn highest(&self) -> u64 {
        self.runs
            .values()
            .next_back()
            .copied()
            .unwrap_or(self.through)
    }

    /// Forgets everything above `last` (the log lost its tail) and returns
    /// whether anything was forgotten.
    pub fn truncate_after(&mut self, last: u64) -> bool {
        let before = self.clone();
        self.runs.retain(|s, _| *s <= last);
        if let Some((_, e)) = self.runs.iter_mut().next_back() {
            *e = (*e).min(last);
        }
        self.through = self.through.min(last);
        *self != before
    }

    /// Offsets below `first` are gone from the log (retention): they count
    /// as covered.
    pub fn forget_below(&mut self, first: u64) {
        if first > 1 {
            self.cover(1, first - 1);
        }
    }

    /// Number of separate runs above the prefix (a gauge for operators).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_batches_extend_the_prefix() {
        let mut r = IndexedRuns::new(0);
        r.cover(1, 10);
        r.cover(11, 20);
        assert_eq!((r.through(), r.runs(), r.first_gap()), (20, 0, None));
    }

    #[test]
    fn an_early_batch_waits_above_the_gap_and_joins_when_it_closes() {
        let mut r = IndexedRuns::new(0);
        r.cover(11, 20);
        assert_eq!(r.through(), 0);
        assert_eq!(r.first_gap(), Some((1, 10)));
        assert_eq!(r.highest(), 20);
        r.cover(21, 25);
        assert_eq!(r.runs(), 1, "touching runs merge");
        r.cover(1, 10);
        assert_eq!((r.through(), r.runs(), r.first_gap()), (25, 0, None));
    }

    #[test]
    fn overlapping_and_repeated_covers_are_idempotent() {
        let mut r = IndexedRuns::new(5);
        r.cover(3, 7);
        assert_eq!(r.through(), 7);
        r.cover(10, 12);
        r.cover(11, 15);
        r.cover(10, 12);
        assert_eq!(r.first_gap(), Some((8, 9)));
        r.cover(20, 22);
        r.cover(14, 21);
        assert_eq!(r.runs(), 1);
        assert_eq!(r.highest(), 22);
        r.cover(8, 9);
        assert_eq!((r.through(), r.runs()), (22, 0));
    }

    #[test]
    fn a_lost_tail_is_forgotten() {
        let mut r = IndexedRuns::new(10);
        r.cover(15, 20);
        assert!(r.truncate_after(17));
        assert_eq!(
            (r.through(), r.highest(), r.first_gap()),
            (10, 17, Some((11, 14)))
        );
        assert!(r.truncate_after(8));
        assert_eq!((r.through(), r.runs()), (8, 0));
        assert!(!r.truncate_after(100), "nothing above 100 to forget");
    }

    #[test]
    fn purged_offsets_count_as_covered() {
        let mut r = IndexedRuns::new(0);
        r.cover(50, 60);
        r.forget_below(50);
        assert_eq!((r.through(), r.runs()), (60, 0));
        r.forget_below(1);
        assert_eq!(r.through(), 60);
    }
}
