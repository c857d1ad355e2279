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
//!
//! # Where
//!
//! `open` opens the file and `close` closes it cleanly; `look_up` answers
//! look-ups; `merge` records entries into the buffer and merges it into the
//! pages, growing the table; `checkpoint` makes the pages durable and
//! writes the header; `coverage` keeps the coverage in step with the
//! streams and starts the index over; `pages` reads and writes pages and
//! headers; `format` is their bytes, `filter` the key filter, `writer` the
//! thread that records what appends stage.
//!
//! # Invariants
//!
//! Each says where it is upheld and where it is checked: `assert!`s hold in
//! every build, `debug_assert!`s in debug builds (the tests), and the named
//! tests exercise the rest.
//!
//! 1. **The persisted prefix is contiguous.** A header's per-category
//!    `through` only ever comes from `IndexedRuns::through` (every offset at
//!    or below it is indexed or gone), from 0 or the previous header, or is
//!    one of these lowered to a stream's new end (`forget_after`); runs
//!    above a gap stay in memory. Asserted in
//!    `bsfg_domain::indexed_runs` ("a run never touches the prefix").
//! 2. **An entry is on disk before its checkpoint claims it.** `merge`
//!    takes its coverage snapshot under the writer lock (exactly pages plus
//!    buffer), writes every buffered entry into its page, and only then
//!    lets a header vouch for the snapshot (`Writes::vouched`); every
//!    checkpoint fsyncs the pages before it writes the header
//!    (`checkpoint_marked`, step 1). Upheld by that order, not asserted;
//!    tests `a_full_buffer_is_merged_into_the_pages_and_vouched_for`,
//!    `a_restart_after_a_crash_re_reads_from_the_checkpointed_prefix` and
//!    the kill -9 tests in `crates/bsfg-cli/tests/it/durability.rs`.
//! 3. **A header never vouches for more than is covered**: per category,
//!    `Writes::vouched` is at most `IndexedRuns::through` (coverage only
//!    shrinks in `reset`, `forget_after` and `rebuild`, which lower
//!    `vouched` with it under the writer lock). `debug_assert!` in
//!    `checkpoint_marked`.
//! 4. **A recorded entry is in the buffer or in its page, never in
//!    neither** (until it is forgotten or the index rebuilt): `merge` clears
//!    the buffer only after its checkpoint; look-ups read the buffer first.
//! 5. **The filter never denies a token the index holds.** A token enters
//!    the filter before the buffer (`record`), start-up fills it from every
//!    page or loads the copy saved with the clean header it describes
//!    (`open::take_saved_filter`, `KeyFilter::load`), and nothing leaves
//!    it. `debug_assert!` in `insert_sorted` (every entry merged into a
//!    page passes the filter); test
//!    `a_clean_close_saves_the_filter_and_only_the_next_open_may_use_it`.
//! 6. **A split never leaves an entry where no reader or header looks.**
//!    The new bucket is written and fsynced before the header with the new
//!    geometry; readers switch after that header is durable, and only then
//!    do the moved copies leave the old bucket (`checkpoint_marked`, steps
//!    2–4). A checkpoint splits within one round (`assert!` there). Test
//!    `the_table_grows_and_every_key_stays_findable`.
//! 7. **A reader never sees a half-written page or a bucket its entry has
//!    left**: readers address and read a page under the geometry lock
//!    shared (`look_up`); the writer writes addressed pages and switches the
//!    geometry under it exclusively (`write_bucket`, `checkpoint_marked`).
//! 8. **One writer.** In the process, everything writers change is behind
//!    the `writes` mutex; across processes, the file is flocked
//!    (`open::lock_exclusively`; test
//!    `a_second_open_of_the_same_file_is_refused`).
//! 9. **The load stays bounded.** A merge grows the table to the target
//!    load before it writes, and no split is due after it
//!    (`debug_assert_eq!` in `merge`); the table never doubles past `LEVEL_MAX` (`ensure!` in
//!    `split_through`). Test `the_table_grows_and_every_key_stays_findable`
//!    (load at most `LOAD_URGENT_PERCENT`).
//! 10. **A torn write is never trusted.** The two header copies alternate
//!     (`Header::copy_index`) and the newer intact one wins
//!     (`pages::read_header`); pages carry a checksum bound to their bucket
//!     (`format::decode_page`). After an unclean close every page is
//!     checked and a torn one starts the index empty
//!     (`open::checked_header`); a page found damaged while running marks
//!     the index for `rebuild` (`KeyIndex::decode`). Tests
//!     `a_torn_page_after_a_crash_starts_the_index_empty`,
//!     `a_page_damaged_while_running_marks_the_index_and_a_rebuild_starts_it_empty`,
//!     and `format`'s.
//! 11. **An entry is a hint, never proof.** Every hit is checked against the
//!     stored fact (`store::facts`, `stored_under`), which drops an entry
//!     that outlived its fact (`forget`); entries below a stream's first
//!     offset are hidden at once (`is_live`) and dropped when their page is
//!     next written. Test `pruning_is_lazy_and_exact`.
//! 12. **A category's position fits an entry's byte**: at most
//!     `CATEGORIES_MAX` categories (`ensure!` in `open::check_limits`, and a
//!     compile-time `assert!` there that this fits a `u8`); `record`
//!     asserts each position is configured.
//! 13. **`Writes::entries` counts the entries in the pages**, stale ones
//!     included (`entries_published` mirrors it after each write); after an
//!     unclean close it is recounted from the pages. Tests
//!     `the_table_grows_and_every_key_stays_findable`,
//!     `pruning_is_lazy_and_exact`.

mod checkpoint;
mod close;
mod coverage;
mod filter;
mod format;
mod look_up;
mod merge;
mod open;
pub use open::HASH_KEY_PURPOSE;
mod pages;
mod writer;

pub use writer::{IndexWriter, WriterStats};

use bsfg_domain::indexed_runs::IndexedRuns;
pub use filter::FILTER_BYTES_DEFAULT;
use filter::KeyFilter;
use format::{Entry, Geometry, PAGE_BYTES};
use pages::page_position;
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
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

    /// Holds the writers' lock (tests: a writer that cannot write).
    #[cfg(test)]
    fn hold_writes(&self) -> impl Drop + '_ {
        self.writes()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::Path;

    /// The tests' root seed: every test index has the same hash key, so a
    /// failing case replays bucket for bucket.
    pub const TEST_HASH_KEY_SEED: u64 = 0x5EED;

    pub fn token(n: u8) -> Token {
        [n; 16]
    }

    pub fn open(dir: &Path) -> KeyIndex {
        KeyIndex::open(
            &dir.join("keys.kix"),
            &["ops".into(), "audit".into()],
            BUFFERED_ENTRIES_MAX_DEFAULT,
            FILTER_BYTES_DEFAULT,
            TEST_HASH_KEY_SEED,
        )
        .unwrap()
    }

    /// A token from a counter, spread like real tokens (digests).
    pub fn spread(n: u64) -> Token {
        token_bytes(&bsfg_domain::identity::key_token("test", &n.to_string())).unwrap()
    }

    /// What kill -9 leaves: the pages written so far (in the page cache),
    /// no checkpoint after them, no clean close, and the lock released.
    pub fn crash(index: KeyIndex) {
        let index = std::mem::ManuallyDrop::new(index);
        // SAFETY: flock on a descriptor the leaked index still owns.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&index.file), libc::LOCK_UN) };
    }
}
