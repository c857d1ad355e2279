//! Stored records: one read back by offset, decoded and checked, and a
//! retry compared with the fact already stored under its key.

use super::{Appended, FactLog};
use crate::store::failure::unavailable;
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::identity::content_digest;
use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, StoredFact};
use buffa::Message as _;

/// The content digest (hex) that facts of the older stored format carry as
/// a header. Read only: a fact's content is compared from its record,
/// which keeps ~80 bytes per fact out of every publish, stored message and
/// delivery.
const LEGACY_CONTENT_HEADER: &str = "Bsfg-Content";

impl FactLog {
    /// Reads one stored fact by offset, validating it on the way out.
    pub async fn read(&self, category: &str, offset: u64) -> Result<StoredFact, Rejection> {
        let log = self.categories.get(category).ok_or_else(|| {
            Rejection::new(
                Code::NotFound,
                Reason::UnknownCategory,
                format!("no category {category}"),
            )
        })?;
        let message = log
            .stream
            .direct_get(offset)
            .await
            .map_err(|e| unavailable("reading a fact", e))?;
        decode_record(&message.payload, offset)
    }
}

/// The answer for a fact whose key is already stored as `existing`: a
/// duplicate if the content is the same, else `conflicting_duplicate`.
pub(super) fn compare_existing(
    existing: StreamMessage,
    content: &[u8; 32],
    envelope: &Envelope,
    category: &str,
) -> Result<Appended, Rejection> {
    let same = match header_value(&existing, LEGACY_CONTENT_HEADER) {
        Some(stored_hex) => stored_hex == hex::encode(content),
        None => {
            content_digest(&decode_record(&existing.payload, existing.sequence)?.fact) == *content
        }
    };
    if same {
        return Ok(Appended {
            offset: existing.sequence,
            duplicate: true,
            category: category.to_string(),
        });
    }
    Err(Rejection::new(
        Code::AlreadyExists,
        Reason::ConflictingDuplicate,
        format!(
            "message_id {:?} from zone {} is already stored at offset {} of category {} with \
             different content; a correction is a new fact with a new message_id",
            envelope.message_id, envelope.from_zone, existing.sequence, category
        ),
    ))
}

pub(super) fn header_value(message: &StreamMessage, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_string())
}

/// Decodes a stored record and checks its invariants: it must carry an
/// envelope and a fact whose key token matches how it was stored.
pub fn decode_record(payload: &[u8], offset: u64) -> Result<StoredFact, Rejection> {
    let mut record = StoredFact::decode_from_slice(payload).map_err(|e| {
        Rejection::new(
            Code::DataLoss,
            Reason::CorruptRecord,
            format!("stored fact at offset {offset} cannot be decoded: {e}"),
        )
    })?;
    if record.envelope.message_id.is_empty() || record.fact.subject.is_empty() {
        return Err(Rejection::new(
            Code::DataLoss,
            Reason::CorruptRecord,
            format!("stored fact at offset {offset} lacks its envelope or fact"),
        ));
    }
    record.offset = offset;
    Ok(record)
}
