//! A fact's object_json: a JSON object with unique member names, stored in
//! its RFC 8785 canonical form.

use super::required;
use crate::limits::Limits;
use crate::reason::Reason;
use crate::rejection::Rejection;

/// Parses object_json, requires a JSON object and returns its RFC 8785
/// canonical form.
pub fn canonical_object_json(value: &str, limits: &Limits) -> Result<String, Rejection> {
    Ok(recanonicalised_object_json(value, limits)?.unwrap_or_else(|| value.to_owned()))
}

/// As `canonical_object_json`, but `None` when `value` is canonical already
/// (the common case: facts that crossed a zone, most producers), which
/// spares parsing it and writing it again.
pub(super) fn recanonicalised_object_json(
    value: &str,
    limits: &Limits,
) -> Result<Option<String>, Rejection> {
    required("fact.object_json", value)?;
    if value.len() > limits.object_json_bytes_max {
        return Err(Rejection::invalid(
            Reason::FactTooLarge,
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
            Reason::ObjectJsonNotObject,
            "fact.object_json must be a JSON object ({...}), not an array, string, number, boolean or null",
        ));
    }
    serde_json_canonicalizer::to_string(&parsed)
        .map(Some)
        .map_err(|e| {
            Rejection::invalid(
                Reason::BadObjectJson,
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
    use crate::reason::Reason;
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
                Reason::BadObjectJson,
                format!("fact.object_json has the key {:?} twice; RFC 8785 requires unique member names", bounded(&key)),
            ),
            None => Rejection::invalid(
                Reason::BadObjectJson,
                format!("fact.object_json is not valid JSON: {e}"),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Reason::FactTooLarge
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
                (crate::Code::InvalidArgument, Reason::BadObjectJson),
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
}
