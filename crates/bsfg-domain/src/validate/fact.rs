//! A fact: subject, predicate, object_json and attachments.

use super::object_json::recanonicalised_object_json;
use super::{bounded_text, bucket, digest, media_type, object_key, predicate, subject};
use crate::limits::{Limits, TEXT_FIELD_BYTES_MAX};
use crate::reason::Reason;
use crate::rejection::Rejection;
use bsfg_proto::bsfg::v1::{AttachmentRef, Fact};

/// A fact that passed validation, with its object_json now canonical.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidFact {
    pub fact: Fact,
    /// The `kind` part of the subject, used for routing to a category.
    pub subject_kind: String,
}

fn attachment(index: usize, a: &AttachmentRef, limits: &Limits) -> Result<(), Rejection> {
    bucket(&a.bucket)?;
    object_key(&a.key, limits)?;
    digest(&format!("fact.attachments[{index}].digest"), &a.digest)?;
    media_type(
        &format!("fact.attachments[{index}].media_type"),
        &a.media_type,
    )?;
    bounded_text("attachment file_name", &a.file_name, TEXT_FIELD_BYTES_MAX)?;
    Ok(())
}

/// Validates a fact and returns it with canonical object_json. It takes
/// the fact so that a canonical one is kept without a copy.
pub fn fact(mut f: Fact, limits: &Limits) -> Result<ValidFact, Rejection> {
    let subject_kind = subject(&f.subject)?.to_string();
    predicate(&f.predicate)?;
    let canonical = recanonicalised_object_json(&f.object_json, limits)?;
    if f.attachments.len() > limits.attachments_count_max {
        return Err(Rejection::invalid(
            Reason::TooManyAttachments,
            format!(
                "fact has {} attachments; the limit is {}",
                f.attachments.len(),
                limits.attachments_count_max
            ),
        ));
    }
    for (index, a) in f.attachments.iter().enumerate() {
        attachment(index, a, limits)?;
    }
    if let Some(canonical) = canonical {
        f.object_json = canonical;
    }
    Ok(ValidFact {
        fact: f,
        subject_kind,
    })
}
