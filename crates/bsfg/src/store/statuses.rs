//! The last status fact of each origin zone, kept in memory for the fleet
//! view (`/console/fleet`, see `node::console`).
//!
//! Why fed at append time: every fact this node stores, its own status
//! facts (group commit) and those its links pull (the replicator), goes
//! through `FactLog::append_batch`, so one hook there sees each status the
//! moment it is stored, and a request reads memory only. Reading the
//! `status` stream at request time instead would need one bounded read per
//! request, and a zone silent for longer than that read reaches back would
//! vanish from the view instead of being shown stale. After a restart the
//! view fills again within one interval of each zone.
//!
//! Bounded: at most [`ZONES_MAX`] zones (past it the zone heard from least
//! recently gives way) and each status at most [`STATUS_BYTES_MAX`]
//! (a larger one is not kept).

use std::collections::HashMap;
use std::sync::Mutex;

/// The subject kind of status facts (category `status`).
pub const STATUS_KIND: &str = "status";
/// Most origin zones whose last status is kept.
pub const ZONES_MAX: usize = 256;
/// Largest status object kept (the node's own are far smaller).
pub const STATUS_BYTES_MAX: usize = 16 * 1024;
/// A zone is stale when its last status is older than this many intervals.
pub const STALE_INTERVALS: i64 = 3;

/// One zone's last status.
#[derive(Debug, Clone, PartialEq)]
pub struct LastStatus {
    pub zone: String,
    /// When the zone produced it (its clock).
    pub produced_unix_ms: i64,
    /// The interval the zone sends statuses at, carried in the fact.
    pub interval_ms: i64,
    /// The status object as the zone wrote it.
    pub object: serde_json::Value,
}

impl LastStatus {
    /// Reads a status fact's object; None if it is too large or lacks its
    /// produced time or interval.
    pub fn parse(zone: &str, object_json: &str) -> Option<Self> {
        if object_json.len() > STATUS_BYTES_MAX {
            return None;
        }
        let object: serde_json::Value = serde_json::from_str(object_json).ok()?;
        let produced_unix_ms = object.get("produced_unix_ms")?.as_i64()?;
        let interval_ms = object.get("interval_ms")?.as_i64()?.max(1);
        Some(Self {
            zone: zone.to_string(),
            produced_unix_ms,
            interval_ms,
            object,
        })
    }

    /// How old it is at `now_unix_ms` (never negative).
    pub fn age_ms(&self, now_unix_ms: i64) -> i64 {
        (now_unix_ms - self.produced_unix_ms).max(0)
    }

    /// Since when the zone is stale: its last status plus
    /// [`STALE_INTERVALS`] intervals.
    pub fn stale_since_unix_ms(&self) -> i64 {
        self.produced_unix_ms + STALE_INTERVALS * self.interval_ms
    }

    /// Whether no newer status came within [`STALE_INTERVALS`] intervals.
    pub fn is_stale(&self, now_unix_ms: i64) -> bool {
        now_unix_ms > self.stale_since_unix_ms()
    }
}

/// The last status per origin zone (bounded, see the module doc).
#[derive(Default)]
pub struct LastStatuses {
    by_zone: Mutex<HashMap<String, LastStatus>>,
}

impl LastStatuses {
    /// Keeps `status` if it is newer than the zone's last one.
    pub fn record(&self, status: LastStatus) {
        let mut by_zone = self.by_zone.lock().unwrap();
        if let Some(last) = by_zone.get(&status.zone) {
            if last.produced_unix_ms >= status.produced_unix_ms {
                return;
            }
        } else if by_zone.len() >= ZONES_MAX {
            let oldest = by_zone
                .values()
                .min_by_key(|s| s.produced_unix_ms)
                .map(|s| s.zone.clone());
            if let Some(oldest) = oldest {
                by_zone.remove(&oldest);
            }
        }
        by_zone.insert(status.zone.clone(), status);
    }

    /// The last status of every zone, by zone name.
    pub fn all(&self) -> Vec<LastStatus> {
        let mut all: Vec<LastStatus> = self.by_zone.lock().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.zone.cmp(&b.zone));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(zone: &str, produced: i64) -> LastStatus {
        let json = format!(r#"{{"produced_unix_ms":{produced},"interval_ms":1000}}"#);
        LastStatus::parse(zone, &json).unwrap()
    }

    #[test]
    fn keeps_the_newest_status_per_zone() {
        let s = LastStatuses::default();
        s.record(status("a", 2000));
        s.record(status("a", 1000));
        s.record(status("b", 500));
        let all = s.all();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].zone.as_str(), all[0].produced_unix_ms), ("a", 2000));
        s.record(status("a", 3000));
        assert_eq!(s.all()[0].produced_unix_ms, 3000);
    }

    #[test]
    fn keeps_at_most_zones_max_and_drops_the_least_recent() {
        let s = LastStatuses::default();
        for i in 0..ZONES_MAX as i64 + 10 {
            s.record(status(&format!("z{i}"), 1000 + i));
        }
        let all = s.all();
        assert_eq!(all.len(), ZONES_MAX);
        assert!(all.iter().all(|x| x.produced_unix_ms >= 1010));
    }

    #[test]
    fn stale_after_three_intervals() {
        let last = status("a", 10_000);
        assert_eq!(last.stale_since_unix_ms(), 13_000);
        assert!(!last.is_stale(13_000));
        assert!(last.is_stale(13_001));
        assert_eq!(last.age_ms(9_000), 0);
        assert_eq!(last.age_ms(12_500), 2_500);
    }

    #[test]
    fn refuses_oversized_or_incomplete_objects() {
        assert!(LastStatus::parse("a", r#"{"interval_ms":1000}"#).is_none());
        assert!(LastStatus::parse("a", "not json").is_none());
        let big = format!(
            r#"{{"produced_unix_ms":1,"interval_ms":1,"pad":"{}"}}"#,
            "x".repeat(STATUS_BYTES_MAX)
        );
        assert!(LastStatus::parse("a", &big).is_none());
    }
}
