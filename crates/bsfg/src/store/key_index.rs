//! The idempotency key index: key token -> (category, offset), in an
//! embedded redb file beside the zone's JetStream store.
//!
//! Why a file and not JetStream: a subject per fact made JetStream refuse
//! a second fact per key atomically, but nats-server keeps state for every
//! subject, so its memory and its stream-state file grew with the retained
//! facts (1.5 GiB RSS, a 47 MiB state file rewritten under the stream lock
//! with one-second stalls; see docs/key-index.md). Facts now go to one
//! subject per kind, and this index answers "is this key stored, and
//! where?" from disk, with a bounded cache.
//!
//! Why it cannot lose a key: it is a *derived* view of the streams, never a
//! second source of truth. JetStream stores the fact first; the index is
//! written after the acknowledgement. Each write also persists the offset
//! through which it covers its category contiguously
//! (`bsfg_domain::indexed_runs`), so after any crash the node re-reads the
//! facts after that offset (headers only) before it accepts an append, and
//! a fact whose acknowledgement was lost is read in by the gap filler. A
//! hit is always checked against the stored fact (its key and content), so
//! an entry that outlived its fact (retention, a recreated stream) is
//! dropped rather than trusted. The file can be deleted; the node rebuilds
//! it from the streams.
//!
//! Why not fsync every write: nothing is lost if the file lags, only
//! re-read. Batches commit without fsync; a maintenance tick commits
//! durably about once a second.
//!
//! redb locks the file, so a second node started on the same zone store
//! fails at start-up instead of writing beside the first.

use bsfg_domain::indexed_runs::IndexedRuns;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A key token (`bsfg_domain::identity::key_token`) as 16 raw bytes.
pub type Token = [u8; 16];

/// Parses a key token's hex form.
pub fn token_bytes(hex_token: &str) -> Option<Token> {
    let mut token = [0u8; 16];
    hex::decode_to_slice(hex_token, &mut token).ok()?;
    Some(token)
}

/// Another node (process) holds the index file.
#[derive(Debug, thiserror::Error)]
#[error("the key index {0} is in use: is another bsfg node running on this zone's store?")]
pub struct AlreadyOpen(pub std::path::PathBuf);

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Entries removed per write transaction when pruning (bounds its memory).
const PRUNE_CHUNK_MAX: usize = 8192;

fn keys_table(category: &str) -> String {
    format!("keys.{category}")
}
fn offsets_table(category: &str) -> String {
    format!("offsets.{category}")
}
fn through_key(category: &str) -> String {
    format!("{category}.through")
}
fn identity_key(category: &str) -> String {
    format!("{category}.stream_created_ns")
}

pub struct KeyIndex {
    db: Database,
    /// Categories in a fixed order; look-ups answer with an index into it.
    categories: Vec<String>,
    /// What each category's entries cover. Only changed inside a write
    /// transaction (redb runs one at a time), after it committed.
    runs: Mutex<HashMap<String, IndexedRuns>>,
}

impl KeyIndex {
    /// Opens (or creates) the index file with a fixed page cache.
    pub fn open(path: &Path, cache_bytes: usize, categories: &[String]) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = match Database::builder().set_cache_size(cache_bytes).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(AlreadyOpen(path.to_path_buf()).into()),
            Err(e) => anyhow::bail!("opening the key index {}: {e}", path.display()),
        };
        let mut runs = HashMap::new();
        let txn = db.begin_write()?;
        {
            let meta = txn.open_table(META)?;
            for c in categories {
                txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(c)))?;
                txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(c)))?;
                let through = meta.get(through_key(c).as_str())?.map(|v| v.value()).unwrap_or(0);
                runs.insert(c.clone(), IndexedRuns::new(through));
            }
        }
        txn.commit()?;
        Ok(Self { db, categories: categories.to_vec(), runs: Mutex::new(runs) })
    }

    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, IndexedRuns>> {
        self.runs.lock().expect("key index runs poisoned")
    }

    /// Every offset of `category` at or below this is indexed (or gone).
    pub fn through(&self, category: &str) -> u64 {
        self.runs()[category].through()
    }

    /// The first offsets of `category` not indexed while later ones are.
    pub fn first_gap(&self, category: &str) -> Option<(u64, u64)> {
        self.runs()[category].first_gap()
    }

    /// The stream identity (creation time) the entries of `category` were
    /// read from, if any.
    pub fn stream_identity(&self, category: &str) -> anyhow::Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(identity_key(category).as_str())?.map(|v| v.value()))
    }

    /// Drops every entry of `category` and records the stream it will be
    /// rebuilt from (the stream was recreated, or this is a new index).
    pub fn reset(&self, category: &str, stream_identity: u64) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            txn.delete_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            txn.delete_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            let mut meta = txn.open_table(META)?;
            meta.insert(through_key(category).as_str(), 0)?;
            meta.insert(identity_key(category).as_str(), stream_identity)?;
        }
        let mut runs = self.runs();
        txn.commit()?;
        runs.insert(category.to_string(), IndexedRuns::new(0));
        Ok(())
    }

    /// For each token, the category (index into `categories()`) and offset
    /// it is indexed at, if any.
    pub fn look_up(&self, tokens: &[Token]) -> anyhow::Result<Vec<Option<(usize, u64)>>> {
        let txn = self.db.begin_read()?;
        let tables = self
            .categories
            .iter()
            .map(|c| txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(c))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut found = Vec::with_capacity(tokens.len());
        for token in tokens {
            let mut hit = None;
            for (i, table) in tables.iter().enumerate() {
                if let Some(offset) = table.get(token)? {
                    hit = Some((i, offset.value()));
                    break;
                }
            }
            found.push(hit);
        }
        Ok(found)
    }

    fn position(&self, category: &str) -> usize {
        self.categories.iter().position(|c| c == category).expect("a configured category")
    }

    /// Records stored facts, `(category position, token, offset)`, and marks
    /// `covered` ranges `(category position, first, last)` as read, whether
    /// or not they held a key, in one transaction. Not fsynced: see the
    /// module docs.
    pub fn record(&self, entries: &[(usize, Token, u64)], covered: &[(usize, u64, u64)]) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut touched: Vec<usize> = entries.iter().map(|(p, _, _)| *p).chain(covered.iter().map(|(p, _, _)| *p)).collect();
        touched.sort_unstable();
        touched.dedup();
        for &position in &touched {
            let category = &self.categories[position];
            let mut keys = txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            let mut offsets = txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            for (_, token, offset) in entries.iter().filter(|(p, _, _)| *p == position) {
                keys.insert(token, offset)?;
                offsets.insert(offset, token)?;
            }
        }
        self.commit_coverage(txn, &touched, |position, runs| {
            for (_, _, offset) in entries.iter().filter(|(p, _, _)| *p == position) {
                runs.cover(*offset, *offset);
            }
            for (_, first, last) in covered.iter().filter(|(p, _, _)| *p == position) {
                runs.cover(*first, *last);
            }
        })
    }

    /// Writes the new covered prefix of each category in `positions` into
    /// `txn`, commits, and only then adopts the new coverage in memory.
    fn commit_coverage(&self, txn: redb::WriteTransaction, positions: &[usize], mut change: impl FnMut(usize, &mut IndexedRuns)) -> anyhow::Result<()> {
        // Write transactions are serial, so holding the lock across the
        // commit cannot deadlock and keeps memory in commit order.
        let mut all = self.runs();
        let mut changed = Vec::with_capacity(positions.len());
        {
            let mut meta = txn.open_table(META)?;
            for &position in positions {
                let category = &self.categories[position];
                let mut runs = all[category].clone();
                change(position, &mut runs);
                meta.insert(through_key(category).as_str(), runs.through())?;
                changed.push((category.clone(), runs));
            }
        }
        txn.commit()?;
        all.extend(changed);
        Ok(())
    }

    /// Removes one entry that no longer matches its fact.
    pub fn forget(&self, category: &str, token: &Token, offset: u64) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut keys = txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            if keys.get(token)?.is_some_and(|o| o.value() == offset) {
                keys.remove(token)?;
            }
            let mut offsets = txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            offsets.remove(offset)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes the entries of offsets below `first_offset` (the stream no
    /// longer holds them). Returns how many were removed.
    pub fn forget_below(&self, category: &str, first_offset: u64) -> anyhow::Result<u64> {
        let removed = self.remove_offsets(category, ..first_offset)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        self.commit_coverage(txn, &[self.position(category)], |_, runs| runs.forget_below(first_offset))?;
        Ok(removed)
    }

    /// Removes the entries of offsets after `last_offset` (the stream lost
    /// its tail, e.g. nats-server restarted without syncing).
    pub fn forget_after(&self, category: &str, last_offset: u64) -> anyhow::Result<u64> {
        let removed = self.remove_offsets(category, last_offset + 1..)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        self.commit_coverage(txn, &[self.position(category)], |_, runs| {
            runs.truncate_after(last_offset);
        })?;
        Ok(removed)
    }

    /// Removes the entries whose offsets are in `range`, at most
    /// `PRUNE_CHUNK_MAX` per transaction (bounds its memory).
    fn remove_offsets(&self, category: &str, range: impl std::ops::RangeBounds<u64> + Clone) -> anyhow::Result<u64> {
        let mut removed = 0;
        loop {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let chunk = {
                let mut offsets = txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
                let mut keys = txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
                let doomed: Vec<(u64, Token)> = offsets
                    .range(range.clone())?
                    .take(PRUNE_CHUNK_MAX)
                    .map(|e| e.map(|(o, t)| (o.value(), t.value())))
                    .collect::<Result<_, _>>()?;
                for (offset, token) in &doomed {
                    offsets.remove(offset)?;
                    if keys.get(token)?.is_some_and(|o| o.value() == *offset) {
                        keys.remove(token)?;
                    }
                }
                doomed.len()
            };
            txn.commit()?;
            removed += chunk as u64;
            if chunk < PRUNE_CHUNK_MAX {
                return Ok(removed);
            }
        }
    }

    /// Makes every earlier commit durable (one fsync).
    pub fn sync(&self) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }
}

/// Facts staged per write transaction of the writer thread.
const WRITE_BATCH_MAX: usize = 8192;

/// A small batch waits this long after the previous commit to grow.
const WRITE_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Facts acknowledged by JetStream and not yet in the file. Why: a write
/// transaction per AppendFact batch put redb's commit (and, once a second,
/// its fsync) on every append's path, and stalled appends behind the fsync.
/// The append path now stages its entries in memory (microseconds, still
/// under its key guard, so a concurrent append of the same key sees them)
/// and one writer thread commits whatever has been staged, in batches, and
/// makes the file durable every `sync_interval`. Look-ups consult the
/// staged entries first, then the file; an entry leaves the stage only
/// after its commit, so no key is ever in neither. The stage is bounded
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
    /// The writer's last error while it cannot commit, for refusals.
    failure: Mutex<Option<String>>,
    /// Entries committed to the file, and the wall time the writer spent
    /// in those commits: their ratio is what the index costs per fact,
    /// which grows with the index (BENCHMARKS.md, "The key index as it
    /// grows"), so operators see it.
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
        Self { shared, thread: Some(thread), staged_facts_max: staged_facts_max.max(1) }
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
        tokens.iter().map(|t| staged.by_token.get(t).copied()).collect()
    }

    /// Stages stored facts, `(category position, token, offset)`. Waits up
    /// to `wait` for room on the stage; `Err` says why there is none.
    pub async fn stage(&self, entries: &[(usize, Token, u64)], wait: Duration) -> Result<(), String> {
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
                if staged.queue.is_empty() || staged.queue.len() + entries.len() <= self.staged_facts_max {
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
                return Err(failure.unwrap_or_else(|| format!("{} facts wait to be written to the key index", self.staged_facts_max)));
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
    let mut last_commit = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let batch: Vec<(usize, Token, u64)> = {
            let mut staged = shared.staged.lock().expect("key index stage poisoned");
            if staged.queue.is_empty() && !stopping {
                let until_sync = sync_interval.saturating_sub(last_sync.elapsed()).max(Duration::from_millis(1));
                staged = shared.wake.wait_timeout(staged, until_sync).expect("key index stage poisoned").0;
            }
            // Half of a commit's cost is fixed (roots, header, checksums):
            // let a small batch grow for a few milliseconds. Nobody waits
            // for it; look-ups see the stage.
            let grow_until = last_commit + WRITE_INTERVAL_MIN;
            while !shared.stop.load(Ordering::Acquire) && !staged.queue.is_empty() && staged.queue.len() < WRITE_BATCH_MAX / 2 {
                let Some(left) = grow_until.checked_duration_since(Instant::now()) else { break };
                staged = shared.wake.wait_timeout(staged, left).expect("key index stage poisoned").0;
            }
            staged.queue.iter().take(WRITE_BATCH_MAX).copied().collect()
        };
        last_commit = Instant::now();
        if !batch.is_empty() {
            match index.record(&batch, &[]) {
                Ok(()) => {
                    shared.record_nanos.fetch_add(last_commit.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    shared.recorded_entries.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    let mut staged = shared.staged.lock().expect("key index stage poisoned");
                    for (position, token, offset) in &batch {
                        let front = staged.queue.pop_front();
                        debug_assert_eq!(front, Some((*position, *token, *offset)), "only the writer takes from the stage");
                        if staged.by_token.get(token) == Some(&(*position, *offset)) {
                            staged.by_token.remove(token);
                        }
                    }
                    drop(staged);
                    *shared.failure.lock().expect("failure lock") = None;
                    shared.room.notify_waiters();
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::error!(error = %e, staged = batch.len(), retry_in_ms = backoff.as_millis() as u64, "writing the key index failed; appends wait for it");
                    *shared.failure.lock().expect("failure lock") = Some(format!("writing the key index failed: {e}"));
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
            if let Err(e) = index.sync() {
                tracing::warn!(error = %e, "making the key index durable failed; will retry");
            }
            last_sync = Instant::now();
        }
        if stopping && batch.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u8) -> Token {
        [n; 16]
    }

    fn open(dir: &Path) -> KeyIndex {
        KeyIndex::open(&dir.join("keys.redb"), 1 << 20, &["ops".into(), "audit".into()]).unwrap()
    }

    #[test]
    fn entries_and_coverage_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1), (0, token(2), 2)], &[]).unwrap();
        index.record(&[(1, token(3), 1)], &[]).unwrap();
        index.record(&[(0, token(5), 5)], &[(0, 3, 4)]).unwrap();
        index.sync().unwrap();
        drop(index);
        let index = open(dir.path());
        assert_eq!(index.look_up(&[token(1), token(3), token(5), token(9)]).unwrap(), vec![Some((0, 1)), Some((1, 1)), Some((0, 5)), None]);
        assert_eq!((index.through("ops"), index.through("audit")), (5, 1));
    }

    #[test]
    fn a_gap_holds_the_persisted_prefix_back() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1), (0, token(4), 4)], &[]).unwrap();
        assert_eq!((index.through("ops"), index.first_gap("ops")), (1, Some((2, 3))));
        index.sync().unwrap();
        drop(index);
        assert_eq!(open(dir.path()).through("ops"), 1, "a restart re-reads from the gap");
    }

    #[test]
    fn pruning_removes_entries_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let entries: Vec<(usize, Token, u64)> = (1..=10).map(|n| (0, token(n), u64::from(n))).collect();
        index.record(&entries, &[]).unwrap();
        assert_eq!(index.forget_below("ops", 4).unwrap(), 3);
        assert_eq!(index.forget_after("ops", 8).unwrap(), 2);
        let found = index.look_up(&entries.iter().map(|(_, t, _)| *t).collect::<Vec<_>>()).unwrap();
        let kept: Vec<u64> = found.iter().flatten().map(|(_, o)| *o).collect();
        assert_eq!(kept, vec![4, 5, 6, 7, 8]);
        assert_eq!(index.through("ops"), 8);
        index.forget("ops", &token(5), 5).unwrap();
        assert_eq!(index.look_up(&[token(5)]).unwrap(), vec![None]);
    }

    #[test]
    fn reset_empties_one_category() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        index.record(&[(1, token(2), 1)], &[]).unwrap();
        index.reset("ops", 42).unwrap();
        assert_eq!(index.look_up(&[token(1), token(2)]).unwrap(), vec![None, Some((1, 1))]);
        assert_eq!((index.through("ops"), index.stream_identity("ops").unwrap()), (0, Some(42)));
    }

    #[tokio::test]
    async fn staged_entries_are_found_at_once_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(open(dir.path()));
        let writer = IndexWriter::start(index.clone(), Duration::from_millis(20), 1024);
        writer.stage(&[(0, token(1), 1), (0, token(2), 2)], Duration::from_secs(1)).await.unwrap();
        writer.stage(&[(1, token(3), 1)], Duration::from_secs(1)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while index.through("ops") < 2 || index.through("audit") < 1 {
            assert!(Instant::now() < deadline, "the writer commits staged entries");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(writer.look_up_staged(&[token(1), token(3)]), vec![None, None], "committed entries leave the stage");
        assert_eq!(index.look_up(&[token(1), token(2), token(3)]).unwrap(), vec![Some((0, 1)), Some((0, 2)), Some((1, 1))]);
        let stats = writer.stats();
        assert_eq!((stats.recorded_entries, stats.staged_entries), (3, 0), "the writer counts what it committed: {stats:?}");
        assert!(stats.record_seconds > 0.0, "and the time its commits took: {stats:?}");
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
        // A write transaction held here keeps the writer from committing
        // (a stuck disk); two staged facts fill the stage.
        let txn = index.db.begin_write().unwrap();
        writer.stage(&[(0, token(1), 1), (0, token(2), 2)], Duration::from_millis(100)).await.unwrap();
        let refused = writer.stage(&[(0, token(9), 9)], Duration::from_millis(100)).await;
        assert!(refused.is_err(), "no room while the writer cannot commit");
        drop(txn);
    }
}
