//! Where the file keeps its header copies and bucket pages, and reading and
//! writing them (the bytes of each are in `format`).

use super::filter::KeyFilter;
use super::format::{
    self, BUCKETS_FILE_OFFSET, Entry, Geometry, HEADER_SLOT_BYTES, Header, PAGE_BYTES,
    SLOTS_PER_PAGE,
};
use super::{KeyIndex, Writes};
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::Ordering;

/// Buckets of a new file (1 MiB of pages).
pub(super) const BUCKETS_INITIAL: u64 = 256;
/// Bucket pages read per call by the start-up check.
const CHECK_CHUNK_PAGES: usize = 256;

impl KeyIndex {
    /// The writer's read of a bucket's entries (readers take the geometry
    /// lock instead; only the writer changes pages).
    pub(super) fn load_bucket(
        &self,
        writes: &mut Writes,
        bucket: u64,
        into: &mut Vec<Entry>,
    ) -> anyhow::Result<()> {
        read_page(&self.file, bucket, &mut writes.page)?;
        self.decode(bucket, &writes.page, into)
    }

    /// A page's entries; a page that fails its check marks the index
    /// damaged (see [`KeyIndex::rebuild`]).
    pub(super) fn decode(
        &self,
        bucket: u64,
        page: &[u8; PAGE_BYTES],
        into: &mut Vec<Entry>,
    ) -> anyhow::Result<()> {
        format::decode_page(bucket, page, into).map_err(|damaged| {
            self.damaged.store(true, Ordering::Release);
            anyhow::Error::from(damaged)
        })
    }

    /// Writes a bucket page readers may be reading.
    pub(super) fn write_bucket(
        &self,
        writes: &mut Writes,
        bucket: u64,
        entries: &[Entry],
    ) -> std::io::Result<()> {
        format::encode_page(bucket, entries, &mut writes.page);
        let _no_readers = self.geometry.write().expect("key index geometry poisoned");
        self.file
            .write_all_at(&writes.page[..], page_position(bucket))
    }
}

/// Cuts the file to its header and the initial, empty buckets, and
/// returns their geometry.
pub(super) fn empty_table(file: &File) -> std::io::Result<Geometry> {
    file.set_len(BUCKETS_FILE_OFFSET)?;
    file.set_len(page_position(BUCKETS_INITIAL))?;
    Ok(Geometry::new(BUCKETS_INITIAL))
}

pub(super) fn page_position(bucket: u64) -> u64 {
    BUCKETS_FILE_OFFSET + bucket * PAGE_BYTES as u64
}

/// Reads `buf.len()` bytes at `at`; what lies past the end of the file
/// reads as zeros (an empty bucket).
fn read_at_or_zero(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => {
                buf[filled..].fill(0);
                break;
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn read_page(
    file: &File,
    bucket: u64,
    page: &mut [u8; PAGE_BYTES],
) -> std::io::Result<()> {
    read_at_or_zero(file, &mut page[..], page_position(bucket))
}

/// The newer of the two header copies that read back intact.
pub(super) fn read_header(file: &File) -> std::io::Result<Option<Header>> {
    let mut copies = vec![0u8; 2 * HEADER_SLOT_BYTES];
    read_at_or_zero(file, &mut copies, 0)?;
    let (a, b) = copies.split_at(HEADER_SLOT_BYTES);
    Ok([Header::decode(a), Header::decode(b)]
        .into_iter()
        .flatten()
        .max_by_key(|h| h.seq))
}

/// Checks every bucket page of `geometry` and adds their tokens to
/// `filter`; the entries they hold, or the first damaged page.
pub(super) fn check_pages(
    file: &File,
    geometry: &Geometry,
    filter: &KeyFilter,
) -> std::io::Result<Result<u64, format::DamagedPage>> {
    let mut chunk = vec![0u8; CHECK_CHUNK_PAGES * PAGE_BYTES];
    let (mut entries, mut count, mut bucket) = (Vec::with_capacity(SLOTS_PER_PAGE), 0u64, 0u64);
    while bucket < geometry.buckets() {
        let pages = (geometry.buckets() - bucket).min(CHECK_CHUNK_PAGES as u64) as usize;
        read_at_or_zero(
            file,
            &mut chunk[..pages * PAGE_BYTES],
            page_position(bucket),
        )?;
        for (i, page) in chunk[..pages * PAGE_BYTES]
            .chunks_exact(PAGE_BYTES)
            .enumerate()
        {
            let page: &[u8; PAGE_BYTES] = page.try_into().expect("a page");
            if let Err(damaged) = format::decode_page(bucket + i as u64, page, &mut entries) {
                return Ok(Err(damaged));
            }
            entries.iter().for_each(|e| filter.insert(&e.token));
            count += entries.len() as u64;
        }
        bucket += pages as u64;
    }
    Ok(Ok(count))
}
