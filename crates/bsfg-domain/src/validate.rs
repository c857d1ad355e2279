//! Transport validity: the only checks the boundary makes before a write.
//!
//! Grammar is deliberately strict where a value becomes part of a NATS
//! subject or an object name (zone, subject kind, predicate, bucket), and
//! lenient but bounded everywhere else. Nothing here looks at business
//! meaning.

use crate::bounded::bounded;
use crate::limits::*;
use crate::rejection::Rejection;
use bsfg_proto::bsfg::v1::{AttachmentRef, Envelope, Fact};

/// A fact that passed validation, with its object_json now canonical.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidFact {
    pub fact: Fact,
    /// The `kind` part of the subject, used for routing to a category.
    pub subject_kind: String,
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn bounded_text(field: &str, value: &str, bytes_max: usize) -> Result<(), Rejection> {
    if value.len() > bytes_max {
        return Err(Rejection::invalid(
            "field_too_long",
            format!("{field} is {} bytes; the limit is {bytes_max}", value.len()),
        ));
    }
    if has_control(value) {
        return Err(Rejection::invalid(
            "control_character",
            format!("{field} contains a control character; remove it"),
        ));
    }
    Ok(())
}

fn required(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(
            "missing_field",
            format!("{field} is required"),
        ));
    }
    Ok(())
}

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
            "bad_zone",
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
            "bad_subject",
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
            "bad_predicate",
            format!(
                "fact.predicate {:?} must be lower_snake_case (e.g. step_completed), at most {PREDICATE_BYTES_MAX} bytes",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

/// Parses object_json, requires a JSON object and returns its RFC 8785
/// canonical form.
pub fn canonical_object_json(value: &str, limits: &Limits) -> Result<String, Rejection> {
    Ok(recanonicalised_object_json(value, limits)?.unwrap_or_else(|| value.to_owned()))
}

/// As `canonical_object_json`, but `None` when `value` is canonical already
/// (the common case: facts that crossed a zone, most producers), which
/// spares parsing it and writing it again.
fn recanonicalised_object_json(value: &str, limits: &Limits) -> Result<Option<String>, Rejection> {
    required("fact.object_json", value)?;
    if value.len() > limits.object_json_bytes_max {
        return Err(Rejection::invalid(
            "fact_too_large",
            format!(
                "fact.object_json is {} bytes; the limit is {}",
                value.len(),
                limits.object_json_bytes_max
            ),
        ));
    }
    if crate::canonical::is_canonical_object(value) {
        return Ok(None);
    }
    let parsed = unique::parse(value)?;
    if !parsed.is_object() {
        return Err(Rejection::invalid(
            "object_json_not_object",
            "fact.object_json must be a JSON object ({...}), not an array, string, number, boolean or null",
        ));
    }
    serde_json_canonicalizer::to_string(&parsed)
        .map(Some)
        .map_err(|e| {
            Rejection::invalid(
                "bad_object_json",
                format!("fact.object_json cannot be canonicalised (RFC 8785): {e}"),
            )
        })
}

/// Parsing object_json into a `serde_json::Value` while refusing an object
/// that has a member name twice. Why: serde_json keeps the last value of a
/// repeated name, so `{"a":1,"a":2}` would be stored as `{"a":2}` and the
/// first value silently lost; RFC 8785 requires unique member names of its
/// input (section 3.1), so such a document has no canonical form.
mod unique {
    use crate::bounded::bounded;
    use crate::rejection::Rejection;
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Number, Value};
    use std::cell::RefCell;
    use std::fmt;

    pub(super) fn parse(value: &str) -> Result<Value, Rejection> {
        let duplicate = RefCell::new(None);
        let mut deserializer = serde_json::Deserializer::from_str(value);
        let parsed = UniqueKeys {
            duplicate: &duplicate,
        }
        .deserialize(&mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v));
        parsed.map_err(|e| match duplicate.take() {
            Some(key) => Rejection::invalid(
                "bad_object_json",
                format!("fact.object_json has the key {:?} twice; RFC 8785 requires unique member names", bounded(&key)),
            ),
            None => Rejection::invalid("bad_object_json", format!("fact.object_json is not valid JSON: {e}")),
        })
    }

    /// Builds the same `Value` serde_json's own visitor builds, but records
    /// the first repeated member name (at any depth) in `duplicate` and fails.
    #[derive(Clone, Copy)]
    struct UniqueKeys<'a> {
        duplicate: &'a RefCell<Option<String>>,
    }

    impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for UniqueKeys<'_> {
        type Value = Value;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::Number(v.into()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(self)? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut members = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if members.contains_key(&key) {
                    *self.duplicate.borrow_mut() = Some(key);
                    return Err(A::Error::custom("a key twice"));
                }
                let value = map.next_value_seed(self)?;
                members.insert(key, value);
            }
            Ok(Value::Object(members))
        }
    }
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
            "bad_consumer_name",
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
            "bad_bucket",
            format!(
                "bucket {:?} must be lower-case letters, digits, '_' and '-', at most {BUCKET_BYTES_MAX} bytes",
                bounded(value)
            ),
        ));
    }
    Ok(())
}

/// An object key: a relative path of non-empty segments; no `.`/`..`
/// segments, no backslash, no control characters, no leading `/`, and not
/// in the node's reserved `_bsfg/` namespace.
pub fn object_key(value: &str, limits: &Limits) -> Result<(), Rejection> {
    required("key", value)?;
    bounded_text("key", value, limits.object_key_bytes_max)?;
    let bad =
        |why: &str| Rejection::invalid("bad_object_key", format!("key {:?} {why}", bounded(value)));
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

/// RFC 6838 `restricted-name`: a media type's type or subtype.
fn is_media_type_name(value: &str) -> bool {
    (1..=127).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
}

/// RFC 9110 `token`: a parameter name or unquoted value.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// A media type (of an object or an attachment): empty (none declared) or
/// `type/subtype` with optional `; name=value` parameters (a value is a
/// token or a quoted string), printable ASCII, at most
/// [`TEXT_FIELD_BYTES_MAX`] bytes, e.g. `application/pdf` or
/// `text/plain; charset=utf-8`. It is stored with the object and returned
/// to every reader, in every zone it reaches.
pub fn media_type(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Ok(());
    }
    let bad = |why: &str| {
        Rejection::invalid(
            "bad_media_type",
            format!(
                "{field} {:?} {why}; expected type/subtype with optional parameters, e.g. application/pdf or text/plain; charset=utf-8",
                bounded(value)
            ),
        )
    };
    if value.len() > TEXT_FIELD_BYTES_MAX {
        return Err(bad(&format!("is longer than {TEXT_FIELD_BYTES_MAX} bytes")));
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad("has a character other than printable ASCII"));
    }
    let (essence, mut rest) = value.split_at(value.find(';').unwrap_or(value.len()));
    let names_ok = essence
        .trim_end_matches(' ')
        .split_once('/')
        .is_some_and(|(t, s)| is_media_type_name(t) && is_media_type_name(s));
    if !names_ok {
        return Err(bad(
            "is not type/subtype (letters, digits and ! # $ & - ^ _ . +, each starting with a letter or digit)",
        ));
    }
    while let Some(parameter) = rest.strip_prefix(';') {
        let (name, value) = parameter
            .trim_start_matches(' ')
            .split_once('=')
            .ok_or_else(|| bad("has a parameter that is not name=value"))?;
        if !is_token(name) {
            return Err(bad("has a parameter name that is not a token"));
        }
        let after = if let Some(quoted) = value.strip_prefix('"') {
            let mut escaped = false;
            let end = quoted.char_indices().find_map(|(i, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes.then_some(i)
            });
            &quoted[end
                .ok_or_else(|| bad("has a quoted parameter value without its closing quote"))?
                + 1..]
        } else {
            let end = value.find([';', ' ']).unwrap_or(value.len());
            if !is_token(&value[..end]) {
                return Err(bad(
                    "has a parameter value that is neither a token nor a quoted string",
                ));
            }
            &value[end..]
        };
        rest = after.trim_start_matches(' ');
    }
    if !rest.is_empty() {
        return Err(bad("has text after a parameter"));
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
            "bad_digest",
            format!(
                "{field} {:?} must be sha256: followed by 64 lower-case hex digits",
                bounded(value)
            ),
        ));
    }
    Ok(())
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
            "bad_message_id",
            "envelope.message_id must not contain whitespace",
        ));
    }
    zone("envelope.from_zone", &e.from_zone)?;
    zone("envelope.to_zone", &e.to_zone)?;
    if e.produced_at_unix_ms <= 0 {
        return Err(Rejection::invalid(
            "missing_field",
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
            "too_many_labels",
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
                "bad_label",
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

/// Validates a fact and returns it with canonical object_json. It takes
/// the fact so that a canonical one is kept without a copy.
pub fn fact(mut f: Fact, limits: &Limits) -> Result<ValidFact, Rejection> {
    let subject_kind = subject(&f.subject)?.to_string();
    predicate(&f.predicate)?;
    let canonical = recanonicalised_object_json(&f.object_json, limits)?;
    if f.attachments.len() > limits.attachments_count_max {
        return Err(Rejection::invalid(
            "too_many_attachments",
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

    #[test]
    fn object_json_is_canonicalised_and_must_be_an_object() {
        let limits = Limits::default();
        assert_eq!(
            canonical_object_json(r#"{ "b": 1.0, "a": [true, null] }"#, &limits).unwrap(),
            r#"{"a":[true,null],"b":1}"#
        );
        assert_eq!(
            canonical_object_json(r#"{"e":1e3}"#, &limits).unwrap(),
            r#"{"e":1000}"#
        );
        for bad in ["[]", "1", "\"s\"", "null", "{", "{\"a\":}"] {
            assert!(canonical_object_json(bad, &limits).is_err(), "{bad}");
        }
        assert_eq!(
            canonical_object_json(r#"{ "a": [{"x": 1}], "b": "s" }"#, &limits).unwrap(),
            r#"{"a":[{"x":1}],"b":"s"}"#
        );
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(limits.object_json_bytes_max));
        assert_eq!(
            canonical_object_json(&big, &limits).unwrap_err().reason,
            "fact_too_large"
        );
    }

    /// RFC 8785 requires unique member names; serde_json alone would keep
    /// the last value and lose the first.
    #[test]
    fn object_json_with_a_key_twice_is_refused() {
        let limits = Limits::default();
        for (json, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"a":1,"a":1}"#, "a"),
            (r#"{"b":0, "a":{"x":1,"y":2,"x":3}}"#, "x"),
            (r#"{"a":[1,{"k":true,"k":false}]}"#, "k"),
            (r#"{"\u0061":1,"a":2}"#, "a"),
        ] {
            let refused = canonical_object_json(json, &limits).unwrap_err();
            assert_eq!(
                (refused.code, refused.reason),
                (crate::Code::InvalidArgument, "bad_object_json"),
                "{json}"
            );
            assert_eq!(
                refused.message,
                format!(
                    "fact.object_json has the key {key:?} twice; RFC 8785 requires unique member names"
                ),
                "{json}"
            );
        }
        // The same name in different objects is fine.
        assert_eq!(
            canonical_object_json(r#"{"b":{"a":1},"a":{"a":2}}"#, &limits).unwrap(),
            r#"{"a":{"a":2},"b":{"a":1}}"#
        );
        // Other errors keep their message.
        assert!(
            canonical_object_json(r#"{"a":1,"b":}"#, &limits)
                .unwrap_err()
                .message
                .starts_with("fact.object_json is not valid JSON")
        );
    }

    #[test]
    fn media_types() {
        for good in [
            "",
            "application/pdf",
            "image/svg+xml",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain; charset=utf-8",
            "text/plain;charset=UTF-8;format=flowed",
            "text/plain ; charset=utf-8",
            r#"multipart/mixed; boundary="a b;c\"d""#,
            "application/x.batch-record+json; version=2",
        ] {
            media_type("media_type", good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "pdf",
            "application/",
            "/pdf",
            "application/pdf/x",
            " application/pdf",
            "application/pdf\n",
            "application/pdf\u{7f}",
            "applicatión/pdf",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; =utf-8",
            "text/plain; charset=\"utf-8",
            "text/plain; charset=utf 8",
            "text/plain; charset=\"utf-8\"x",
            "application/(pdf)",
        ] {
            let refused = media_type("media_type", bad).expect_err(bad);
            assert_eq!(
                (refused.code, refused.reason),
                (crate::Code::InvalidArgument, "bad_media_type"),
                "{bad:?}"
            );
        }
        let long = format!("application/{}", "x".repeat(TEXT_FIELD_BYTES_MAX));
        assert_eq!(
            media_type("media_type", &long).unwrap_err().reason,
            "bad_media_type"
        );
    }

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
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, "missing_field");
        let mut e = ok.clone();
        e.produced_at_unix_ms = 0;
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, "missing_field");
        let mut e = ok.clone();
        e.to_zone = "ENTERPRISE".into();
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, "bad_zone");
        let mut e = ok;
        e.labels.insert("bad key".into(), "v".into());
        assert_eq!(envelope(&e, &limits).unwrap_err().reason, "bad_label");
    }
}
