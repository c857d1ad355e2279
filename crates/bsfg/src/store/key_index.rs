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
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

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

    /// Records stored facts of `category` (token, offset) and marks
    /// `covered` ranges (inclusive) as read, whether or not they held a key.
    /// Not fsynced: see the module docs.
    pub fn record(&self, category: &str, entries: &[(Token, u64)], covered: &[(u64, u64)]) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut keys = txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            let mut offsets = txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            for (token, offset) in entries {
                keys.insert(token, offset)?;
                offsets.insert(offset, token)?;
            }
        }
        self.commit_coverage(txn, category, |runs| {
            for (_, offset) in entries {
                runs.cover(*offset, *offset);
            }
            for (first, last) in covered {
                runs.cover(*first, *last);
            }
        })
    }

    /// Writes the category's new covered prefix into `txn`, commits, and
    /// only then adopts the new coverage in memory.
    fn commit_coverage(&self, txn: redb::WriteTransaction, category: &str, change: impl FnOnce(&mut IndexedRuns)) -> anyhow::Result<()> {
        // Write transactions are serial, so holding the lock across the
        // commit cannot deadlock and keeps memory in commit order.
        let mut all = self.runs();
        let mut runs = all[category].clone();
        change(&mut runs);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(through_key(category).as_str(), runs.through())?;
        }
        txn.commit()?;
        all.insert(category.to_string(), runs);
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
    /// longer holds them), a bounded chunk per transaction. Returns how
    /// many were removed.
    pub fn forget_below(&self, category: &str, first_offset: u64) -> anyhow::Result<u64> {
        let mut removed = 0;
        loop {
            let n = self.remove_offsets(category, ..first_offset)?;
            removed += n as u64;
            if n < PRUNE_CHUNK_MAX {
                break;
            }
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        self.commit_coverage(txn, category, |runs| runs.forget_below(first_offset))?;
        Ok(removed)
    }

    /// Removes the entries of offsets after `last_offset` (the stream lost
    /// its tail, e.g. nats-server restarted without syncing).
    pub fn forget_after(&self, category: &str, last_offset: u64) -> anyhow::Result<u64> {
        let mut removed = 0;
        loop {
            let n = self.remove_offsets(category, last_offset + 1..)?;
            removed += n as u64;
            if n < PRUNE_CHUNK_MAX {
                break;
            }
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        self.commit_coverage(txn, category, |runs| {
            runs.truncate_after(last_offset);
        })?;
        Ok(removed)
    }

    /// Removes up to `PRUNE_CHUNK_MAX` entries whose offsets are in `range`.
    fn remove_offsets(&self, category: &str, range: impl std::ops::RangeBounds<u64>) -> anyhow::Result<usize> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut n = 0;
        {
            let mut offsets = txn.open_table(TableDefinition::<u64, Token>::new(&offsets_table(category)))?;
            let mut keys = txn.open_table(TableDefinition::<Token, u64>::new(&keys_table(category)))?;
            let doomed: Vec<(u64, Token)> =
                offsets.range(range)?.take(PRUNE_CHUNK_MAX).map(|e| e.map(|(o, t)| (o.value(), t.value()))).collect::<Result<_, _>>()?;
            for (offset, token) in &doomed {
                offsets.remove(offset)?;
                if keys.get(token)?.is_some_and(|o| o.value() == *offset) {
                    keys.remove(token)?;
                }
            }
            n = n.max(doomed.len());
        }
        txn.commit()?;
        Ok(n)
    }

    /// Makes every earlier commit durable (one fsync).
    pub fn sync(&self) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
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
        index.record("ops", &[(token(1), 1), (token(2), 2)], &[]).unwrap();
        index.record("audit", &[(token(3), 1)], &[]).unwrap();
        index.record("ops", &[(token(5), 5)], &[(3, 4)]).unwrap();
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
        index.record("ops", &[(token(1), 1), (token(4), 4)], &[]).unwrap();
        assert_eq!((index.through("ops"), index.first_gap("ops")), (1, Some((2, 3))));
        index.sync().unwrap();
        drop(index);
        assert_eq!(open(dir.path()).through("ops"), 1, "a restart re-reads from the gap");
    }

    #[test]
    fn pruning_removes_entries_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let entries: Vec<(Token, u64)> = (1..=10).map(|n| (token(n), u64::from(n))).collect();
        index.record("ops", &entries, &[]).unwrap();
        assert_eq!(index.forget_below("ops", 4).unwrap(), 3);
        assert_eq!(index.forget_after("ops", 8).unwrap(), 2);
        let found = index.look_up(&entries.iter().map(|(t, _)| *t).collect::<Vec<_>>()).unwrap();
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
        index.record("ops", &[(token(1), 1)], &[]).unwrap();
        index.record("audit", &[(token(2), 1)], &[]).unwrap();
        index.reset("ops", 42).unwrap();
        assert_eq!(index.look_up(&[token(1), token(2)]).unwrap(), vec![None, Some((1, 1))]);
        assert_eq!((index.through("ops"), index.stream_identity("ops").unwrap()), (0, Some(42)));
    }
}
