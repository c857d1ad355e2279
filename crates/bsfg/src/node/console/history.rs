//! The console's chart data: per link, lag and backlog sampled at a fixed
//! interval, kept in memory for a fixed span. Why in memory and bounded: the
//! console must draw the last hour without a metrics server, and the node's
//! memory must not grow with time or load. Each link gets one ring of
//! [`SAMPLES_PER_LINK`] samples; the links are the configured ones, so the
//! whole history is at most links × [`SAMPLES_PER_LINK`] samples.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How often each link is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// How far back the charts reach.
pub const SPAN: Duration = Duration::from_secs(60 * 60);
/// Samples kept per link: [`SPAN`] / [`SAMPLE_INTERVAL`] (360).
pub const SAMPLES_PER_LINK: usize = (SPAN.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;

/// One link's state at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Wall-clock time of the sample (Unix milliseconds).
    pub unix_ms: i64,
    pub lag_seconds: f64,
    pub backlog: u64,
}

/// The rings, one per configured link.
pub struct History {
    rings: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Empty rings for `peers`, each allocated once at its full size.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> History {
        let rings = peers
            .into_iter()
            .map(|p| (p.to_string(), VecDeque::with_capacity(SAMPLES_PER_LINK)))
            .collect();
        History { rings }
    }

    /// Adds a sample to `peer`'s ring, dropping its oldest when full. A peer
    /// without a ring (not configured) is ignored: the rings never multiply.
    pub fn record(&mut self, peer: &str, sample: Sample) {
        if let Some(ring) = self.rings.get_mut(peer) {
            if ring.len() == SAMPLES_PER_LINK {
                ring.pop_front();
            }
            ring.push_back(sample);
        }
    }

    /// `peer`'s samples, oldest first (empty for an unknown peer).
    pub fn samples(&self, peer: &str) -> impl Iterator<Item = &Sample> {
        self.rings.get(peer).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: usize) -> Sample {
        Sample {
            unix_ms: i as i64 * 10_000,
            lag_seconds: i as f64,
            backlog: i as u64,
        }
    }

    #[test]
    fn a_ring_keeps_the_last_hour_and_no_more() {
        assert_eq!(SAMPLES_PER_LINK, 360);
        let mut h = History::new(["enterprise"]);
        for i in 0..3 * SAMPLES_PER_LINK {
            h.record("enterprise", sample(i));
        }
        let kept: Vec<_> = h.samples("enterprise").copied().collect();
        assert_eq!(kept.len(), SAMPLES_PER_LINK);
        assert_eq!(kept[0], sample(2 * SAMPLES_PER_LINK));
        assert_eq!(kept[SAMPLES_PER_LINK - 1], sample(3 * SAMPLES_PER_LINK - 1));
        assert!(h.rings["enterprise"].capacity() < 2 * SAMPLES_PER_LINK);
    }

    #[test]
    fn an_unconfigured_peer_gets_no_ring() {
        let mut h = History::new(["enterprise"]);
        h.record("elsewhere", sample(1));
        assert_eq!(h.samples("elsewhere").count(), 0);
        assert_eq!(h.rings.len(), 1);
    }
}
