//! The key index's writer thread: appends stage their entries in memory
//! and one thread records them in the file in batches and makes it durable
//! periodically.

use super::{KeyIndex, Token};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Facts the writer thread records per call.
const WRITE_BATCH_MAX: usize = 8192;

/// A small batch waits this long after the previous record to grow.
const WRITE_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Facts acknowledged by JetStream and not yet in the file. Why: writing
/// the file on every append's path put its page writes (and, once a
/// second, its fsync) on the append's latency. The append path stages its
/// entries in memory (microseconds, still under its key guard, so a
/// concurrent append of the same key sees them) and one writer thread
/// records whatever has been staged, in batches, and makes the file
/// durable every `sync_interval`. Look-ups consult the staged entries
/// first, then the file; an entry leaves the stage only after it is in
/// the file, so no key is ever in neither. The stage is bounded
/// (`staged_facts_max`): when the writer falls behind (a failing disk),
/// appends wait, then are refused, rather than memory growing.
pub struct IndexWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    staged_facts_max: usize,
}

#[derive(Default)]
struct Staged {
    by_token: HashMap<Token, (usize, u64)>,
    queue: VecDeque<(usize, Token, u64)>,
}

#[derive(Default)]
struct Shared {
    staged: Mutex<Staged>,
    /// Wakes the writer when something is staged or it must stop.
    wake: Condvar,
    /// Wakes appends waiting for room on the stage.
    room: tokio::sync::Notify,
    stop: AtomicBool,
    /// The writer's last error while it cannot record, for refusals.
    failure: Mutex<Option<String>>,
    /// Entries recorded in the index, and the wall time the writer spent
    /// recording them and merging them into the file: their ratio is what
    /// the index costs per fact, so operators see it (BENCHMARKS.md, "The
    /// key index as it grows").
    recorded_entries: AtomicU64,
    record_nanos: AtomicU64,
}

/// The writer thread's counters, and how many entries wait on the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriterStats {
    pub recorded_entries: u64,
    pub record_seconds: f64,
    pub staged_entries: usize,
}

impl IndexWriter {
    pub fn start(index: Arc<KeyIndex>, sync_interval: Duration, staged_facts_max: usize) -> Self {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("bsfg-key-index".into())
                .spawn(move || write_loop(&index, &shared, sync_interval))
                .expect("spawning the key index writer")
        };
        Self {
            shared,
            thread: Some(thread),
            staged_facts_max: staged_facts_max.max(1),
        }
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            recorded_entries: self.shared.recorded_entries.load(Ordering::Relaxed),
            record_seconds: self.shared.record_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            staged_entries: self.staged().queue.len(),
        }
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.shared.staged.lock().expect("key index stage poisoned")
    }

    /// For each token, where it is staged, if it is.
    pub fn look_up_staged(&self, tokens: &[Token]) -> Vec<Option<(usize, u64)>> {
        let staged = self.staged();
        tokens
            .iter()
            .map(|t| staged.by_token.get(t).copied())
            .collect()
    }

    /// Stages stored facts, `(category position, token, offset)`. Waits up
    /// to `wait` for room on the stage; `Err` says why there is none.
    pub async fn stage(
        &self,
        entries: &[(usize, Token, u64)],
        wait: Duration,
    ) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut staged = self.staged();
                if staged.queue.is_empty()
                    || staged.queue.len() + entries.len() <= self.staged_facts_max
                {
                    for &(position, token, offset) in entries {
                        staged.by_token.insert(token, (position, offset));
                        staged.queue.push_back((position, token, offset));
                    }
                    drop(staged);
                    self.shared.wake.notify_one();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                let failure = self.shared.failure.lock().expect("failure lock").clone();
                return Err(failure.unwrap_or_else(|| {
                    format!(
                        "{} facts wait to be written to the key index",
                        self.staged_facts_max
                    )
                }));
            }
        }
    }
}

impl Drop for IndexWriter {
    /// Stops the writer after it wrote (and synced) what is staged, so the
    /// file's lock is released when the log is dropped.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(index: &KeyIndex, shared: &Shared, sync_interval: Duration) {
    let mut last_sync = Instant::now();
    let mut last_record = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let batch = next_batch(shared, stopping, sync_interval, last_sync, last_record);
        last_record = Instant::now();
        if !batch.is_empty() {
            match index.record(&batch, &[]) {
                Ok(()) => {
                    recorded(shared, &batch, last_record);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        staged = batch.len(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "writing the key index failed; appends wait for it"
                    );
                    *shared.failure.lock().expect("failure lock") =
                        Some(format!("writing the key index failed: {e}"));
                    if stopping {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if last_sync.elapsed() >= sync_interval || (stopping && batch.is_empty()) {
            sync(index, shared);
            last_sync = Instant::now();
        }
        if stopping && batch.is_empty() {
            return;
        }
    }
}

/// Waits until something is staged (or a sync is due, or the writer
/// stops), lets a small batch grow, and returns the front of the stage (at
/// most `WRITE_BATCH_MAX`; the entries stay staged until recorded).
fn next_batch(
    shared: &Shared,
    stopping: bool,
    sync_interval: Duration,
    last_sync: Instant,
    last_record: Instant,
) -> Vec<(usize, Token, u64)> {
    let mut staged = shared.staged.lock().expect("key index stage poisoned");
    if staged.queue.is_empty() && !stopping {
        let until_sync = sync_interval
            .saturating_sub(last_sync.elapsed())
            .max(Duration::from_millis(1));
        staged = shared
            .wake
            .wait_timeout(staged, until_sync)
            .expect("key index stage poisoned")
            .0;
    }
    // Let a small batch grow for a few milliseconds: fewer wake-ups
    // and lock round trips, and a bucket two facts share is written
    // once. Nobody waits for it; look-ups see the stage.
    let grow_until = last_record + WRITE_INTERVAL_MIN;
    while !shared.stop.load(Ordering::Acquire)
        && !staged.queue.is_empty()
        && staged.queue.len() < WRITE_BATCH_MAX / 2
    {
        let Some(left) = grow_until.checked_duration_since(Instant::now()) else {
            break;
        };
        staged = shared
            .wake
            .wait_timeout(staged, left)
            .expect("key index stage poisoned")
            .0;
    }
    staged.queue.iter().take(WRITE_BATCH_MAX).copied().collect()
}

/// `batch`, recorded in the index since `started`: counted, taken off the
/// stage, and the appends waiting for room woken.
fn recorded(shared: &Shared, batch: &[(usize, Token, u64)], started: Instant) {
    shared
        .record_nanos
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    shared
        .recorded_entries
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let mut staged = shared.staged.lock().expect("key index stage poisoned");
    for (position, token, offset) in batch {
        let front = staged.queue.pop_front();
        debug_assert_eq!(
            front,
            Some((*position, *token, *offset)),
            "only the writer takes from the stage"
        );
        if staged.by_token.get(token) == Some(&(*position, *offset)) {
            staged.by_token.remove(token);
        }
    }
    drop(staged);
    *shared.failure.lock().expect("failure lock") = None;
    shared.room.notify_waiters();
}

/// Merges the index's buffered entries into the file and makes it durable.
fn sync(index: &KeyIndex, shared: &Shared) {
    // A sync merges the buffered entries into the file: part of
    // what recording costs.
    let started = Instant::now();
    if let Err(e) = index.sync() {
        tracing::warn!(error = %e, "making the key index durable failed; will retry");
    }
    shared
        .record_nanos
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, token};
    use super::*;

    #[tokio::test]
    async fn staged_entries_are_found_at_once_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(open(dir.path()));
        let writer = IndexWriter::start(index.clone(), Duration::from_millis(20), 1024);
        writer
            .stage(
                &[(0, token(1), 1), (0, token(2), 2)],
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        writer
            .stage(&[(1, token(3), 1)], Duration::from_secs(1))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while index.through("ops") < 2 || index.through("audit") < 1 {
            assert!(
                Instant::now() < deadline,
                "the writer commits staged entries"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            writer.look_up_staged(&[token(1), token(3)]),
            vec![None, None],
            "committed entries leave the stage"
        );
        assert_eq!(
            index.look_up(&[token(1), token(2), token(3)]).unwrap(),
            vec![Some((0, 1)), Some((0, 2)), Some((1, 1))]
        );
        let stats = writer.stats();
        assert_eq!(
            (stats.recorded_entries, stats.staged_entries),
            (3, 0),
            "the writer counts what it committed: {stats:?}"
        );
        assert!(
            stats.record_seconds > 0.0,
            "and the time its commits took: {stats:?}"
        );
        // Dropping the writer and the index releases the file, synced.
        drop(writer);
        drop(index);
        let reopened = open(dir.path());
        assert_eq!((reopened.through("ops"), reopened.through("audit")), (2, 1));
    }

    #[tokio::test]
    async fn a_full_stage_refuses_after_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(open(dir.path()));
        let writer = IndexWriter::start(index.clone(), Duration::from_secs(1), 2);
        // The index's writer lock held here keeps the writer from recording
        // (a stuck disk); two staged facts fill the stage.
        let held = index.hold_writes();
        writer
            .stage(
                &[(0, token(1), 1), (0, token(2), 2)],
                Duration::from_millis(100),
            )
            .await
            .unwrap();
        let refused = writer
            .stage(&[(0, token(9), 9)], Duration::from_millis(100))
            .await;
        assert!(refused.is_err(), "no room while the writer cannot commit");
        drop(held);
    }
}
