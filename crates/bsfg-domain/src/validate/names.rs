//! Names that become part of a NATS subject or a JetStream name: zones,
//! fact subjects and predicates, consumer names, buckets.

use super::required;
use crate::bounded::bounded;
use crate::limits::{
    BUCKET_BYTES_MAX, PREDICATE_BYTES_MAX, SUBJECT_BYTES_MAX, SUBJECT_KIND_BYTES_MAX,
    ZONE_BYTES_MAX,
};
use crate::reason::Reason;
use crate::rejection::Rejection;

/// `^[a-z][a-z0-9-]*$`, at most [`ZONE_BYTES_MAX`] bytes, e.g. `plant-a`.
pub fn zone(field: &str, value: &str) -> Result<(), Rejection> {
    required(field, value)?;
    let ok = value.len() <= ZONE_BYTES_MAX
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(Rejection::invalid(
            Reason::BadZone,
            format!(
                "{field} {:?} must be lower-case letters, digits and '-', starting with a letter, at most {ZONE_BYTES_MAX} bytes",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

fn is_snake_token(value: &str) -> bool {
    value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('_')
        && !value.contains("__")
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Parses `kind:id` or `kind:scope/id` and returns the kind.
pub fn subject(value: &str) -> Result<&str, Rejection> {
    required("fact.subject", value)?;
    let bad = |why: &str| {
        Rejection::invalid(
            Reason::BadSubject,
            format!(
                "fact.subject {:?} {why}; expected kind:id or kind:scope/id, e.g. batch:PlantA/B1042",
                bounded(value)
            ),
        )
    };
    if value.len() > SUBJECT_BYTES_MAX {
        return Err(bad(&format!("is longer than {SUBJECT_BYTES_MAX} bytes")));
    }
    let (kind, rest) = value.split_once(':').ok_or_else(|| bad("has no ':'"))?;
    if kind.len() > SUBJECT_KIND_BYTES_MAX || !is_snake_token(kind) {
        return Err(bad(
            "has a kind that is not a lower-case noun (a-z, 0-9, _)",
        ));
    }
    let id_ok = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '+')
            })
            && part != "."
            && part != ".."
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let ok = match parts.as_slice() {
        [id] => id_ok(id),
        [scope, id] => id_ok(scope) && id_ok(id),
        _ => false,
    };
    if !ok {
        return Err(bad(
            "has a scope or id that is empty or uses characters other than A-Z a-z 0-9 . _ - : @ +",
        ));
    }
    Ok(kind)
}

/// `lower_snake_case`, at most [`PREDICATE_BYTES_MAX`] bytes.
pub fn predicate(value: &str) -> Result<(), Rejection> {
    required("fact.predicate", value)?;
    if value.len() > PREDICATE_BYTES_MAX || !is_snake_token(value) {
        return Err(Rejection::invalid(
            Reason::BadPredicate,
            format!(
                "fact.predicate {:?} must be lower_snake_case (e.g. step_completed), at most {PREDICATE_BYTES_MAX} bytes",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

/// A consumer name from configuration or a request: `[A-Za-z0-9_-]{1,64}`
/// (it becomes a JetStream durable name).
pub fn consumer_name(value: &str) -> Result<(), Rejection> {
    required("consumer_name", value)?;
    let ok = value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(Rejection::invalid(
            Reason::BadConsumerName,
            format!(
                "consumer_name {:?} must be 1-64 characters of A-Z a-z 0-9 _ -",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

/// A bucket name: `^[a-z0-9][a-z0-9_-]*$` (it names a JetStream object store).
pub fn bucket(value: &str) -> Result<(), Rejection> {
    required("bucket", value)?;
    let ok = value.len() <= BUCKET_BYTES_MAX
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(Rejection::invalid(
            Reason::BadBucket,
            format!(
                "bucket {:?} must be lower-case letters, digits, '_' and '-', at most {BUCKET_BYTES_MAX} bytes",
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
    fn subjects() {
        assert_eq!(subject("batch:PlantA/B1042").unwrap(), "batch");
        assert_eq!(subject("asset:FILLER-07").unwrap(), "asset");
        for bad in [
            "",
            "batch",
            "Batch:x",
            "batch:",
            "batch:a/b/c",
            "batch:a/",
            "batch:/b",
            "ba tch:x",
            "batch:a b",
            "batch:../x",
            "ba.tch:x",
            "batch_:x",
        ] {
            assert_eq!(
                subject(bad).unwrap_err().code,
                crate::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn predicates() {
        predicate("step_completed").unwrap();
        predicate("temperature_recorded2").unwrap();
        for bad in [
            "",
            "StepCompleted",
            "step-completed",
            "_step",
            "step_",
            "step__done",
            "2step",
        ] {
            assert!(predicate(bad).is_err(), "{bad}");
        }
    }
}
