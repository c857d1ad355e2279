//! Frontier arithmetic for retention: how far a category log may be
//! truncated. Pure, so every edge is unit tested; the store only gathers the
//! inputs and issues the purge.
//!
//! Invariants of a [`Truncation`], asserted where it is made
//! ([`truncation`]) and where a purge relies on it (`store::retention`):
//! 1. No unconfirmed fact is purged: `purge_below <= confirmed_through + 1`,
//!    or `purge_below == first_offset` (nothing is purged).
//! 2. Nothing past the log is purged: `purge_below <= last_offset + 1`
//!    (or nothing is purged).
//! 3. The purge only moves the log's start forward:
//!    `purge_below >= first_offset`.
//! 4. `blocked` exactly when age or fill want more than may go:
//!    `blocked == (purge_below < wanted_below)`.

/// What retention knows about one category log at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    pub first_offset: u64,
    pub last_offset: u64,
    pub facts: u64,
    pub bytes: u64,
}

/// The decision: purge every offset below `purge_below` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// What age and fill alone would remove (exclusive bound).
    pub wanted_below: u64,
    /// What may be removed without losing an unconfirmed fact.
    pub purge_below: u64,
    /// True when unconfirmed facts are being kept past age or fill (alarm).
    pub blocked: bool,
}

/// * `first_young_offset`: the first offset younger than max_age (or
///   `last_offset + 1` when every fact is older);
/// * `confirmed_through`: the lowest frontier of the category's consumers
///   (`last_offset` when it has none);
/// * `retain_bytes`: the fill above which confirmed facts are removed.
pub fn truncation(
    state: LogState,
    first_young_offset: u64,
    confirmed_through: u64,
    retain_bytes: u64,
) -> Truncation {
    let mut wanted_below = state.first_offset.max(first_young_offset);
    if state.facts > 0 && state.bytes > retain_bytes {
        let average_bytes = (state.bytes / state.facts).max(1);
        let excess_facts = (state.bytes - retain_bytes).div_ceil(average_bytes);
        wanted_below = wanted_below.max(state.first_offset + excess_facts);
    }
    wanted_below = wanted_below.min(state.last_offset + 1);
    let purge_below = wanted_below
        .min(confirmed_through.saturating_add(1))
        .max(state.first_offset);
    let t = Truncation {
        wanted_below,
        purge_below,
        blocked: purge_below < wanted_below,
    };
    t.assert_invariants(state, confirmed_through);
    t
}

impl Truncation {
    /// The module's invariants 1–3 for a purge of `state` with the
    /// consumers' lowest frontier `confirmed_through`.
    pub fn assert_invariants(&self, state: LogState, confirmed_through: u64) {
        assert!(
            self.purge_below <= self.wanted_below.max(state.first_offset),
            "never more than age and fill want: {self:?}"
        );
        assert!(
            self.purge_below == state.first_offset
                || self.purge_below <= confirmed_through.saturating_add(1),
            "an unconfirmed fact would be purged: {self:?}, confirmed through {confirmed_through}"
        );
        assert!(
            self.purge_below <= state.last_offset.saturating_add(1).max(state.first_offset),
            "a purge past the log's end: {self:?}, {state:?}"
        );
        assert!(
            self.purge_below >= state.first_offset,
            "{self:?}, {state:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: LogState = LogState {
        first_offset: 11,
        last_offset: 110,
        facts: 100,
        bytes: 100_000,
    };

    #[test]
    fn nothing_to_do_when_young_and_small() {
        let t = truncation(STATE, 11, 110, 1_000_000);
        assert_eq!(
            t,
            Truncation {
                wanted_below: 11,
                purge_below: 11,
                blocked: false
            }
        );
    }

    #[test]
    fn age_truncates_only_the_confirmed_prefix() {
        // Facts 11..=50 are too old; everything is confirmed.
        assert_eq!(truncation(STATE, 51, 110, u64::MAX).purge_below, 51);
        // Only 11..=30 confirmed: 31..=50 stay and raise the alarm.
        let t = truncation(STATE, 51, 30, u64::MAX);
        assert_eq!((t.purge_below, t.blocked), (31, true));
        // Nothing confirmed at all.
        let t = truncation(STATE, 51, 0, u64::MAX);
        assert_eq!((t.purge_below, t.blocked), (11, true));
    }

    #[test]
    fn fill_truncates_oldest_confirmed_facts() {
        // 1000 bytes per fact, 40_000 bytes over the mark: 40 facts.
        let t = truncation(STATE, 11, 110, 60_000);
        assert_eq!(t.purge_below, 51);
        let t = truncation(STATE, 11, 20, 60_000);
        assert_eq!((t.purge_below, t.blocked), (21, true));
    }

    #[test]
    fn never_beyond_the_last_offset() {
        let t = truncation(STATE, 500, u64::MAX, 0);
        assert_eq!(t.purge_below, 111);
        assert!(!t.blocked);
    }

    #[test]
    fn empty_log() {
        let empty = LogState {
            first_offset: 111,
            last_offset: 110,
            facts: 0,
            bytes: 0,
        };
        assert_eq!(truncation(empty, 111, 110, 0).purge_below, 111);
    }

    proptest::proptest! {
        /// Whatever the inputs, the invariants hold (asserted inside
        /// `truncation`), and every purged offset is confirmed and was in
        /// the log.
        #[test]
        fn a_truncation_never_purges_an_unconfirmed_fact(
            first in 1u64..1_000,
            len in 0u64..1_000,
            bytes_per_fact in 1u64..10_000,
            young_from in 0u64..2_100,
            confirmed in 0u64..2_100,
            retain_bytes in 0u64..20_000_000,
        ) {
            let state = LogState {
                first_offset: first,
                // An empty log's last offset is one below its first.
                last_offset: first + len - 1,
                facts: len,
                bytes: len * bytes_per_fact,
            };
            let t = truncation(state, young_from, confirmed, retain_bytes);
            if t.purge_below > first {
                proptest::prop_assert!(t.purge_below - 1 <= confirmed);
                proptest::prop_assert!(t.purge_below - 1 <= state.last_offset);
            }
            proptest::prop_assert_eq!(t.blocked, t.purge_below < t.wanted_below);
        }
    }
}
