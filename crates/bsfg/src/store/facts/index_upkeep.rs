//! The key index's background work: the start-up catch-up (and the
//! rebuild of a damaged index), then once per tick retention pruning, gap
//! filling and the index's metrics.

use super::{Category, FactLog, MSG_ID_HEADER};
use crate::metrics::labels;
use crate::store::key_index::{WriterStats, token_bytes};
use futures::TryStreamExt as _;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

/// Facts read into the key index per write transaction (catch-up, gaps).
const READ_IN_CHUNK_FACTS: usize = 4096;

impl FactLog {
    /// A page of the key index failed its check while running: appends
    /// wait (they are answered `key_index_catching_up` after a while) while
    /// the index starts over, empty; the caller then reads every stream in
    /// again, as at start-up.
    async fn rebuild_index(&self) -> anyhow::Result<()> {
        tracing::error!(
            "a key index page is damaged (disk error, or the file was written by something else); \
             rebuilding the index from the streams, appends wait until it is done"
        );
        self.metrics.key_index_ready.set(0);
        self.metrics.key_index_rebuilds_total.inc();
        let _no_batches = self.index_epoch.write().await;
        self.index_ready.send_replace(false);
        self.blocking(|index| index.rebuild()).await
    }

    /// Start-up: makes one category's key index match its stream (a
    /// recreated stream empties it; a lost stream tail or retention drops
    /// entries) and reads in every fact after the covered prefix. Returns
    /// the facts read in and the stream's last offset.
    async fn catch_up(&self, c: &Category) -> anyhow::Result<(u64, u64)> {
        let name = c.config.name.clone();
        let mut stream = c.stream.clone();
        let info = stream.info().await?.clone();
        let identity = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        let stored = self
            .blocking({
                let name = name.clone();
                move |index| index.stream_identity(&name)
            })
            .await?;
        if stored != Some(identity) {
            if stored.is_some() {
                tracing::warn!(
                    category = name,
                    "the category's stream was recreated; rebuilding its key index from it"
                );
            }
            let name = name.clone();
            self.blocking(move |index| index.reset(&name, identity))
                .await?;
        }
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let lost = self
            .blocking({
                let name = name.clone();
                move |index| index.forget_after(&name, last)
            })
            .await?;
        if lost > 0 {
            tracing::warn!(
                category = name,
                lost,
                last,
                "key index coverage above the stream's last offset dropped (the stream lost its \
                 tail); those offsets are read in again"
            );
        }
        self.blocking({
            let name = name.clone();
            move |index| index.forget_below(&name, first)
        })
        .await?;
        let from = self.index.through(&name) + 1;
        Ok((self.read_in(c, from, last).await?, last))
    }

    /// Maintenance for one category, once per tick: drops entries below the
    /// stream's first offset (retention) and reads in offsets that stayed
    /// unindexed for a whole tick (a lost acknowledgement, a write not made
    /// by this node). `seen_last` is the stream's last offset at the
    /// previous tick: anything at or below it had a tick to be indexed.
    async fn maintain(&self, c: &Category, seen_last: &mut u64) -> anyhow::Result<()> {
        let name = c.config.name.clone();
        let mut stream = c.stream.clone();
        let state = stream.info().await?.state.clone();
        let first = state.first_sequence;
        self.blocking({
            let name = name.clone();
            move |index| index.forget_below(&name, first)
        })
        .await?;
        let target = (*seen_last).min(state.last_sequence);
        let through = self.index.through(&name);
        if through < target {
            let last = self
                .index
                .first_gap(&name)
                .map_or(target, |(_, gap_last)| gap_last.min(target));
            self.read_in(c, through + 1, last).await?;
        }
        *seen_last = state.last_sequence;
        self.metrics
            .key_index_through_offset
            .get_or_create(&labels(&[("category", name.as_str())]))
            .set(self.index.through(&name) as i64);
        Ok(())
    }

    /// Reads the stored facts at offsets `first..=last` into the key index,
    /// with an ordered consumer that delivers headers only, in bounded
    /// chunks (memory does not grow with the backlog).
    async fn read_in(&self, c: &Category, first: u64, last: u64) -> anyhow::Result<u64> {
        if first > last {
            return Ok(0);
        }
        let name = c.config.name.clone();
        let mut messages = scan_from(c, first).await?;
        let (mut read, mut chunk_first, mut chunk) =
            (0u64, first, Vec::with_capacity(READ_IN_CHUNK_FACTS));
        // The highest offset taken so far. The ordered consumer can start
        // over below `first` (async-nats recreates it from offset 1 when it
        // is reset before its first delivery, seen on a replicated stream):
        // what it delivers at or below this offset is skipped.
        let mut taken_through = first - 1;
        let mut done = false;
        while !done {
            let next = tokio::time::timeout(Duration::from_secs(30), messages.try_next()).await;
            let message =
                next.map_err(|_| anyhow::anyhow!("no stored fact delivered within 30 s"))??;
            // No message at all: nothing is stored from `first` on any more.
            let mut chunk_last = last;
            if let Some(message) = message {
                let info = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("scan message without JetStream metadata: {e}"))?;
                if info.stream_sequence <= taken_through {
                    continue;
                }
                taken_through = info.stream_sequence;
                let offset = info.stream_sequence.min(last);
                if info.stream_sequence <= last {
                    match message_token(&message) {
                        Some(token) => chunk.push((c.position, token, offset)),
                        None => tracing::warn!(
                            category = name,
                            offset,
                            "stored fact without a key token header; not indexed"
                        ),
                    }
                }
                done = info.stream_sequence >= last || info.pending == 0;
                chunk_last = if done { last } else { offset };
            } else {
                done = true;
            }
            if done || chunk.len() >= READ_IN_CHUNK_FACTS {
                assert!(chunk_first <= chunk_last, "a chunk covers offsets in order");
                read += chunk.len() as u64;
                let entries = std::mem::take(&mut chunk);
                let covered = [(c.position, chunk_first, chunk_last)];
                self.blocking(move |index| index.record(&entries, &covered))
                    .await?;
                chunk_first = chunk_last + 1;
            }
        }
        if read > 0 {
            self.report_read_in(&name, read, first, last);
        }
        Ok(read)
    }

    /// Counts and logs the `read` facts `read_in` read into the key index.
    fn report_read_in(&self, name: &str, read: u64, first: u64, last: u64) {
        self.metrics
            .key_index_read_in_facts_total
            .get_or_create(&labels(&[("category", name)]))
            .inc_by(read);
        tracing::info!(
            category = name,
            read,
            first,
            last,
            "stored facts read into the key index"
        );
    }
}

/// An ordered, headers-only scan of `c`'s stream from offset `first`.
async fn scan_from(
    c: &Category,
    first: u64,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
    use async_nats::jetstream::consumer;
    let scan = c
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("facts.{}.>", c.config.name),
            headers_only: true,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    Ok(scan.messages().await?)
}

/// The key token a stored fact carries in its message-id header.
fn message_token(
    message: &async_nats::jetstream::Message,
) -> Option<crate::store::key_index::Token> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(MSG_ID_HEADER))
        .and_then(|v| token_bytes(v.as_str()))
}

/// The key index's background work: the start-up catch-up (retried with
/// backoff; appends wait for it), then every `tick` retention pruning, gap
/// filling and the index's metrics. Ends when the log is dropped.
pub(super) async fn maintain_index(log: Weak<FactLog>, tick: Duration) {
    let mut seen_last: HashMap<String, u64> = HashMap::new();
    if !catch_up_index(&log, &mut seen_last).await {
        return;
    }
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = WriterStats::default();
    loop {
        ticker.tick().await;
        let Some(strong) = log.upgrade() else { return };
        if strong.index.is_damaged() {
            drop(strong);
            if !catch_up_index(&log, &mut seen_last).await {
                return;
            }
            continue;
        }
        let log = strong;
        let stats = log.index_writer.stats();
        log.metrics
            .key_index_recorded_facts_total
            .inc_by(stats.recorded_entries - published.recorded_entries);
        log.metrics
            .key_index_write_seconds_total
            .inc_by(stats.record_seconds - published.record_seconds);
        log.metrics
            .key_index_staged_facts
            .set(stats.staged_entries as i64);
        let size = log.index.size();
        log.metrics.key_index_entries.set(size.entries as i64);
        log.metrics.key_index_file_bytes.set(size.file_bytes as i64);
        log.metrics
            .key_index_buffered_facts
            .set(size.buffered as i64);
        published = stats;
        for c in log.categories.values() {
            let seen = seen_last.entry(c.config.name.clone()).or_insert(0);
            if let Err(e) = log.maintain(c, seen).await {
                tracing::warn!(
                    category = c.config.name,
                    error = %e,
                    "key index maintenance failed; will retry"
                );
            }
        }
    }
}

/// Makes the key index hold every stored fact (at start-up, and after a
/// rebuild of a damaged index), retrying with backoff; then accepts
/// appends. False if the log was dropped meanwhile.
async fn catch_up_index(log: &Weak<FactLog>, seen_last: &mut HashMap<String, u64>) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        let Some(log) = log.upgrade() else {
            return false;
        };
        let caught_up = async {
            if log.index.is_damaged() {
                log.rebuild_index().await?;
            }
            let mut read = 0;
            for c in log.categories.values() {
                let (n, last) = log.catch_up(c).await?;
                read += n;
                seen_last.insert(c.config.name.clone(), last);
            }
            log.blocking(|index| index.sync()).await?;
            anyhow::Ok(read)
        };
        match caught_up.await {
            Ok(read) => {
                log.index_ready.send_replace(true);
                log.metrics.key_index_ready.set(1);
                tracing::info!(
                    read,
                    "key index caught up with the stored facts; appends accepted"
                );
                return true;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "key index catch-up failed; appends wait"
                )
            }
        }
        drop(log);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
