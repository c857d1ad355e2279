//! A fixed-size Bloom filter over every token the index holds.
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

use super::Token;
use std::sync::atomic::{AtomicU64, Ordering};

/// 4 MiB: with 4 probes, a new key still reads a page with probability
/// ≈ 0.02 % at 1M entries, 2.4 % at 4M and 14 % at 8M.
pub const FILTER_BYTES: usize = 4 << 20;
const PROBES: u64 = 4;

pub struct KeyFilter {
    words: Box<[AtomicU64]>,
    bit_mask: u64,
}

impl KeyFilter {
    pub fn new(bytes: usize) -> Self {
        assert!(bytes.is_power_of_two() && bytes >= 8, "the filter is a power of two of at least 8 bytes");
        Self { words: (0..bytes / 8).map(|_| AtomicU64::new(0)).collect(), bit_mask: (bytes as u64 * 8) - 1 }
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
        self.bits(token).all(|bit| self.words[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> Token {
        super::super::token_bytes(&bsfg_domain::identity::key_token("filter", &n.to_string())).unwrap()
    }

    #[test]
    fn never_denies_an_inserted_token_and_denies_most_others() {
        let filter = KeyFilter::new(64 * 1024);
        for n in 0..20_000 {
            filter.insert(&token(n));
        }
        assert!((0..20_000).all(|n| filter.may_contain(&token(n))), "an inserted token was denied");
        // 20,000 tokens in 512 Ki bits with 4 probes: ≈ 0.03 % false positives.
        let false_positives = (20_000..120_000).filter(|&n| filter.may_contain(&token(n))).count();
        assert!(false_positives < 200, "{false_positives} of 100,000 absent tokens passed");
    }
}
