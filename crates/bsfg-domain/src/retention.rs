//! Frontier arithmetic for retention: how far a category log may be
//! truncated. Pure, so every edge is unit tested; the store only gathers the
//! inputs and issues the purge.

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
    Truncation {
        wanted_below,
        purge_below,
        blocked: purge_below < wanted_below,
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
}
