//! A Bloom filter of fixed size (configured) over every token the index holds.
//!
//! Why: almost every append looks up a key that is new, and without the
//! filter each such look-up reads and checks a 4 KiB page only to find the
//! key absent (≈ 7 µs per key at 1M entries, `bsfg-bench key-index`; 5 % of
//! the node's CPU per append at c64). The filter answers "certainly absent"
//! for most new keys from memory.
//!
//! It may only err towards "maybe present" (then the page is read, as
//! before), so it never loses a key: every token is added before it can be
//! found anywhere (`KeyIndex::record` adds it before buffering it, start-up
//! adds every token in the pages), and nothing is ever removed (a forgotten
//! or truncated key only costs a page read). Its size is fixed, so memory
//! stays bounded however large the index grows; a fuller filter only
//! answers "maybe" more often. Tokens are digests, so their bytes serve as
//! the filter's hashes directly.
//!
//! Why it is saved at a clean close: filling it reads every page of the
//! index, which grows with the retained facts (0.35–0.68 s at 4M entries
//! on this machine's disk, minutes at a billion). A clean close writes the
//! filter beside the index, bound to that close's header; the next start
//! loads it (one sequential read of its size) instead. After a crash, or if the saved copy
//! does not match, the pages are read as before; they have to be checked
//! then anyway.

use super::Token;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// 4 MiB by default (`[commit] key_filter_bytes`): with 4 probes, a new
/// key still reads a page with probability ≈ 0.02 % at 1M entries, 2.4 %
/// at 4M and 14 % at 8M.
pub const FILTER_BYTES_DEFAULT: usize = 4 << 20;
const PROBES: u64 = 4;

pub struct KeyFilter {
    words: Box<[AtomicU64]>,
    bit_mask: u64,
}

impl KeyFilter {
    pub fn new(bytes: usize) -> Self {
        assert!(
            bytes.is_power_of_two() && bytes >= 8,
            "the filter is a power of two of at least 8 bytes"
        );
        Self {
            words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(),
            bit_mask: (bytes as u64 * 8) - 1,
        }
    }

    /// The bits of `token`: double hashing over its two halves.
    fn bits(&self, token: &Token) -> impl Iterator<Item = u64> + use<> {
        let first = u64::from_le_bytes(token[..8].try_into().expect("8 bytes"));
        let step = u64::from_le_bytes(token[8..].try_into().expect("8 bytes")) | 1;
        let mask = self.bit_mask;
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(step)) & mask)
    }

    pub fn insert(&self, token: &Token) {
        for bit in self.bits(token) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Release);
        }
    }

    /// False only if `token` was never inserted.
    pub fn may_contain(&self, token: &Token) -> bool {
        self.bits(token).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0
        })
    }

    /// Writes the filter to `path` for the next start-up, bound to the
    /// index file it describes (`hash_key`, random per file) and to the
    /// header it was saved with (`seq`, which every checkpoint raises):
    /// magic, hash key, seq, length, the bits, a CRC-32 of all before it.
    /// Streamed, so saving costs no second copy of the filter in memory.
    pub fn save(&self, path: &Path, hash_key: &[u8; 16], seq: u64) -> std::io::Result<()> {
        // Owner-only, like the index it is bound to.
        let file = crate::owner_only::open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        crate::owner_only::restrict(&file)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let mut crc = crc32fast::Hasher::new();
        let mut put = |bytes: &[u8]| -> std::io::Result<()> {
            crc.update(bytes);
            out.write_all(bytes)
        };
        put(SAVED_MAGIC)?;
        put(hash_key)?;
        put(&seq.to_le_bytes())?;
        put(&(self.words.len() as u64 * 8).to_le_bytes())?;
        for word in self.words.iter() {
            put(&word.load(Ordering::Acquire).to_le_bytes())?;
        }
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.into_inner().map_err(|e| e.into_error())?.sync_data()
    }

    /// The filter saved at `path` for exactly this file and header, if it
    /// reads back intact; anything else (missing, torn, another file, an
    /// older or newer checkpoint, another size) is None, and the caller
    /// fills a filter from the pages instead. Streamed, like `save`.
    pub fn load(path: &Path, hash_key: &[u8; 16], seq: u64, bytes_expected: usize) -> Option<Self> {
        let file = std::fs::File::open(path).ok()?;
        if file.metadata().ok()?.len() != (SAVED_HEAD_BYTES + bytes_expected + 4) as u64 {
            return None;
        }
        let mut input = std::io::BufReader::with_capacity(1 << 16, file);
        let mut crc = crc32fast::Hasher::new();
        let mut head = [0u8; SAVED_HEAD_BYTES];
        input.read_exact(&mut head).ok()?;
        crc.update(&head);
        let seq_saved = u64::from_le_bytes(head[24..32].try_into().ok()?);
        let len_saved = u64::from_le_bytes(head[32..40].try_into().ok()?);
        if &head[..8] != SAVED_MAGIC
            || &head[8..24] != hash_key
            || seq_saved != seq
            || len_saved != bytes_expected as u64
        {
            return None;
        }
        let filter = Self::new(bytes_expected);
        let mut word = [0u8; 8];
        for slot in filter.words.iter() {
            input.read_exact(&mut word).ok()?;
            crc.update(&word);
            slot.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        let mut saved_crc = [0u8; 4];
        input.read_exact(&mut saved_crc).ok()?;
        (crc.finalize().to_le_bytes() == saved_crc).then_some(filter)
    }
}

const SAVED_MAGIC: &[u8; 8] = b"BSFGKF01";
/// Magic, hash key, seq, length.
const SAVED_HEAD_BYTES: usize = 8 + 16 + 8 + 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> Token {
        super::super::token_bytes(&bsfg_domain::identity::key_token("filter", &n.to_string()))
            .unwrap()
    }

    #[test]
    fn never_denies_an_inserted_token_and_denies_most_others() {
        let filter = KeyFilter::new(64 * 1024);
        for n in 0..20_000 {
            filter.insert(&token(n));
        }
        assert!(
            (0..20_000).all(|n| filter.may_contain(&token(n))),
            "an inserted token was denied"
        );
        // 20,000 tokens in 512 Ki bits with 4 probes: ≈ 0.03 % false positives.
        let false_positives = (20_000..120_000)
            .filter(|&n| filter.may_contain(&token(n)))
            .count();
        assert!(
            false_positives < 200,
            "{false_positives} of 100,000 absent tokens passed"
        );
    }

    #[test]
    fn a_saved_filter_loads_only_for_its_own_file_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.kix.filter");
        let filter = KeyFilter::new(4096);
        (0..500).for_each(|n| filter.insert(&token(n)));
        filter.save(&path, &[7; 16], 42).unwrap();
        let loaded =
            KeyFilter::load(&path, &[7; 16], 42, 4096).expect("the same file and header load");
        assert!(
            (0..500).all(|n| loaded.may_contain(&token(n))),
            "every saved token is in the loaded filter"
        );
        assert!(
            KeyFilter::load(&path, &[8; 16], 42, 4096).is_none(),
            "another index file"
        );
        assert!(
            KeyFilter::load(&path, &[7; 16], 41, 4096).is_none(),
            "another checkpoint"
        );
        assert!(
            KeyFilter::load(&path, &[7; 16], 42, 8192).is_none(),
            "another size"
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            KeyFilter::load(&path, &[7; 16], 42, 4096).is_none(),
            "a flipped bit fails the checksum"
        );
        bytes.truncate(50);
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            KeyFilter::load(&path, &[7; 16], 42, 4096).is_none(),
            "a torn file"
        );
    }
}
