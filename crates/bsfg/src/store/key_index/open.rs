//! Opening the index file: locked, its header and pages checked, the key
//! filter loaded as saved at the last clean close or filled from the pages.

use super::filter::KeyFilter;
use super::format::{CATEGORIES_MAX, CATEGORY_NAME_BYTES_MAX, CategoryState, Header, PAGE_BYTES};
use super::pages::{check_pages, empty_table, read_header};
use super::{AlreadyOpen, KeyIndex, Writes};
use bsfg_domain::indexed_runs::IndexedRuns;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, RwLock};

/// The purpose name of the hash key in `bsfg_domain::seed`.
pub const HASH_KEY_PURPOSE: &str = "key_index/hash_key";

impl KeyIndex {
    /// Opens (or creates) the index file. A file of another format, for
    /// other categories, or with a torn page after a crash starts empty:
    /// the node then reads the streams in again.
    ///
    /// `buffered_entries_max`: recorded entries held in memory before they
    /// are merged into the pages (see module docs). `filter_bytes`: the key
    /// filter's size (a power of two). `hash_key_seed`: where the hash key
    /// of an index started empty comes from (`bsfg_domain::seed`); an
    /// index that is kept keeps its key.
    pub fn open(
        path: &Path,
        categories: &[String],
        buffered_entries_max: usize,
        filter_bytes: usize,
        hash_key_seed: u64,
    ) -> anyhow::Result<Self> {
        check_limits(categories, buffered_entries_max, filter_bytes)?;
        let file = create_locked(path)?;
        let found = read_header(&file)?;
        let filter_path = saved_filter_path(path);
        let saved = take_saved_filter(&filter_path, found.as_ref(), filter_bytes);
        let loaded = saved.is_some();
        let mut filter = saved.unwrap_or_else(|| KeyFilter::new(filter_bytes));
        let header = match usable_header(&file, path, found, categories, loaded, &filter)? {
            Some(h) => h,
            None => {
                file.set_len(0)?;
                // An index started empty starts with an empty filter.
                filter = KeyFilter::new(filter_bytes);
                empty_header(&file, categories, hash_key_seed)?
            }
        };
        let index = Self::from_header(
            file,
            filter_path,
            categories,
            header,
            buffered_entries_max,
            filter,
        );
        // From here on a crash leaves the file marked for the page check.
        index.checkpoint(&mut index.writes(), 0)?;
        Ok(index)
    }

    /// The index as `header` describes it, with nothing buffered and no
    /// stream's first offset known yet.
    fn from_header(
        file: File,
        filter_path: PathBuf,
        categories: &[String],
        header: Header,
        buffered_entries_max: usize,
        filter: KeyFilter,
    ) -> Self {
        Self {
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
        }
    }
}

// An entry names its category by its position, in one byte.
const _: () = assert!(
    CATEGORIES_MAX <= u8::MAX as usize + 1,
    "a category's position fits an entry's byte"
);

/// The limits `KeyIndex::open` takes its arguments within.
fn check_limits(
    categories: &[String],
    buffered_entries_max: usize,
    filter_bytes: usize,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// Opens (or creates) the file, owner-only, and locks it.
fn create_locked(path: &Path) -> anyhow::Result<File> {
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
    Ok(file)
}

/// The filter a clean close saved for `found`, if it is that header's;
/// the saved copy is removed either way.
fn take_saved_filter(
    filter_path: &Path,
    found: Option<&Header>,
    filter_bytes: usize,
) -> Option<KeyFilter> {
    // A clean close saved the filter for its header: no page is read.
    let saved = found
        .filter(|h| h.clean)
        .and_then(|h| KeyFilter::load(filter_path, &h.hash_key, h.seq, filter_bytes));
    // Whatever happens next, the saved copy describes this file only
    // until its next checkpoint.
    let _ = std::fs::remove_file(filter_path);
    if saved.is_some() {
        tracing::info!(
            path = %filter_path.display(),
            "key filter loaded as saved at the last clean stop; the index pages are not read"
        );
    }
    saved
}

/// The header `found` in the file if the index may go on from it: one for
/// these categories whose pages are intact (read, unless the filter was
/// `loaded`, to fill `filter`). `None` starts the index empty.
fn usable_header(
    file: &File,
    path: &Path,
    found: Option<Header>,
    categories: &[String],
    loaded: bool,
    filter: &KeyFilter,
) -> anyhow::Result<Option<Header>> {
    Ok(match found {
        None if file.metadata()?.len() > 0 => {
            tracing::warn!(
                path = %path.display(),
                "the key index file has no readable header; starting it empty (the streams are read in again)"
            );
            None
        }
        None => None,
        Some(h) if h.categories.iter().map(|c| &c.name).ne(categories.iter()) => {
            tracing::warn!(
                path = %path.display(),
                "the configured categories changed; starting the key index empty (the streams are read in again)"
            );
            None
        }
        Some(h) if loaded => Some(h),
        Some(h) => checked_header(file, path, h, filter)?,
    })
}

/// Every page is read once, to fill the filter; an index not closed
/// cleanly also takes its entry count from them. `None` if a page is
/// damaged.
fn checked_header(
    file: &File,
    path: &Path,
    mut h: Header,
    filter: &KeyFilter,
) -> std::io::Result<Option<Header>> {
    Ok(match check_pages(file, &h.geometry, filter)? {
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
            tracing::warn!(
                path = %path.display(),
                error = %damaged,
                "{how}; starting it empty (the streams are read in again)"
            );
            None
        }
    })
}

/// The header of an index started empty: a new hash key (from
/// `hash_key_seed`), the initial buckets (the file cut to them), nothing
/// covered.
fn empty_header(file: &File, categories: &[String], hash_key_seed: u64) -> std::io::Result<Header> {
    Ok(Header {
        seq: 0,
        clean: false,
        hash_key: bsfg_domain::seed::derive_16_bytes(hash_key_seed, HASH_KEY_PURPOSE),
        geometry: empty_table(file)?,
        entries: 0,
        categories: categories
            .iter()
            .map(|name| CategoryState {
                name: name.clone(),
                through: 0,
                identity: None,
            })
            .collect(),
    })
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
mod tests {
    use super::super::pages::page_position;
    use super::super::tests::{TEST_HASH_KEY_SEED, crash, open, token};
    use super::super::{AlreadyOpen, BUFFERED_ENTRIES_MAX_DEFAULT, FILTER_BYTES_DEFAULT, KeyIndex};
    use std::os::unix::fs::FileExt as _;

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
    fn a_new_index_takes_its_hash_key_from_the_seed_and_a_kept_one_keeps_it() {
        let open_seeded = |dir: &std::path::Path, seed| {
            KeyIndex::open(
                &dir.join("keys.kix"),
                &["ops".into()],
                BUFFERED_ENTRIES_MAX_DEFAULT,
                FILTER_BYTES_DEFAULT,
                seed,
            )
            .unwrap()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = open_seeded(a.path(), 1).hash_key;
        assert_eq!(
            first,
            open_seeded(b.path(), 1).hash_key,
            "same seed, same key"
        );
        let c = tempfile::tempdir().unwrap();
        assert_ne!(first, open_seeded(c.path(), 2).hash_key);
        // Reopened under another seed, the file keeps its key (its buckets
        // were placed by it).
        assert_eq!(open_seeded(a.path(), 2).hash_key, first);
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
            TEST_HASH_KEY_SEED,
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
            TEST_HASH_KEY_SEED,
        )
        .unwrap();
        assert_eq!(
            (other.through("ops"), other.look_up(&[token(1)]).unwrap()),
            (0, vec![None])
        );
    }
}
