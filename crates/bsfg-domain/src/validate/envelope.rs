//! The envelope: message id, zones, producer clock, ids and labels.

use super::{bounded_text, required, zone};
use crate::bounded::bounded;
use crate::limits::{LABEL_KEY_BYTES_MAX, Limits, TEXT_FIELD_BYTES_MAX};
use crate::reason::Reason;
use crate::rejection::Rejection;
use bsfg_proto::bsfg::v1::Envelope;

/// Validates the envelope (every required field present and well formed).
pub fn envelope(e: &Envelope, limits: &Limits) -> Result<(), Rejection> {
    required("envelope.message_id", &e.message_id)?;
    bounded_text(
        "envelope.message_id",
        &e.message_id,
        limits.message_id_bytes_max,
    )?;
    if e.message_id.chars().any(char::is_whitespace) {
        return Err(Rejection::invalid(
            Reason::BadMessageId,
            "envelope.message_id must not contain whitespace",
        ));
    }
    zone("envelope.from_zone", &e.from_zone)?;
    zone("envelope.to_zone", &e.to_zone)?;
    if e.produced_at_unix_ms <= 0 {
        return Err(Rejection::invalid(
            Reason::MissingField,
            "envelope.produced_at_unix_ms is required (producer clock, milliseconds since the Unix epoch)",
        ));
    }
    bounded_text(
        "envelope.correlation_id",
        &e.correlation_id,
        limits.message_id_bytes_max,
    )?;
    bounded_text(
        "envelope.causation_id",
        &e.causation_id,
        limits.message_id_bytes_max,
    )?;
    bounded_text(
        "envelope.object_media_type",
        &e.object_media_type,
        TEXT_FIELD_BYTES_MAX,
    )?;
    bounded_text(
        "envelope.object_schema",
        &e.object_schema,
        TEXT_FIELD_BYTES_MAX,
    )?;
    if e.labels.len() > limits.labels_count_max {
        return Err(Rejection::invalid(
            Reason::TooManyLabels,
            format!(
                "envelope.labels has {} entries; the limit is {}",
                e.labels.len(),
                limits.labels_count_max
            ),
        ));
    }
    for (key, value) in &e.labels {
        let key_ok = !key.is_empty()
            && key.len() <= LABEL_KEY_BYTES_MAX
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
        if !key_ok {
            return Err(Rejection::invalid(
                Reason::BadLabel,
                format!(
                    "label key {:?} must be 1-{LABEL_KEY_BYTES_MAX} characters of A-Z a-z 0-9 _ - . /",
                    bounded(key)
                ),
            ));
        }
        bounded_text(&format!("label {key}"), value, limits.label_value_bytes_max)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_requires_fields() {
        let limits = Limits::default();
        let ok = Envelope {
            message_id: "m-1".into(),
            from_zone: "plant-a".into(),
            to_zone: "enterprise".into(),
            produced_at_unix_ms: 1,
            ..Default::default()
        };
        envelope(&ok, &limits).unwrap();
        let mut e = ok.clone();
        e.message_id.clear();
        assert_eq!(
            envelope(&e, &limits).unwrap_err().reason,
            Reason::MissingField
        );
        let mut e = ok.clone();
        e.produced_at_unix_ms = 0;
        assert_eq!(
            envelope(&e, &limits).unwrap_err().reason,
            Reason::MissingField
        );
        let mut e = ok.clone();
        e.to_zone = "ENTERPRISE".into();
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, Reason::BadZone);
        let mut e = ok;
        e.labels.insert("bad key".into(), "v".into());
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, Reason::BadLabel);
    }
}
