//! Request text bounded for a log line or a message.
//!
//! Why: a request's fields go into log lines, audit records and rejection
//! messages (which are logged too). Before they are validated they can be
//! as long as a request: a 1 MiB message_id made a 1 MiB log line. Every
//! request-controlled value that is echoed goes through [`bounded`]: short
//! values unchanged, long ones cut with their length and a hash, so two
//! long values can still be told apart (and matched with the request).

use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The most bytes of a value kept by [`bounded`].
pub const ECHO_BYTES_MAX: usize = 256;

/// `value` if it is at most [`ECHO_BYTES_MAX`] bytes; otherwise its first
/// bytes up to that bound (cut on a character boundary) followed by
/// `…(<length> bytes, sha256 <first 16 hex digits>)`.
pub fn bounded(value: &str) -> Cow<'_, str> {
    bounded_to(value, ECHO_BYTES_MAX)
}

/// As [`bounded`], keeping `value` itself when it is short enough.
pub fn bounded_owned(value: String) -> String {
    if value.len() <= ECHO_BYTES_MAX {
        value
    } else {
        bounded(&value).into_owned()
    }
}

/// The most bytes of a whole message (e.g. a rejection's) in a log line. The
/// values a message echoes are bounded where it is built; this is the last
/// guard for a line.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024;

/// As [`bounded`], with another bound (for text that may legitimately be
/// longer, such as a whole rejection message).
pub fn bounded_to(value: &str, bytes_max: usize) -> Cow<'_, str> {
    if value.len() <= bytes_max {
        return Cow::Borrowed(value);
    }
    let mut end = bytes_max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let hash = hex::encode(&Sha256::digest(value.as_bytes())[..8]);
    Cow::Owned(format!(
        "{}…({} bytes, sha256 {hash})",
        &value[..end],
        value.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_unchanged_long_ones_cut_with_length_and_hash() {
        assert!(matches!(bounded("m-1"), Cow::Borrowed("m-1")));
        let exact = "x".repeat(ECHO_BYTES_MAX);
        assert_eq!(bounded(&exact), exact.as_str());
        let long = "x".repeat(1024 * 1024);
        let cut = bounded(&long);
        let hash = hex::encode(&Sha256::digest(long.as_bytes())[..8]);
        assert_eq!(
            cut,
            format!(
                "{}…(1048576 bytes, sha256 {hash})",
                "x".repeat(ECHO_BYTES_MAX)
            )
        );
        assert!(cut.len() < ECHO_BYTES_MAX + 64);
        // Cut on a character boundary: 'é' is two bytes, so 128 of them
        // fill the bound exactly and the 129th is left out whole.
        let accents = "é".repeat(200);
        assert!(bounded(&accents).starts_with(&"é".repeat(128)));
        let odd = format!("x{}", "é".repeat(200));
        assert!(bounded(&odd).starts_with(&format!("x{}…(401 bytes", "é".repeat(127))));
        assert_eq!(bounded_to("abcdef", 3).split('…').next(), Some("abc"));
        assert_eq!(bounded_owned("m-1".into()), "m-1");
        assert_eq!(bounded_owned(long.clone()), cut);
    }
}
