//! Transport validity: the only checks the boundary makes before a write.
//!
//! Grammar is deliberately strict where a value becomes part of a NATS
//! subject or an object name (zone, subject kind, predicate, bucket), and
//! lenient but bounded everywhere else. Nothing here looks at business
//! meaning.

mod envelope;
mod fact;
mod media_type;
mod names;
mod object_json;
mod objects;

pub use envelope::envelope;
pub use fact::{ValidFact, fact};
pub use media_type::media_type;
pub use names::{bucket, consumer_name, predicate, subject, zone};
pub use object_json::canonical_object_json;
pub use objects::{RESERVED_KEY_PREFIX, digest, object_key};

use crate::reason::Reason;
use crate::rejection::Rejection;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn bounded_text(field: &str, value: &str, bytes_max: usize) -> Result<(), Rejection> {
    if value.len() > bytes_max {
        return Err(Rejection::invalid(
            Reason::FieldTooLong,
            format!("{field} is {} bytes; the limit is {bytes_max}", value.len()),
        ));
    }
    if has_control(value) {
        return Err(Rejection::invalid(
            Reason::ControlCharacter,
            format!("{field} contains a control character; remove it"),
        ));
    }
    Ok(())
}

fn required(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(
            Reason::MissingField,
            format!("{field} is required"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    /// Rejection messages echo request values bounded (they are logged,
    /// and returned to the caller).
    #[test]
    fn rejections_echo_long_values_bounded() {
        let limits = Limits::default();
        let long = "Q".repeat(1024 * 1024);
        let refusals = [
            zone("envelope.from_zone", &long).unwrap_err(),
            subject(&long).unwrap_err(),
            predicate(&long).unwrap_err(),
            consumer_name(&long).unwrap_err(),
            bucket(&long).unwrap_err(),
            digest("d", &long).unwrap_err(),
            media_type("media_type", &long).unwrap_err(),
            canonical_object_json(
                &format!("{{\"{long}\":1,\"{long}\":2}}"),
                &Limits {
                    object_json_bytes_max: 4 << 20,
                    ..limits.clone()
                },
            )
            .unwrap_err(),
        ];
        for r in refusals {
            assert!(
                r.message.len() < 1024,
                "{}: {} bytes",
                r.reason,
                r.message.len()
            );
            assert!(
                r.message.contains("…(1048576 bytes, sha256 "),
                "{}",
                r.message
            );
        }
    }

    #[test]
    fn zones_buckets_digests() {
        zone("z", "plant-a").unwrap();
        assert!(zone("z", "Plant-A").is_err());
        assert!(zone("z", "plant.a").is_err());
        bucket("records").unwrap();
        assert!(bucket("Records").is_err());
        digest("d", &format!("sha256:{}", "a".repeat(64))).unwrap();
        assert!(digest("d", &format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest("d", "md5:abc").is_err());
    }
}
