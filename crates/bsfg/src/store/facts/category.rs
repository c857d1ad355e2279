//! A category's stream: its name, its configuration (every option
//! explicit), the subjects its facts are stored under, whether it takes
//! atomic batches, and its fill accounting (what `refuse_if_full` compares
//! with the threshold).

use crate::config::CategoryConfig;
use async_nats::jetstream::stream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One category's stream and its fill accounting.
pub struct Category {
    pub config: CategoryConfig,
    pub stream: stream::Stream,
    /// Position in the configured categories (the key index's numbering).
    pub(super) position: usize,
    pub(super) fill: FillAccount,
    /// Whether batches may be committed to the stream as JetStream atomic
    /// batches: it was configured with `allow_atomic` and nats-server kept
    /// it (2.12 or later). Cleared, and logged once, when a commit shows the
    /// stream does not take them after all.
    pub(super) atomic: AtomicBool,
    /// Where this node expects the stream to end (`fence`).
    pub(super) fence: std::sync::Arc<super::fence::Fence>,
}

/// A category's stored bytes, for the fill threshold: the stream's bytes as
/// JetStream last reported them, plus the bytes this node appended since
/// that report was requested. Why not one counter overwritten by each
/// report: a report requested before some appends were acknowledged and
/// applied after them overwrote their bytes, and the fill read low until
/// the next report, letting appends through above the threshold (seen as a
/// capacity test failing under load).
pub(super) struct FillAccount {
    /// (reported bytes, `appended` when that report was requested)
    reported: std::sync::Mutex<(u64, u64)>,
    /// Bytes of the facts this node appended (monotonic).
    appended: AtomicU64,
}

impl FillAccount {
    pub(super) fn new(reported: u64) -> Self {
        Self {
            reported: std::sync::Mutex::new((reported, 0)),
            appended: AtomicU64::new(0),
        }
    }

    /// An append acknowledged after the report was requested but already
    /// in it is counted twice until the next report: the estimate errs
    /// toward full.
    fn bytes(&self) -> u64 {
        let (reported, appended_then) = *self.reported.lock().expect("fill accounting poisoned");
        reported
            + self
                .appended
                .load(Ordering::Acquire)
                .saturating_sub(appended_then)
    }

    pub(super) fn add_appended(&self, bytes: u64) {
        self.appended.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Read before requesting the stream's state; pass to `set_reported`.
    pub(super) fn appended_counter(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    pub(super) fn set_reported(&self, reported: u64, appended_counter_before: u64) {
        *self.reported.lock().expect("fill accounting poisoned") =
            (reported, appended_counter_before);
    }
}

impl Category {
    pub fn stream_name(&self) -> String {
        stream_name(&self.config.name)
    }
    pub fn fill_percent(&self) -> f64 {
        self.fill.bytes() as f64 * 100.0 / self.config.capacity_bytes as f64
    }
    /// The stream's state, fetched from JetStream; its bytes become the
    /// base of the fill estimate.
    pub async fn report_state(&self) -> anyhow::Result<stream::State> {
        let mut stream = self.stream.clone();
        let appended_before = self.fill.appended_counter();
        let state = stream.info().await?.state.clone();
        self.fill.set_reported(state.bytes, appended_before);
        Ok(state)
    }
    pub(super) fn is_full(&self) -> bool {
        self.fill_percent() >= f64::from(self.config.fill_threshold_percent)
    }
    pub(super) fn takes_atomic(&self) -> bool {
        self.atomic.load(Ordering::Relaxed)
    }
    /// Stops committing atomic batches to this stream (its batches go
    /// pipelined from now on); logs why the first time.
    pub(super) fn stop_atomic(&self, why: &str) {
        if self.atomic.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                category = %self.config.name,
                why,
                "atomic batches are off for this category; its batches are published pipelined"
            );
        }
    }
}

pub fn stream_name(category: &str) -> String {
    format!("facts_{category}")
}

/// The JetStream stream of a category, every option explicit; `replicas`
/// is `[nats] replicas`.
pub fn stream_config(
    zone: &str,
    fact_bytes_max: usize,
    replicas: usize,
    c: &CategoryConfig,
) -> stream::Config {
    stream::Config {
        name: stream_name(&c.name),
        description: Some(format!("BSFG zone {zone} category {}", c.name)),
        subjects: vec![format!("facts.{}.>", c.name)],
        retention: stream::RetentionPolicy::Limits,
        // Hard stop; the node refuses earlier, at the fill threshold.
        max_bytes: c.capacity_bytes as i64,
        max_messages: -1,
        max_messages_per_subject: -1,
        // Age and confirmed-prefix truncation is done by the node's
        // retention task: JetStream's max_age would ignore consumers.
        max_age: std::time::Duration::ZERO,
        max_message_size: (fact_bytes_max + 4096) as i32,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: false,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: c.duplicate_window,
        // Reading a fact back by offset is a direct get.
        allow_direct: true,
        // A large batch is committed as one atomic batch (`facts::atomic`).
        allow_atomic_publish: true,
        allow_rollup: false,
        deny_delete: true,
        deny_purge: false,
        max_consumers: -1,
        no_ack: false,
        ..Default::default()
    }
}

/// The subject a fact of `kind` is stored under in `category`.
pub fn fact_subject(category: &str, kind: &str) -> String {
    format!("facts.{category}.{kind}")
}

#[cfg(test)]
mod tests {
    use super::FillAccount;

    #[test]
    fn a_late_stream_report_does_not_lose_the_appends_made_meanwhile() {
        let fill = FillAccount::new(1_000);
        fill.add_appended(100);
        assert_eq!(fill.bytes(), 1_100);
        // A report is requested; two appends are acknowledged before its
        // answer (1,150 bytes: it saw the first of them) is applied.
        let before = fill.appended_counter();
        fill.add_appended(50);
        fill.add_appended(70);
        fill.set_reported(1_150, before);
        assert_eq!(
            fill.bytes(),
            1_270,
            "both appends counted on top of the report (one twice, erring toward full)"
        );
        // The next report, requested after them, is exact.
        let before = fill.appended_counter();
        fill.set_reported(1_220, before);
        assert_eq!(fill.bytes(), 1_220);
    }
}
