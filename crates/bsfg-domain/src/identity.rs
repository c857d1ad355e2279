//! Idempotency key and content identity.
//!
//! The key (`from_zone`, `message_id`) is hashed into a fixed-width token so
//! that it can be part of a NATS subject: the storage adapter publishes each
//! fact to a subject ending in this token and asks JetStream to refuse the
//! write if that token already has a message. That makes idempotency hold for
//! as long as the fact is retained, across restarts, atomically.
//!
//! Content identity is the canonical fact plus its attachment references; it
//! decides whether a second append under the same key is a harmless retry
//! (identical) or a conflicting duplicate.

use bsfg_proto::bsfg::v1::{AttachmentRef, Fact};
use sha2::{Digest, Sha256};

/// Hex characters of the key token: 128 bits, ample against collisions.
pub const KEY_TOKEN_HEX_LEN: usize = 32;

/// The idempotency key token for (from_zone, message_id).
pub fn key_token(from_zone: &str, message_id: &str) -> String {
    let mut hasher = Sha256::new();
    // Length prefixes make ("ab","c") and ("a","bc") distinct.
    hasher.update((from_zone.len() as u64).to_be_bytes());
    hasher.update(from_zone.as_bytes());
    hasher.update((message_id.len() as u64).to_be_bytes());
    hasher.update(message_id.as_bytes());
    let digest = hex::encode(hasher.finalize());
    digest[..KEY_TOKEN_HEX_LEN].to_string()
}

/// SHA-256 over the canonical fact (object_json must already be canonical)
/// and its attachment references, in order.
pub fn content_digest(fact: &Fact) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(fact.subject.as_bytes());
    field(fact.predicate.as_bytes());
    field(fact.object_json.as_bytes());
    field(&(fact.attachments.len() as u64).to_be_bytes());
    for AttachmentRef {
        bucket,
        key,
        digest,
        size_bytes,
        media_type,
        file_name,
        ..
    } in &fact.attachments
    {
        field(bucket.as_bytes());
        field(key.as_bytes());
        field(digest.as_bytes());
        field(&size_bytes.to_be_bytes());
        field(media_type.as_bytes());
        field(file_name.as_bytes());
    }
    hasher.finalize().into()
}

/// `sha256:<hex>` form of a raw digest.
pub fn digest_string(raw: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(json: &str) -> Fact {
        Fact {
            subject: "batch:PlantA/B1".into(),
            predicate: "step_completed".into(),
            object_json: json.into(),
            ..Default::default()
        }
    }

    #[test]
    fn key_token_is_stable_fixed_width_and_length_prefixed() {
        let a = key_token("plant-a", "m-1");
        assert_eq!(a.len(), KEY_TOKEN_HEX_LEN);
        assert_eq!(a, key_token("plant-a", "m-1"));
        assert_ne!(a, key_token("plant-b", "m-1"));
        assert_ne!(key_token("ab", "c"), key_token("a", "bc"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn content_digest_distinguishes_each_part() {
        let base = content_digest(&fact(r#"{"a":1}"#));
        assert_eq!(base, content_digest(&fact(r#"{"a":1}"#)));
        assert_ne!(base, content_digest(&fact(r#"{"a":2}"#)));
        let mut other_pred = fact(r#"{"a":1}"#);
        other_pred.predicate = "step_started".into();
        assert_ne!(base, content_digest(&other_pred));
        let mut with_attachment = fact(r#"{"a":1}"#);
        with_attachment.attachments.push(AttachmentRef {
            bucket: "records".into(),
            key: "b1.pdf".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size_bytes: 3,
            ..Default::default()
        });
        assert_ne!(base, content_digest(&with_attachment));
    }
}
