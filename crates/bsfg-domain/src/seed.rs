//! Every random choice of a node from one seed.
//!
//! A node draws one root seed at start (or takes `random_seed` from its
//! configuration) and logs it; each purpose (the key index's hash key, a
//! link's retry jitter) derives its own value from the root and the
//! purpose's name. So a run that failed replays its random choices from
//! the logged seed, and tests pass a fixed one.
//!
//! Invariants: the same root and purpose give the same value; different
//! purposes give unrelated values (SplitMix64 over the root and a hash of
//! the name).

/// The value for `purpose` under `root`.
pub fn derive(root: u64, purpose: &str) -> u64 {
    splitmix64(root ^ fnv1a(purpose.as_bytes()))
}

/// Sixteen bytes for `purpose` under `root` (e.g. a SipHash key).
pub fn derive_16_bytes(root: u64, purpose: &str) -> [u8; 16] {
    let first = derive(root, purpose);
    let second = splitmix64(first);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&first.to_le_bytes());
    out[8..].copy_from_slice(&second.to_le_bytes());
    out
}

/// One step of SplitMix64 (Steele, Lea, Flood 2014): a bijection that
/// spreads nearby inputs over the whole range.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits: a purpose's name as a number.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_root_and_purpose_replay_and_purposes_differ() {
        assert_eq!(derive(7, "link/idmz"), derive(7, "link/idmz"));
        assert_ne!(derive(7, "link/idmz"), derive(7, "link/plant-a"));
        assert_ne!(derive(7, "link/idmz"), derive(8, "link/idmz"));
        let key = derive_16_bytes(7, "key_index/hash_key");
        assert_eq!(key, derive_16_bytes(7, "key_index/hash_key"));
        assert_ne!(key[..8], key[8..], "the two halves are not one value twice");
    }
}
