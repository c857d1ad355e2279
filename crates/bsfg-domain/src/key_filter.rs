//! A fixed-size Bloom filter over idempotency key tokens.
//!
//! Why: an append must know whether its key already has a fact in a
//! category *other* than its own (same `message_id`, different subject
//! kind), which costs a JetStream round trip per batch and category — about
//! as long as the publish itself. Almost every key is new, so a filter that
//! can answer "certainly not stored here" removes that round trip from the
//! common case. It never answers "certainly stored": a possible hit still
//! goes to JetStream, so a false positive costs a look-up, never a wrong
//! answer.
//!
//! The memory is fixed at construction (`bits`), whatever the backlog; past
//! its design load the false-positive rate rises and more appends fall back
//! to the look-up. Keys are never removed (retention only removes facts, so
//! the filter only over-approximates).

use crate::identity::KEY_TOKEN_HEX_LEN;

/// Bit probes per key; 7 is optimal near 10 bits per key (≈ 1 % false positives).
const PROBES: u64 = 7;

#[derive(Debug, Clone)]
pub struct KeyFilter {
    words: Vec<u64>,
    bits: u64,
    inserted: u64,
}

impl KeyFilter {
    /// A filter of `bits` bits (rounded up to a multiple of 64, at least 64).
    pub fn new(bits: u64) -> Self {
        let words = bits.div_ceil(64).max(1);
        Self { words: vec![0; words as usize], bits: words * 64, inserted: 0 }
    }

    pub fn insert(&mut self, token: &str) {
        for bit in probes(token, self.bits) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }

    /// `false`: the token was certainly never inserted. `true`: it may have been.
    pub fn may_contain(&self, token: &str) -> bool {
        probes(token, self.bits).all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Insertions so far (repeats counted), to judge the load.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Bit positions for a token by double hashing. A key token is already a
/// SHA-256 prefix in hex, so its halves are uniform hash values; any other
/// string is hashed first, so the filter is correct for every input.
fn probes(token: &str, bits: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = token_hashes(token);
    (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

fn token_hashes(token: &str) -> (u64, u64) {
    let parse = |s: &str| u64::from_str_radix(s, 16).ok();
    if token.len() == KEY_TOKEN_HEX_LEN {
        if let (Some(a), Some(b)) = (parse(&token[..16]), parse(&token[16..])) {
            return (a, b | 1);
        }
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let word = |i: usize| u64::from_be_bytes(digest[i..i + 8].try_into().expect("8 bytes"));
    (word(0), word(8) | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::key_token;

    #[test]
    fn every_inserted_token_is_found() {
        let mut filter = KeyFilter::new(1 << 16);
        let tokens: Vec<String> = (0..5000).map(|i| key_token("plant-a", &format!("m-{i}"))).collect();
        for t in &tokens {
            filter.insert(t);
        }
        assert!(tokens.iter().all(|t| filter.may_contain(t)), "a Bloom filter has no false negatives");
        assert_eq!(filter.inserted(), 5000);
        // Strings that are not key tokens take the hashed path, also without misses.
        filter.insert("not-a-token");
        assert!(filter.may_contain("not-a-token"));
    }

    #[test]
    fn unseen_tokens_are_mostly_ruled_out_at_design_load() {
        // 10 bits per key: about 1 % false positives expected.
        let mut filter = KeyFilter::new(100_000);
        for i in 0..10_000 {
            filter.insert(&key_token("plant-a", &format!("in-{i}")));
        }
        let false_positives = (0..10_000).filter(|i| filter.may_contain(&key_token("plant-a", &format!("out-{i}")))).count();
        assert!(false_positives < 300, "{false_positives} of 10000 unseen tokens reported as possible");
        let empty = KeyFilter::new(100_000);
        assert!(!empty.may_contain(&key_token("plant-a", "x")), "an empty filter rules everything out");
    }

    #[test]
    fn size_is_fixed_and_rounded_to_words() {
        assert_eq!(KeyFilter::new(1).bytes(), 8);
        assert_eq!(KeyFilter::new(65).bytes(), 16);
        let mut filter = KeyFilter::new(1 << 20);
        for i in 0..100_000 {
            filter.insert(&format!("{i}"));
        }
        assert_eq!(filter.bytes(), (1 << 20) / 8, "memory does not grow with insertions");
    }
}
