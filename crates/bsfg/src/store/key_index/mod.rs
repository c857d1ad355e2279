//! The idempotency key index: key token -> (category, offset), in a file
//! beside the zone's JetStream store.
//!
//! Why a file and not JetStream: a subject per fact made JetStream refuse
//! a second fact per key atomically, but nats-server keeps state for every
//! subject, so its memory and its stream-state file grew with the retained
//! facts (1.5 GiB RSS, a 47 MiB state file rewritten under the stream lock
//! with one-second stalls; see docs/key-index.md). Facts now go to one
//! subject per kind, and this index answers "is this key stored, and
//! where?" from disk.
//!
//! Why a hash file of its own: a look-up reads one 4 KiB bucket page and
//! a merged entry rewrites at most one, whatever the index's size, through
//! the OS page cache (the node's own memory stays fixed but for the bounded
//! buffer below). The embedded B-tree used
//! before cost 12.6 µs per recorded fact at 1M entries and 36–53 µs from
//! 3M on. The format (linear hashing, keyed bucket hash, page checksums)
//! is in `format`.
//!
//! Why it cannot lose a key: it is a *derived* view of the streams, never a
//! second source of truth. JetStream stores the fact first; the index is
//! written after the acknowledgement. The header records, per category,
//! the offset through which the entries cover the stream contiguously
//! (`bsfg_domain::indexed_runs`), and it is only written after the pages
//! it vouches for were fsynced, so after any crash the node re-reads the
//! facts after that offset (headers only) before it accepts an append; a
//! fact whose acknowledgement was lost is read in by the gap filler. A hit
//! is always checked against the stored fact (its key and content), so an
//! entry that outlived its fact (retention, a lost stream tail, a
//! recreated stream) is dropped rather than trusted: that is why pruning
//! can be lazy. A node that did not close the file cleanly checks every
//! page's checksum at start-up and starts an empty index (rebuilt from the
//! streams) if a page was torn; a page that fails its checksum while
//! running marks the index damaged, and the node rebuilds it the same way
//! ([`KeyIndex::rebuild`]). The file can be deleted at any time the node is
//! stopped.
//!
//! Why recorded entries wait in memory: a recorded fact lands in one random
//! 4 KiB page, so writing each batch to its pages made the disk write a
//! page per fact (4.3 KB per fact at 1,000 facts/s on a 1M-entry index,
//! ten times the fact's own JetStream record), and spent the CPU of a page
//! read and write per fact. Entries now stay in a bounded in-memory buffer
//! (`buffered_entries_max`, look-ups consult it first) and are *merged*
//! into the pages when it is full or at a checkpoint: each touched page is
//! written once per merge, however many entries it gains. Nothing is lost
//! by the wait, only re-read: a checkpoint (every `key_index_sync_interval`,
//! and after every merge) fsyncs the pages and only then writes a header
//! that vouches for what they hold, so after a crash the node re-reads at
//! most the buffered facts from the streams.
//!
//! Why a filter in front of the pages: most look-ups are of new keys, and
//! each used to read a page only to find the key absent. A fixed-size
//! Bloom filter (`filter`, 4 MiB by default) over every token in the index
//! answers most of them from memory. A clean close saves it beside the file
//! (`<file>.filter`) and the next start-up loads it; otherwise start-up
//! fills it from the pages, reading (and checking) every page once.
//!
//! The file is locked (flock), so a second node started on the same zone
//! store fails at start-up instead of writing beside the first.

mod checkpoint;
mod filter;
mod format;
mod look_up;
mod merge;
mod pages;
mod writer;

pub use writer::{IndexWriter, WriterStats};

use bsfg_domain::indexed_runs::IndexedRuns;
pub use filter::FILTER_BYTES_DEFAULT;
use filter::KeyFilter;
use format::{
    CATEGORIES_MAX, CATEGORY_NAME_BYTES_MAX, CategoryState, Entry, Geometry, Header, PAGE_BYTES,
    SLOTS_PER_PAGE,
};
use pages::{check_pages, empty_table, page_position, read_header};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

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
pub struct AlreadyOpen(pub PathBuf);

/// Entries buffered in memory before a merge, by default (about 4 MiB:
/// 100,000 fit the hash table's 131,072 slots without a resize).
pub const BUFFERED_ENTRIES_MAX_DEFAULT: usize = 100_000;

/// How large the index is (for operators: metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSize {
    /// Entries in the pages, stale ones included until their page is
    /// next written.
    pub entries: u64,
    pub file_bytes: u64,
    /// Recorded entries waiting in memory to be merged into the pages.
    pub buffered: u64,
}

pub struct KeyIndex {
    file: File,
    /// Where a clean close saves the filter (`filter` module docs).
    filter_path: PathBuf,
    /// Categories in a fixed order; entries and look-ups name them by
    /// position.
    categories: Vec<String>,
    hash_key: [u8; 16],
    /// Readers hold it shared while they address and read a bucket page;
    /// the writer holds it exclusively while it writes a page or changes
    /// the geometry, so a reader never sees a half-written page or looks
    /// in a bucket its entry has just left.
    geometry: RwLock<Geometry>,
    /// Per category, the stream's first offset as last reported: entries
    /// below it are stale (retention removed their facts) and are skipped
    /// by look-ups and dropped when their page is next written.
    firsts: Vec<AtomicU64>,
    /// Everything only writers change; one writer at a time.
    writes: Mutex<Writes>,
    /// `Writes::entries` as of the last write, readable without waiting
    /// for a writer.
    entries_published: AtomicU64,
    /// What each category's entries cover. Changed after the pages are
    /// written, so a checkpoint's snapshot never vouches for an unwritten
    /// page.
    runs: Mutex<Vec<IndexedRuns>>,
    /// Set when a page failed its checksum while running (a disk error, or
    /// the file written by something else); the node then rebuilds.
    damaged: AtomicBool,
    /// Recorded entries not yet merged into the pages, newest per token
    /// (see module docs). Only the writer adds or removes; an entry leaves
    /// only after its page is written, so a look-up that misses here finds
    /// it in the page.
    buffer: RwLock<HashMap<Token, (u64, u8)>>,
    buffered_entries_max: usize,
    /// Every token in the buffer or the pages (and some gone since).
    filter: KeyFilter,
}

struct Writes {
    seq: u64,
    /// Per category, the coverage a header may vouch for: what the pages
    /// held at the last merge (the buffer's entries are not in the pages).
    vouched: Vec<u64>,
    /// Entries in the pages, stale ones included (drives splitting).
    entries: u64,
    identities: Vec<Option<u64>>,
    page: Box<[u8; PAGE_BYTES]>,
}

impl KeyIndex {
    /// Opens (or creates) the index file. A file of another format, for
    /// other categories, or with a torn page after a crash starts empty:
    /// the node then reads the streams in again.
    ///
    /// `buffered_entries_max`: recorded entries held in memory before they
    /// are merged into the pages (see module docs). `filter_bytes`: the key
    /// filter's size (a power of two).
    pub fn open(
        path: &Path,
        categories: &[String],
        buffered_entries_max: usize,
        filter_bytes: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            buffered_entries_max > 0,
            "the key index buffers at least one entry"
        );
        anyhow::ensure!(
            filter_bytes.is_power_of_two() && filter_bytes >= 8,
            "the key filter is a power of two of at least 8 bytes"
        );
        anyhow::ensure!(
            categories.len() <= CATEGORIES_MAX
                && categories
                    .iter()
                    .all(|c| c.len() <= CATEGORY_NAME_BYTES_MAX),
            "the key index holds at most {CATEGORIES_MAX} categories with names of at most {CATEGORY_NAME_BYTES_MAX} bytes"
        );
        // Owner-only: the file holds the secret hash key. A directory that
        // exists already keeps its mode (by default it is the parent of the
        // nats store directory, which may be shared).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::owner_only::create_dir_all(dir)?;
        }
        let file = crate::owner_only::open_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        crate::owner_only::restrict(&file)?;
        lock_exclusively(&file, path)?;
        let found = read_header(&file)?;
        let filter_path = saved_filter_path(path);
        // A clean close saved the filter for its header: no page is read.
        let saved = found
            .as_ref()
            .filter(|h| h.clean)
            .and_then(|h| KeyFilter::load(&filter_path, &h.hash_key, h.seq, filter_bytes));
        // Whatever happens next, the saved copy describes this file only
        // until its next checkpoint.
        let _ = std::fs::remove_file(&filter_path);
        let loaded = saved.is_some();
        if loaded {
            tracing::info!(path = %filter_path.display(), "key filter loaded as saved at the last clean stop; the index pages are not read");
        }
        let mut filter = saved.unwrap_or_else(|| KeyFilter::new(filter_bytes));
        let usable = match found {
            None if file.metadata()?.len() > 0 => {
                tracing::warn!(path = %path.display(), "the key index file has no readable header; starting it empty (the streams are read in again)");
                None
            }
            None => None,
            Some(h) if h.categories.iter().map(|c| &c.name).ne(categories.iter()) => {
                tracing::warn!(path = %path.display(), "the configured categories changed; starting the key index empty (the streams are read in again)");
                None
            }
            Some(h) if loaded => Some(h),
            // Every page is read once, to fill the filter; an index not
            // closed cleanly also takes its entry count from them.
            Some(mut h) => match check_pages(&file, &h.geometry, &filter)? {
                Ok(entries) => {
                    if !h.clean {
                        h.entries = entries;
                    }
                    Some(h)
                }
                Err(damaged) => {
                    let how = if h.clean {
                        "a page is damaged"
                    } else {
                        "the key index was not closed cleanly and a page is torn"
                    };
                    tracing::warn!(path = %path.display(), error = %damaged, "{how}; starting it empty (the streams are read in again)");
                    None
                }
            },
        };
        let header = match usable {
            Some(h) => h,
            None => {
                file.set_len(0)?;
                // An index started empty starts with an empty filter.
                filter = KeyFilter::new(filter_bytes);
                Header {
                    seq: 0,
                    clean: false,
                    hash_key: rand::random(),
                    geometry: empty_table(&file)?,
                    entries: 0,
                    categories: categories
                        .iter()
                        .map(|name| CategoryState {
                            name: name.clone(),
                            through: 0,
                            identity: None,
                        })
                        .collect(),
                }
            }
        };
        let index = Self {
            file,
            filter_path,
            categories: categories.to_vec(),
            hash_key: header.hash_key,
            geometry: RwLock::new(header.geometry),
            firsts: categories.iter().map(|_| AtomicU64::new(0)).collect(),
            writes: Mutex::new(Writes {
                seq: header.seq,
                vouched: header.categories.iter().map(|c| c.through).collect(),
                entries: header.entries,
                identities: header.categories.iter().map(|c| c.identity).collect(),
                page: Box::new([0; PAGE_BYTES]),
            }),
            runs: Mutex::new(
                header
                    .categories
                    .iter()
                    .map(|c| IndexedRuns::new(c.through))
                    .collect(),
            ),
            entries_published: AtomicU64::new(header.entries),
            damaged: AtomicBool::new(false),
            buffer: RwLock::new(HashMap::new()),
            buffered_entries_max,
            filter,
        };
        // From here on a crash leaves the file marked for the page check.
        index.checkpoint(&mut index.writes(), 0)?;
        Ok(index)
    }

    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    pub fn size(&self) -> IndexSize {
        let buckets = self.geometry().buckets();
        IndexSize {
            entries: self.entries_published.load(Ordering::Relaxed),
            file_bytes: page_position(buckets),
            buffered: self.buffer().len() as u64,
        }
    }

    /// The current geometry (a copy: the lock is not held).
    fn geometry(&self) -> Geometry {
        *self.geometry.read().expect("key index geometry poisoned")
    }

    fn writes(&self) -> MutexGuard<'_, Writes> {
        self.writes.lock().expect("key index writes poisoned")
    }

    fn runs(&self) -> MutexGuard<'_, Vec<IndexedRuns>> {
        self.runs.lock().expect("key index runs poisoned")
    }

    fn position(&self, category: &str) -> usize {
        self.categories
            .iter()
            .position(|c| c == category)
            .expect("a configured category")
    }

    /// Every offset of `category` at or below this is indexed (or gone).
    pub fn through(&self, category: &str) -> u64 {
        self.runs()[self.position(category)].through()
    }

    /// The first offsets of `category` not indexed while later ones are.
    pub fn first_gap(&self, category: &str) -> Option<(u64, u64)> {
        self.runs()[self.position(category)].first_gap()
    }

    /// The stream identity (creation time) the entries of `category` were
    /// read from, if any.
    pub fn stream_identity(&self, category: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.writes().identities[self.position(category)])
    }

    /// Starts `category` over for the stream it will be read in from (the
    /// stream was recreated, or this is a new index), durably. Its old
    /// entries stay in the pages until a look-up finds them stale.
    pub fn reset(&self, category: &str, stream_identity: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        let mut writes = self.writes();
        writes.identities[position] = Some(stream_identity);
        writes.vouched[position] = 0;
        self.runs()[position] = IndexedRuns::new(0);
        self.firsts[position].store(0, Ordering::Release);
        self.checkpoint(&mut writes, 0)
    }

    fn is_live(&self, entry: &Entry) -> bool {
        self.firsts
            .get(usize::from(entry.category))
            .is_some_and(|first| entry.offset >= first.load(Ordering::Acquire))
    }

    fn hash(&self, token: &Token) -> u64 {
        format::bucket_hash(&self.hash_key, token)
    }

    fn buffer(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Token, (u64, u8)>> {
        self.buffer.read().expect("key index buffer poisoned")
    }

    /// True once a page failed its checksum while running.
    pub fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }

    /// Starts the index over, empty (as start-up does with a torn page):
    /// every category's facts must then be read in again before an append
    /// may rely on it. The caller keeps appends out meanwhile.
    pub fn rebuild(&self) -> anyhow::Result<()> {
        let mut writes = self.writes();
        // First a header that vouches for nothing, so a crash from here on
        // reads every stream in again; only then the pages go.
        writes
            .identities
            .iter_mut()
            .for_each(|identity| *identity = None);
        writes.vouched.iter_mut().for_each(|through| *through = 0);
        self.runs()
            .iter_mut()
            .for_each(|runs| *runs = IndexedRuns::new(0));
        self.buffer
            .write()
            .expect("key index buffer poisoned")
            .clear();
        self.checkpoint(&mut writes, 0)?;
        {
            let mut geometry = self.geometry.write().expect("key index geometry poisoned");
            *geometry = empty_table(&self.file)?;
        }
        writes.entries = 0;
        self.firsts
            .iter()
            .for_each(|first| first.store(0, Ordering::Release));
        self.checkpoint(&mut writes, 0)?;
        self.damaged.store(false, Ordering::Release);
        Ok(())
    }

    /// Removes one entry that no longer matches its fact.
    pub fn forget(&self, category: &str, token: &Token, offset: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        let mut writes = self.writes();
        {
            let mut buffer = self.buffer.write().expect("key index buffer poisoned");
            if buffer.get(token) == Some(&(offset, position as u8)) {
                buffer.remove(token);
            }
        }
        let bucket = self.geometry().bucket_of(self.hash(token));
        let mut entries = Vec::with_capacity(SLOTS_PER_PAGE);
        self.load_bucket(&mut writes, bucket, &mut entries)?;
        let before = entries.len();
        entries.retain(|e| {
            !(e.token == *token && e.offset == offset && usize::from(e.category) == position)
        });
        if entries.len() < before {
            self.write_bucket(&mut writes, bucket, &entries)?;
            writes.entries -= 1;
            self.entries_published
                .store(writes.entries, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The stream no longer holds offsets below `first_offset`: their
    /// entries stop being found now and leave the pages as those are
    /// written.
    pub fn forget_below(&self, category: &str, first_offset: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        self.firsts[position].fetch_max(first_offset, Ordering::AcqRel);
        self.runs()[position].forget_below(first_offset);
        Ok(())
    }

    /// The stream lost its tail after `last_offset` (e.g. nats-server
    /// restarted without syncing): the coverage above it is dropped,
    /// durably, so the facts stored there from now on are read in again
    /// after a crash. Entries above it stay until a look-up finds them
    /// stale (every hit is checked against the stored fact). Returns how
    /// many covered offsets were dropped.
    pub fn forget_after(&self, category: &str, last_offset: u64) -> anyhow::Result<u64> {
        let position = self.position(category);
        let mut writes = self.writes();
        let dropped = {
            let mut runs = self.runs();
            let highest = runs[position].highest();
            runs[position].truncate_after(last_offset);
            highest.saturating_sub(last_offset)
        };
        writes.vouched[position] = writes.vouched[position].min(last_offset);
        if dropped > 0 {
            self.checkpoint(&mut writes, 0)?;
        }
        Ok(dropped)
    }

    /// Holds the writers' lock (tests: a writer that cannot write).
    #[cfg(test)]
    fn hold_writes(&self) -> impl Drop + '_ {
        self.writes()
    }
}

impl Drop for KeyIndex {
    /// Marks the file cleanly closed (after making it durable) and saves the
    /// filter, so the next start-up reads neither the pages nor the streams.
    fn drop(&mut self) {
        let close = || -> anyhow::Result<u64> {
            let mut writes = self
                .writes
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            self.merge(&mut writes)?;
            self.checkpoint_marked(&mut writes, 0, true)?;
            Ok(writes.seq)
        };
        match close() {
            // Saved after the clean header: it holds every token in the
            // pages that header describes (it only ever grows).
            Ok(seq) => {
                if let Err(e) = self.filter.save(&self.filter_path, &self.hash_key, seq) {
                    let _ = std::fs::remove_file(&self.filter_path);
                    tracing::warn!(error = %e, "saving the key filter failed; the next start-up reads the pages to fill it");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "closing the key index cleanly failed; the next start-up checks its pages")
            }
        }
    }
}

/// The saved filter's file: beside the index, `<index file>.filter`.
fn saved_filter_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".filter");
    PathBuf::from(name)
}

fn lock_exclusively(file: &File, path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a file descriptor this function borrows; no memory
    // is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(AlreadyOpen(path.to_path_buf()).into());
    }
    Err(anyhow::anyhow!(
        "locking the key index {}: {err}",
        path.display()
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::pages::BUCKETS_INITIAL;
    use super::*;
    use std::os::unix::fs::FileExt as _;

    pub fn token(n: u8) -> Token {
        [n; 16]
    }

    pub fn open(dir: &Path) -> KeyIndex {
        KeyIndex::open(
            &dir.join("keys.kix"),
            &["ops".into(), "audit".into()],
            BUFFERED_ENTRIES_MAX_DEFAULT,
            FILTER_BYTES_DEFAULT,
        )
        .unwrap()
    }

    /// A token from a counter, spread like real tokens (digests).
    pub fn spread(n: u64) -> Token {
        token_bytes(&bsfg_domain::identity::key_token("test", &n.to_string())).unwrap()
    }

    #[test]
    fn entries_and_coverage_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index
            .record(&[(0, token(1), 1), (0, token(2), 2)], &[])
            .unwrap();
        index.record(&[(1, token(3), 1)], &[]).unwrap();
        index.record(&[(0, token(5), 5)], &[(0, 3, 4)]).unwrap();
        index.sync().unwrap();
        drop(index);
        let index = open(dir.path());
        assert_eq!(
            index
                .look_up(&[token(1), token(3), token(5), token(9)])
                .unwrap(),
            vec![Some((0, 1)), Some((1, 1)), Some((0, 5)), None]
        );
        assert_eq!((index.through("ops"), index.through("audit")), (5, 1));
    }

    #[test]
    fn a_clean_close_saves_the_filter_and_only_the_next_open_may_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("keys.kix.filter");
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        drop(index);
        assert!(saved.exists(), "a clean close saves the filter");
        let stale = std::fs::read(&saved).unwrap();
        let index = open(dir.path());
        assert!(
            !saved.exists(),
            "an open takes the saved filter away: it describes the file only until the next checkpoint"
        );
        assert_eq!(
            index.look_up(&[token(1), token(2)]).unwrap(),
            vec![Some((0, 1)), None],
            "the loaded filter holds the stored key"
        );
        index.record(&[(0, token(2), 2)], &[]).unwrap();
        drop(index);
        // A filter from an earlier close lacks token 2: it must not be used.
        std::fs::write(&saved, &stale).unwrap();
        let index = open(dir.path());
        assert_eq!(
            index.look_up(&[token(1), token(2)]).unwrap(),
            vec![Some((0, 1)), Some((0, 2))],
            "a stale filter is ignored and the pages fill a new one"
        );
        // After a crash there is no saved filter, and the pages fill it.
        index.record(&[(0, token(3), 3)], &[]).unwrap();
        index.sync().unwrap();
        crash(index);
        assert!(!saved.exists());
        let index = open(dir.path());
        assert_eq!(index.look_up(&[token(3)]).unwrap(), vec![Some((0, 3))]);
    }

    /// What kill -9 leaves: the pages written so far (in the page cache),
    /// no checkpoint after them, no clean close, and the lock released.
    pub fn crash(index: KeyIndex) {
        let index = std::mem::ManuallyDrop::new(index);
        // SAFETY: flock on a descriptor the leaked index still owns.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&index.file), libc::LOCK_UN) };
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _index = open(dir.path());
        let second = KeyIndex::open(
            &dir.path().join("keys.kix"),
            &["ops".into(), "audit".into()],
            BUFFERED_ENTRIES_MAX_DEFAULT,
            FILTER_BYTES_DEFAULT,
        );
        assert!(
            matches!(second, Err(ref e) if e.downcast_ref::<AlreadyOpen>().is_some()),
            "the lock is held while the file is open"
        );
    }

    #[test]
    fn a_torn_page_after_a_crash_starts_the_index_empty() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        index.reset("audit", 77).unwrap();
        index.sync().unwrap();
        // A power loss tore the page being written.
        let bucket = index
            .geometry
            .read()
            .unwrap()
            .bucket_of(index.hash(&token(1)));
        index
            .file
            .write_all_at(&[0xff; 16], page_position(bucket) + 100)
            .unwrap();
        crash(index);
        let index = open(dir.path());
        assert_eq!(
            (
                index.through("ops"),
                index.stream_identity("audit").unwrap()
            ),
            (0, None),
            "everything is read in again"
        );
        assert_eq!(index.look_up(&[token(1)]).unwrap(), vec![None]);
    }

    #[test]
    fn a_page_damaged_while_running_marks_the_index_and_a_rebuild_starts_it_empty() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let entries: Vec<(usize, Token, u64)> =
            (1..=20_000u64).map(|n| (0, spread(n), n)).collect();
        index.record(&entries, &[]).unwrap();
        index.reset("audit", 77).unwrap();
        index.sync().unwrap();
        assert!(
            index.geometry.read().unwrap().buckets() > BUCKETS_INITIAL,
            "the table has split"
        );
        assert!(!index.is_damaged());
        // Something else writes into a page of the running index.
        let bucket = index
            .geometry
            .read()
            .unwrap()
            .bucket_of(index.hash(&spread(1)));
        index
            .file
            .write_all_at(&[0xA5; 64], page_position(bucket) + 100)
            .unwrap();
        assert!(
            index.look_up(&[spread(1)]).is_err(),
            "a damaged page is an error, not a miss"
        );
        assert!(index.is_damaged());
        index.rebuild().unwrap();
        assert!(!index.is_damaged());
        assert_eq!(
            (
                index.through("ops"),
                index.stream_identity("audit").unwrap()
            ),
            (0, None),
            "every stream is to be read in again"
        );
        assert_eq!(
            index.size(),
            IndexSize {
                entries: 0,
                file_bytes: page_position(BUCKETS_INITIAL),
                buffered: 0
            }
        );
        assert_eq!(
            index.look_up(&[spread(1), spread(2)]).unwrap(),
            vec![None, None]
        );
        // It works as new, and a crash now keeps what was recorded since.
        index.record(&[(0, spread(1), 1)], &[]).unwrap();
        index.sync().unwrap();
        crash(index);
        let index = open(dir.path());
        assert_eq!(
            index.look_up(&[spread(1), spread(2)]).unwrap(),
            vec![Some((0, 1)), None]
        );
        assert_eq!(index.through("ops"), 1);
    }

    #[test]
    fn pruning_is_lazy_and_exact() {
        // The bucket hash is keyed at random per file, so which tokens share
        // a bucket differs per run: the last check needs a stale entry alone
        // in its bucket, and a fresh table is tried until one has it.
        for _ in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let index = open(dir.path());
            let entries: Vec<(usize, Token, u64)> =
                (1..=10).map(|n| (0, token(n), u64::from(n))).collect();
            index.record(&entries, &[]).unwrap();
            index.sync().unwrap();
            let tokens: Vec<Token> = entries.iter().map(|(_, t, _)| *t).collect();
            index.forget_below("ops", 4).unwrap();
            let kept: Vec<u64> = index
                .look_up(&tokens)
                .unwrap()
                .iter()
                .flatten()
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(
                kept,
                vec![4, 5, 6, 7, 8, 9, 10],
                "entries below the stream's first offset are not found"
            );
            assert_eq!(index.forget_after("ops", 8).unwrap(), 2);
            assert_eq!(
                index.through("ops"),
                8,
                "coverage above the stream's last offset is dropped"
            );
            index.forget("ops", &token(5), 5).unwrap();
            index.forget("ops", &token(6), 999).unwrap();
            assert_eq!(
                index.look_up(&[token(5), token(6)]).unwrap(),
                vec![None, Some((0, 6))],
                "forget removes only the exact entry"
            );
            index.record(&[(0, token(12), 12)], &[]).unwrap();
            index.forget("ops", &token(12), 12).unwrap();
            assert_eq!(
                index.look_up(&[token(12)]).unwrap(),
                vec![None],
                "also while it is buffered"
            );
            // Writing a bucket drops its stale entries for good: a new key in
            // the bucket of a stale token replaces it in the count.
            assert_eq!(index.writes().entries, 9);
            let bucket_of = |t: &Token| index.geometry.read().unwrap().bucket_of(index.hash(t));
            let recorded: Vec<Token> = tokens.iter().copied().chain([token(12)]).collect();
            let alone = |t: &Token| {
                recorded
                    .iter()
                    .filter(|u| bucket_of(u) == bucket_of(t))
                    .count()
                    == 1
            };
            let Some(stale) = [token(1), token(2), token(3)].into_iter().find(alone) else {
                continue;
            };
            let neighbour = (0..100_000)
                .map(spread)
                .find(|t| bucket_of(t) == bucket_of(&stale))
                .expect("a token sharing the bucket");
            index.record(&[(0, neighbour, 11)], &[]).unwrap();
            index.sync().unwrap();
            assert_eq!(
                index.writes().entries,
                9,
                "one stale entry dropped, one added"
            );
            return;
        }
        panic!("no table of 8 had a stale entry alone in its bucket");
    }

    #[test]
    fn reset_starts_one_category_over() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        index.record(&[(1, token(2), 1)], &[]).unwrap();
        index.reset("ops", 42).unwrap();
        assert_eq!(
            (
                index.through("ops"),
                index.through("audit"),
                index.stream_identity("ops").unwrap()
            ),
            (0, 1, Some(42))
        );
        drop(index);
        let index = open(dir.path());
        assert_eq!(
            (index.through("ops"), index.stream_identity("ops").unwrap()),
            (0, Some(42)),
            "durably"
        );
    }

    #[test]
    fn a_file_for_other_categories_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        drop(index);
        let other = KeyIndex::open(
            &dir.path().join("keys.kix"),
            &["audit".into(), "ops".into()],
            BUFFERED_ENTRIES_MAX_DEFAULT,
            FILTER_BYTES_DEFAULT,
        )
        .unwrap();
        assert_eq!(
            (other.through("ops"), other.look_up(&[token(1)]).unwrap()),
            (0, vec![None])
        );
    }
}
