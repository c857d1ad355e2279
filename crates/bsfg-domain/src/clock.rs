//! Clocks that disagree: how far another clock (the zone's store, a peer) is
//! from this node's, whether a clock stepped, and maxima over a window.
//!
//! Times are unix milliseconds of the clock they come from; durations
//! between two readings of *this* node come from its monotonic clock, so a
//! step of the wall clock never shows up as elapsed time.
//!
//! Invariants:
//! - [`SkewEstimate::skew_ms`] is the median of at most `SKEW_SAMPLES` recent
//!   samples: one late answer (a frozen receiver, a slow network) moves it
//!   only once it is the majority.
//! - [`StepDetector`] counts only forward steps larger than its tolerance;
//!   `forward_ms_total` never decreases.
//! - [`WindowedMax::max`] covers at least the last `window` and at most the
//!   last `window` + one slot.

use std::collections::VecDeque;

/// How many recent samples a skew estimate keeps.
pub const SKEW_SAMPLES: usize = 5;

/// The offset of another clock from this node's, from readings taken as
/// each answer of theirs arrives: `theirs_ms - ours_ms`, positive when the
/// other clock is ahead. A reading's error is the answer's one-way delay
/// (it makes the other clock look behind), so it is a median of several.
#[derive(Debug, Default, Clone)]
pub struct SkewEstimate {
    samples: VecDeque<i64>,
}

impl SkewEstimate {
    /// Records the other clock's time `theirs_ms` of an answer that arrived
    /// at `ours_ms` on this node's clock.
    pub fn record(&mut self, theirs_ms: i64, ours_ms: i64) {
        if self.samples.len() == SKEW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(theirs_ms.saturating_sub(ours_ms));
        assert!(self.samples.len() <= SKEW_SAMPLES);
    }

    /// The median offset (None before any sample).
    pub fn skew_ms(&self) -> Option<i64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<i64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }

    /// Whether the clocks disagree by more than `skew_max_ms`.
    pub fn disagrees(&self, skew_max_ms: i64) -> bool {
        self.skew_ms().is_some_and(|s| s.abs() > skew_max_ms)
    }
}

/// Finds steps of a wall clock by comparing how far it moved between two
/// readings with how far this node's monotonic clock moved.
#[derive(Debug, Clone)]
pub struct StepDetector {
    tolerance_ms: i64,
    last: Option<(i64, u64)>,
    forward_ms_total: i64,
}

impl StepDetector {
    pub fn new(tolerance_ms: i64) -> Self {
        assert!(tolerance_ms >= 0);
        Self {
            tolerance_ms,
            last: None,
            forward_ms_total: 0,
        }
    }

    /// Records a reading of the wall clock (`wall_ms`) taken at `mono_ms` on
    /// the monotonic clock; returns the step since the previous reading if
    /// it exceeds the tolerance (positive: forward).
    pub fn observe(&mut self, wall_ms: i64, mono_ms: u64) -> Option<i64> {
        let previous = self.last.replace((wall_ms, mono_ms));
        let (wall_before, mono_before) = previous?;
        assert!(mono_ms >= mono_before, "a monotonic clock never goes back");
        let elapsed_ms = i64::try_from(mono_ms - mono_before).unwrap_or(i64::MAX);
        let step = (wall_ms - wall_before) - elapsed_ms;
        if step.abs() <= self.tolerance_ms {
            return None;
        }
        if step > 0 {
            self.forward_ms_total += step;
        }
        Some(step)
    }

    /// The forward steps seen so far, added up: a fact stored before them
    /// looks that much older than it is.
    pub fn forward_ms_total(&self) -> i64 {
        self.forward_ms_total
    }
}

/// The maximum of a value over a sliding window, kept in `slots` buckets of
/// `window / slots` each (memory stays fixed however long it runs).
#[derive(Debug, Clone)]
pub struct WindowedMax {
    slot_ms: u64,
    /// (slot number, max in that slot), oldest first.
    slots: VecDeque<(u64, f64)>,
    slots_max: usize,
}

impl WindowedMax {
    pub fn new(window_ms: u64, slots: usize) -> Self {
        assert!(slots > 0 && window_ms >= slots as u64);
        Self {
            slot_ms: window_ms / slots as u64,
            slots: VecDeque::with_capacity(slots + 1),
            slots_max: slots + 1,
        }
    }

    /// Records `value` at `mono_ms` (this node's monotonic clock).
    pub fn record(&mut self, value: f64, mono_ms: u64) {
        let slot = mono_ms / self.slot_ms;
        match self.slots.back_mut() {
            Some((s, max)) if *s == slot => *max = max.max(value),
            _ => self.slots.push_back((slot, value)),
        }
        self.expire(slot);
    }

    /// The maximum over the window ending at `mono_ms` (0 when empty).
    pub fn max(&mut self, mono_ms: u64) -> f64 {
        self.expire(mono_ms / self.slot_ms);
        self.slots.iter().map(|(_, m)| *m).fold(0.0, f64::max)
    }

    fn expire(&mut self, slot_now: u64) {
        let oldest_kept = slot_now.saturating_sub(self.slots_max as u64 - 1);
        while self.slots.front().is_some_and(|(s, _)| *s < oldest_kept) {
            self.slots.pop_front();
        }
        assert!(self.slots.len() <= self.slots_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_the_median_so_one_late_answer_does_not_move_it() {
        let mut s = SkewEstimate::default();
        assert_eq!(s.skew_ms(), None);
        assert!(!s.disagrees(0));
        for ours in [1_000, 2_000, 3_000] {
            s.record(ours + 3_600_000, ours);
        }
        // One answer that arrived 9 s late.
        s.record(4_000 + 3_600_000, 13_000);
        assert_eq!(s.skew_ms(), Some(3_600_000));
        assert!(s.disagrees(10_000));
        for ours in 0..SKEW_SAMPLES as i64 {
            s.record(ours, ours + 3);
        }
        assert_eq!(s.skew_ms(), Some(-3), "old samples leave the window");
        assert!(!s.disagrees(10_000));
    }

    #[test]
    fn steps_are_wall_clock_moves_the_monotonic_clock_did_not_make() {
        let mut d = StepDetector::new(2_000);
        assert_eq!(d.observe(1_000_000, 0), None, "nothing to compare yet");
        assert_eq!(d.observe(1_010_000, 10_000), None);
        assert_eq!(d.observe(1_011_500, 11_000), None, "within tolerance");
        assert_eq!(d.observe(4_611_500, 11_000), Some(3_600_000));
        assert_eq!(d.observe(1_011_500, 12_000), Some(-3_601_000));
        assert_eq!(d.forward_ms_total(), 3_600_000, "back steps are not added");
    }

    #[test]
    fn the_windowed_max_forgets_what_is_older_than_the_window() {
        let mut w = WindowedMax::new(60_000, 6);
        assert_eq!(w.max(0), 0.0);
        w.record(3_600.0, 1_000);
        w.record(2.0, 15_000);
        assert_eq!(w.max(30_000), 3_600.0);
        assert_eq!(w.max(69_999), 3_600.0, "window plus one slot at most");
        assert_eq!(w.max(75_000), 2.0);
        assert_eq!(w.max(200_000), 0.0);
        w.record(1.0, 200_000);
        w.record(5.0, 200_001);
        assert_eq!(w.max(200_002), 5.0);
    }
}
