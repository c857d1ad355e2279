//! The store's clock, as the node reads it.
//!
//! Facts carry the time JetStream stored them, from the nats-server's
//! clock; age-based decisions (retention, the retention alarm) compare it
//! with *the store's* now, read from JetStream itself (`ts` of a stream info
//! answer), never with this node's wall clock. So a node whose clock is off
//! neither purges young facts nor raises alarms for them; it says so:
//! `bsfg_clock_skew_seconds{against="store"}`, a WARN when the skew passes
//! `clock_skew_max`, and `bsfg status`.
//!
//! A step of the store's own clock (its machine's time set forward) would
//! still make every fact stored before it look older. The node compares how
//! far the store's clock moved between two readings with how far its
//! monotonic clock did, adds up the forward steps, and retention grants
//! facts that much more age (`forward_steps_ms`). Backward steps make facts
//! look younger: they are kept longer, the safe side. The sum lives as long
//! as the process; a node restarted after a step judges by the stored times.

use crate::metrics::{Metrics, labels};
use bsfg_domain::clock::{SkewEstimate, StepDetector};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct StoreClock {
    skew_max_ms: i64,
    started: Instant,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

struct State {
    skew: SkewEstimate,
    steps: StepDetector,
    disagreeing: bool,
}

impl StoreClock {
    pub fn new(skew_max: Duration, metrics: Arc<Metrics>) -> Self {
        let skew_max_ms = i64::try_from(skew_max.as_millis()).unwrap_or(i64::MAX);
        Self {
            skew_max_ms,
            started: Instant::now(),
            state: Mutex::new(State {
                skew: SkewEstimate::default(),
                steps: StepDetector::new(skew_max_ms),
                disagreeing: false,
            }),
            metrics,
        }
    }

    /// Reads the store's clock now (one JetStream API request about
    /// `stream_name`), records the skew and any step, and returns it.
    pub async fn now(
        &self,
        client: &async_nats::Client,
        stream_name: &str,
    ) -> anyhow::Result<time::OffsetDateTime> {
        let reply = client
            .request(
                format!("$JS.API.STREAM.INFO.{stream_name}"),
                bytes::Bytes::new(),
            )
            .await?;
        let ours_ms = now_unix_ms();
        #[derive(serde::Deserialize)]
        struct Info {
            ts: String,
        }
        let ts = serde_json::from_slice::<Info>(&reply.payload)
            .map_err(anyhow::Error::from)
            .and_then(|info| {
                let format = time::format_description::well_known::Rfc3339;
                Ok(time::OffsetDateTime::parse(&info.ts, &format)?)
            })
            .map_err(|e| {
                anyhow::anyhow!("stream info of {stream_name} carries no server time (ts): {e}")
            })?;
        let theirs_ms = i64::try_from(ts.unix_timestamp_nanos() / 1_000_000)?;
        self.observe(theirs_ms, ours_ms);
        Ok(ts)
    }

    fn observe(&self, theirs_ms: i64, ours_ms: i64) {
        let mono_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut s = self.state.lock().unwrap();
        s.skew.record(theirs_ms, ours_ms);
        if let Some(step_ms) = s.steps.observe(theirs_ms, mono_ms) {
            tracing::warn!(
                step_ms,
                forward_steps_ms = s.steps.forward_ms_total(),
                "the store's clock stepped; retention grants facts stored before a forward step that much more age"
            );
        }
        let skew_ms = s.skew.skew_ms().unwrap_or(0);
        let disagreeing = s.skew.disagrees(self.skew_max_ms);
        if disagreeing != s.disagreeing {
            s.disagreeing = disagreeing;
            if disagreeing {
                tracing::warn!(
                    skew_ms,
                    skew_max_ms = self.skew_max_ms,
                    "this node's clock disagrees with its store's (nats-server) beyond clock_skew_max: ages are judged by the store's clock; fix the time source (NTP)"
                );
            } else {
                tracing::info!(skew_ms, "this node's clock agrees with its store's again");
            }
        }
        self.metrics
            .clock_skew_seconds
            .get_or_create(&labels(&[("against", "store")]))
            .set(skew_ms as f64 / 1000.0);
    }

    /// The store's clock minus this node's, in ms (None before a reading).
    pub fn skew_ms(&self) -> Option<i64> {
        self.state.lock().unwrap().skew.skew_ms()
    }

    /// The forward steps of the store's clock seen by this process.
    pub fn forward_steps_ms(&self) -> i64 {
        self.state.lock().unwrap().steps.forward_ms_total()
    }
}

/// The node's wall clock, in milliseconds since the Unix epoch (0 before
/// it).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skew_beyond_the_maximum_is_exported_and_forward_steps_add_up() {
        let metrics = Arc::new(Metrics::new());
        let clock = StoreClock::new(Duration::from_secs(10), metrics.clone());
        clock.observe(1_000_000 + 3_600_000, 1_000_000);
        assert_eq!(clock.skew_ms(), Some(3_600_000));
        assert!(
            metrics
                .render()
                .contains("bsfg_clock_skew_seconds{against=\"store\"} 3600.0")
        );
        // The store's clock jumps an hour ahead between two readings.
        clock.observe(1_000_000 + 7_200_000, 1_000_000);
        assert_eq!(clock.forward_steps_ms(), 3_600_000);
    }
}
