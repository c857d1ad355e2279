//! The key index file's format, without I/O: fixed-size bucket pages
//! addressed by linear hashing, and the header that says how many buckets
//! there are and what the entries cover.
//!
//! Why linear hashing: a look-up reads one page and an insert rewrites one
//! page, however many entries the file holds, and the file grows one
//! bucket at a time (a split rewrites one page into two). The random-keyed
//! B-tree this replaced rewrote a path of pages per insert and cost 12.6 µs
//! per fact at 1M entries and 36–53 µs from 3M (BENCHMARKS.md, "The key
//! index as it grows").
//!
//! Why a keyed hash: key tokens are digests of producer-chosen message ids,
//! so a producer could search for ids that share a bucket and force the
//! file to grow without bound. Buckets are chosen by SipHash-1-3 under a
//! random key kept in the header, which a producer cannot know.
//!
//! Why checksums: pages are rewritten in place. A power loss in the middle
//! of a page write can tear it; each page carries a CRC-32 of its bucket
//! number and contents, and a node that was not shut down cleanly checks
//! every page at start-up and rebuilds the index from the streams if one
//! is torn (the index is derived from the streams; see `super`).

use super::Token;
use std::hash::Hasher as _;

pub const PAGE_BYTES: usize = 4096;
const SLOT_BYTES: usize = 32;
const PAGE_HEADER_BYTES: usize = 8;
/// Entries one bucket page holds (127).
pub const SLOTS_PER_PAGE: usize = (PAGE_BYTES - PAGE_HEADER_BYTES) / SLOT_BYTES;

/// The two header copies, each this large, come before the buckets.
pub const HEADER_SLOT_BYTES: usize = 8192;
pub const BUCKETS_FILE_OFFSET: u64 = 2 * HEADER_SLOT_BYTES as u64;

const MAGIC: &[u8; 8] = b"BSFGKIX1";

/// Most categories and longest category name the header holds (the
/// config's own limits are well inside these).
pub const CATEGORIES_MAX: usize = 64;
pub const CATEGORY_NAME_BYTES_MAX: usize = 96;

/// One key: where the fact carrying it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub token: Token,
    pub offset: u64,
    /// Position of the category in the node's configured order.
    pub category: u8,
}

/// The bucket hash of a token under the file's key.
pub fn bucket_hash(key: &[u8; 16], token: &Token) -> u64 {
    let (k0, k1) = (
        u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(key[8..].try_into().expect("8 bytes")),
    );
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
    hasher.write(token);
    hasher.finish()
}

/// Linear hashing: `base = initial << level` buckets are addressed by
/// `hash % base`, except that the first `split` of them have already been
/// split in two, and their hashes are addressed by `hash % (2 * base)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub initial: u64,
    pub level: u32,
    pub split: u64,
}

impl Geometry {
    pub fn new(initial: u64) -> Self {
        assert!(initial > 0, "at least one bucket");
        Self {
            initial,
            level: 0,
            split: 0,
        }
    }

    pub fn base(&self) -> u64 {
        self.initial << self.level
    }

    pub fn buckets(&self) -> u64 {
        self.base() + self.split
    }

    #[cfg(test)]
    pub fn slots(&self) -> u64 {
        self.buckets() * SLOTS_PER_PAGE as u64
    }

    pub fn bucket_of(&self, hash: u64) -> u64 {
        let bucket = hash % self.base();
        if bucket < self.split {
            hash % (2 * self.base())
        } else {
            bucket
        }
    }

    /// Splits the next bucket: returns the geometry after it, the bucket
    /// split, and the new bucket its entries divide with.
    pub fn next_split(&self) -> (Geometry, u64, u64) {
        let (old, new) = (self.split, self.split + self.base());
        let mut next = *self;
        next.split += 1;
        if next.split == self.base() {
            next.level += 1;
            next.split = 0;
        }
        (next, old, new)
    }

    /// Splits left before the buckets double (a checkpoint splits within
    /// one round, so every bucket it splits is split once).
    pub fn splits_left_in_round(&self) -> u64 {
        self.base() - self.split
    }

    /// Splits (within this round) that bring `entries` to at most
    /// `load_percent` of the slots.
    pub fn splits_for_load(&self, entries: u64, load_percent: u64) -> u64 {
        let per_bucket = SLOTS_PER_PAGE as u64 * load_percent;
        let buckets_wanted = (entries * 100).div_ceil(per_bucket);
        buckets_wanted
            .saturating_sub(self.buckets())
            .min(self.splits_left_in_round())
    }

    /// Splits (within this round) after which `bucket` has been split
    /// (0 if it was already split in this round).
    pub fn splits_through(&self, bucket: u64) -> u64 {
        if bucket >= self.split && bucket < self.base() {
            bucket - self.split + 1
        } else {
            0
        }
    }
}

/// A page that fails its checksum or holds impossible contents.
#[derive(Debug, thiserror::Error)]
#[error("key index page of bucket {bucket} is damaged: {why}")]
pub struct DamagedPage {
    pub bucket: u64,
    pub why: &'static str,
}

fn page_checksum(bucket: u64, page: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bucket.to_le_bytes());
    crc.update(&page[4..]);
    crc.finalize()
}

/// The entries of a bucket page. An all-zero page (never written, or past
/// the end of the file) is an empty bucket.
pub fn decode_page(
    bucket: u64,
    page: &[u8; PAGE_BYTES],
    into: &mut Vec<Entry>,
) -> Result<(), DamagedPage> {
    into.clear();
    let stored = u32::from_le_bytes(page[..4].try_into().expect("4 bytes"));
    let count = usize::from(u16::from_le_bytes(page[4..6].try_into().expect("2 bytes")));
    if stored == 0 && count == 0 && page.iter().all(|b| *b == 0) {
        return Ok(());
    }
    if stored != page_checksum(bucket, page) {
        return Err(DamagedPage {
            bucket,
            why: "checksum mismatch",
        });
    }
    if count > SLOTS_PER_PAGE {
        return Err(DamagedPage {
            bucket,
            why: "entry count above the page's slots",
        });
    }
    for slot in page[PAGE_HEADER_BYTES..]
        .chunks_exact(SLOT_BYTES)
        .take(count)
    {
        into.push(Entry {
            token: slot[..16].try_into().expect("16 bytes"),
            offset: u64::from_le_bytes(slot[16..24].try_into().expect("8 bytes")),
            category: slot[24],
        });
    }
    Ok(())
}

/// Writes `entries` as the page of `bucket`.
pub fn encode_page(bucket: u64, entries: &[Entry], page: &mut [u8; PAGE_BYTES]) {
    assert!(
        entries.len() <= SLOTS_PER_PAGE,
        "a bucket page holds at most {SLOTS_PER_PAGE} entries, not {}",
        entries.len()
    );
    page.fill(0);
    page[4..6].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (slot, entry) in page[PAGE_HEADER_BYTES..]
        .chunks_exact_mut(SLOT_BYTES)
        .zip(entries)
    {
        slot[..16].copy_from_slice(&entry.token);
        slot[16..24].copy_from_slice(&entry.offset.to_le_bytes());
        slot[24] = entry.category;
    }
    let crc = page_checksum(bucket, page);
    page[..4].copy_from_slice(&crc.to_le_bytes());
}

/// What one category's entries cover, as of the header's writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryState {
    pub name: String,
    /// Every offset at or below this is indexed (or gone from the stream).
    pub through: u64,
    /// The stream (its creation time) the entries were read from.
    pub identity: Option<u64>,
}

/// The file header. Two copies alternate (by `seq`), so a torn header
/// write leaves the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    /// Written `true` only by an orderly close: otherwise every page is
    /// checked at start-up.
    pub clean: bool,
    pub hash_key: [u8; 16],
    pub geometry: Geometry,
    /// Entries in the bucket pages (including stale ones not yet dropped).
    pub entries: u64,
    pub categories: Vec<CategoryState>,
}

impl Header {
    /// Which of the two header copies this header is written to.
    pub fn copy_index(&self) -> u64 {
        self.seq % 2
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.categories.len() <= CATEGORIES_MAX,
            "at most {CATEGORIES_MAX} categories"
        );
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.push(u8::from(self.clean));
        body.extend_from_slice(&self.hash_key);
        body.extend_from_slice(&self.geometry.initial.to_le_bytes());
        body.extend_from_slice(&self.geometry.level.to_le_bytes());
        body.extend_from_slice(&self.geometry.split.to_le_bytes());
        body.extend_from_slice(&self.entries.to_le_bytes());
        body.push(self.categories.len() as u8);
        for c in &self.categories {
            assert!(
                c.name.len() <= CATEGORY_NAME_BYTES_MAX,
                "category name too long for the key index header"
            );
            body.push(c.name.len() as u8);
            body.extend_from_slice(c.name.as_bytes());
            body.extend_from_slice(&c.through.to_le_bytes());
            body.push(u8::from(c.identity.is_some()));
            body.extend_from_slice(&c.identity.unwrap_or(0).to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER_SLOT_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        assert!(
            out.len() <= HEADER_SLOT_BYTES,
            "the key index header fits its slot"
        );
        out
    }

    /// A header copy, or `None` if it is missing, torn or of another format.
    pub fn decode(copy: &[u8]) -> Option<Header> {
        if copy.len() < 16 || &copy[..8] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(copy[8..12].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(copy[12..16].try_into().ok()?);
        let body = copy.get(16..16 + len)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        let mut r = Reader(body);
        let seq = r.u64()?;
        let clean = r.u8()? == 1;
        let hash_key = r.bytes(16)?.try_into().ok()?;
        let geometry = Geometry {
            initial: r.u64()?,
            level: u32::from_le_bytes(r.bytes(4)?.try_into().ok()?),
            split: r.u64()?,
        };
        // Twice the base must fit in 64 bits: a split bucket's hashes are
        // addressed modulo it.
        let doubled_fits = geometry.initial.leading_zeros() > geometry.level;
        if geometry.initial == 0
            || geometry.level > 40
            || !doubled_fits
            || geometry.split >= geometry.base()
        {
            return None;
        }
        let entries = r.u64()?;
        let count = usize::from(r.u8()?);
        let mut categories = Vec::with_capacity(count);
        for _ in 0..count {
            let name_len = usize::from(r.u8()?);
            let name = String::from_utf8(r.bytes(name_len)?.to_vec()).ok()?;
            let through = r.u64()?;
            let has_identity = r.u8()? == 1;
            let identity = r.u64()?;
            categories.push(CategoryState {
                name,
                through,
                identity: has_identity.then_some(identity),
            });
        }
        Some(Header {
            seq,
            clean,
            hash_key,
            geometry,
            entries,
            categories,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8, offset: u64) -> Entry {
        Entry {
            token: [n; 16],
            offset,
            category: n % 3,
        }
    }

    #[test]
    fn a_page_round_trips_and_detects_damage() {
        let entries: Vec<Entry> = (1..=SLOTS_PER_PAGE as u8)
            .map(|n| entry(n, u64::from(n) * 1000))
            .collect();
        let mut page = [0u8; PAGE_BYTES];
        encode_page(7, &entries, &mut page);
        let mut decoded = Vec::new();
        decode_page(7, &page, &mut decoded).unwrap();
        assert_eq!(decoded, entries);
        assert!(
            decode_page(8, &page, &mut decoded).is_err(),
            "a page read at another bucket's place is refused"
        );
        let mut torn = page;
        torn[PAGE_BYTES - 100] ^= 1;
        assert!(
            decode_page(7, &torn, &mut decoded).is_err(),
            "a torn page is refused"
        );
        decode_page(9, &[0u8; PAGE_BYTES], &mut decoded).unwrap();
        assert!(decoded.is_empty(), "a zero page is an empty bucket");
        encode_page(3, &[], &mut page);
        decode_page(3, &page, &mut decoded).unwrap();
        assert!(decoded.is_empty());
    }

    #[test]
    fn splitting_moves_each_hash_to_exactly_one_of_the_two_buckets() {
        let mut g = Geometry::new(4);
        let hashes: Vec<u64> = (0..10_000u64)
            .map(|n| {
                bucket_hash(
                    &[7; 16],
                    &[
                        (n % 251) as u8,
                        (n / 251) as u8,
                        3,
                        4,
                        5,
                        6,
                        7,
                        8,
                        9,
                        10,
                        11,
                        12,
                        13,
                        14,
                        15,
                        16,
                    ],
                )
            })
            .collect();
        for _ in 0..37 {
            let (next, old, new) = g.next_split();
            for &h in &hashes {
                let (before, after) = (g.bucket_of(h), next.bucket_of(h));
                if before == old {
                    assert!(
                        after == old || after == new,
                        "an entry of the split bucket stays or moves to the new one"
                    );
                } else {
                    assert_eq!(before, after, "entries of other buckets do not move");
                }
                assert!(after < next.buckets());
            }
            g = next;
        }
        assert_eq!(
            (g.level, g.split, g.buckets()),
            (3, 9, 41),
            "4 + 8 + 16 splits double thrice, 9 more into the fourth round"
        );
        // The hash is uniform: bucket 0, split in this round, gets 1/64 of
        // the hashes (156 expected; the range is about 4 standard deviations).
        let in_zero = hashes.iter().filter(|h| g.bucket_of(**h) == 0).count();
        assert!(
            (106..206).contains(&in_zero),
            "{in_zero} of 10000 in bucket 0"
        );
    }

    #[test]
    fn split_counts_stay_within_the_round() {
        let g = Geometry {
            initial: 4,
            level: 1,
            split: 3,
        };
        assert_eq!(
            (g.base(), g.buckets(), g.splits_left_in_round()),
            (8, 11, 5)
        );
        assert_eq!(g.splits_for_load(0, 40), 0);
        assert_eq!(g.splits_for_load(11 * 127 * 40 / 100, 40), 0);
        assert_eq!(g.splits_for_load(12 * 127 * 40 / 100, 40), 1);
        assert_eq!(
            g.splits_for_load(1_000_000, 40),
            5,
            "no further than the round"
        );
        assert_eq!(
            (
                g.splits_through(5),
                g.splits_through(3),
                g.splits_through(2),
                g.splits_through(9)
            ),
            (3, 1, 0, 0)
        );
    }

    #[test]
    fn a_header_round_trips_and_a_torn_one_is_refused() {
        let header = Header {
            seq: 9,
            clean: true,
            hash_key: [5; 16],
            geometry: Geometry {
                initial: 256,
                level: 2,
                split: 17,
            },
            entries: 123_456,
            categories: vec![
                CategoryState {
                    name: "operational".into(),
                    through: 99,
                    identity: Some(17),
                },
                CategoryState {
                    name: "audit".into(),
                    through: 0,
                    identity: None,
                },
            ],
        };
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Some(header.clone()));
        let mut torn = bytes.clone();
        torn[30] ^= 0x40;
        assert_eq!(Header::decode(&torn), None);
        assert_eq!(
            Header::decode(&[0u8; 64]),
            None,
            "an empty copy is no header"
        );
        assert_eq!(header.copy_index(), 1);
    }

    /// Pages and headers are read back from disk: whatever the bytes, the
    /// decoders refuse them or yield something usable; never a panic.
    mod damaged {
        use super::*;
        use proptest::prelude::*;

        fn a_header_copy(body: &[u8]) -> Vec<u8> {
            let mut copy = MAGIC.to_vec();
            copy.extend_from_slice(&(body.len() as u32).to_le_bytes());
            copy.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            copy.extend_from_slice(body);
            copy
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn a_page_with_flipped_bytes(
                count in 0..=SLOTS_PER_PAGE,
                flips in proptest::collection::vec((0..PAGE_BYTES, 1..=u8::MAX), 0..6),
            ) {
                let entries: Vec<Entry> = (0..count)
                    .map(|n| Entry { token: [n as u8; 16], offset: n as u64, category: 1 })
                    .collect();
                let mut page = [0u8; PAGE_BYTES];
                encode_page(5, &entries, &mut page);
                let mut damaged = page;
                for (at, mask) in &flips {
                    damaged[*at] ^= mask;
                }
                let mut decoded = Vec::new();
                match decode_page(5, &damaged, &mut decoded) {
                    Ok(()) if damaged == page => prop_assert_eq!(decoded, entries),
                    Ok(()) => prop_assert!(decoded.len() <= SLOTS_PER_PAGE),
                    Err(_) => prop_assert!(damaged != page),
                }
            }

            #[test]
            fn a_header_body_of_any_bytes_with_a_valid_checksum(
                body in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                if let Some(header) = Header::decode(&a_header_copy(&body)) {
                    // Usable: its geometry addresses buckets, and it encodes
                    // to a copy that decodes to the same header.
                    let g = header.geometry;
                    prop_assert!(g.bucket_of(u64::MAX) < g.buckets());
                    prop_assert_eq!(Header::decode(&header.encode()), Some(header));
                }
            }

            #[test]
            fn a_geometry_at_any_level(initial in 1..u64::MAX, level in 0..=40u32, split in any::<u64>()) {
                let mut body = vec![0u8; 9 + 16];
                body.extend_from_slice(&initial.to_le_bytes());
                body.extend_from_slice(&level.to_le_bytes());
                body.extend_from_slice(&split.to_le_bytes());
                body.extend_from_slice(&[0u8; 9]);
                if let Some(header) = Header::decode(&a_header_copy(&body)) {
                    let g = header.geometry;
                    prop_assert!(g.bucket_of(u64::MAX) < g.buckets());
                    prop_assert!(g.bucket_of(0) < g.buckets());
                }
            }
        }
    }
}
