//! Object keys and content digests.

use super::{bounded_text, required};
use crate::bounded::bounded;
use crate::limits::Limits;
use crate::reason::Reason;
use crate::rejection::Rejection;

/// An object key: a relative path of non-empty segments; no `.`/`..`
/// segments, no backslash, no control characters, no leading `/`, and not
/// in the node's reserved `_bsfg/` namespace.
pub fn object_key(value: &str, limits: &Limits) -> Result<(), Rejection> {
    required("key", value)?;
    bounded_text("key", value, limits.object_key_bytes_max)?;
    let bad = |why: &str| {
        Rejection::invalid(
            Reason::BadObjectKey,
            format!("key {:?} {why}", bounded(value)),
        )
    };
    if value.contains('\\') {
        return Err(bad("contains a backslash; use '/' to separate segments"));
    }
    if value
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(bad(
            "has an empty, '.' or '..' segment (no absolute paths, no traversal)",
        ));
    }
    if value.starts_with(RESERVED_KEY_PREFIX) {
        return Err(bad("is in the reserved _bsfg/ namespace"));
    }
    Ok(())
}

/// Object keys under this prefix belong to the node (content blobs).
pub const RESERVED_KEY_PREFIX: &str = "_bsfg/";

/// `sha256:` followed by 64 lower-case hex digits.
pub fn digest(field: &str, value: &str) -> Result<(), Rejection> {
    let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    });
    if !ok {
        return Err(Rejection::invalid(
            Reason::BadDigest,
            format!(
                "{field} {:?} must be sha256: followed by 64 lower-case hex digits",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_refuse_traversal() {
        let limits = Limits::default();
        object_key("batch/B1042/record.pdf", &limits).unwrap();
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a//b",
            "a\\b",
            "a\u{7}b",
            "_bsfg/blob",
            "a/.",
        ] {
            assert!(object_key(bad, &limits).is_err(), "{bad:?}");
        }
        assert!(object_key(&"k".repeat(limits.object_key_bytes_max + 1), &limits).is_err());
    }
}
