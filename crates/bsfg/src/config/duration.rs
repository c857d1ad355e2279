//! A duration setting written as a humantime string (`"500ms"`, `"30s"`),
//! or as an integer number of milliseconds.
//!
//! Why: the rule for settings is one duration style (humantime strings,
//! no unit in the name). Settings once named `*_ms` took integers; their
//! old names are serde aliases of the new ones, and this reader keeps those
//! files loading: an integer is read as milliseconds. Written back, a
//! duration is always a humantime string.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    humantime_serde::serialize(value, serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Milliseconds(u64),
        Text(String),
    }
    match Written::deserialize(deserializer)? {
        Written::Milliseconds(ms) => Ok(Duration::from_millis(ms)),
        Written::Text(text) => humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"500ms\" or \"30s\""
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct S {
        #[serde(alias = "wait_ms", with = "super")]
        wait: Duration,
    }

    #[test]
    fn reads_text_and_milliseconds_and_writes_text() {
        let text: S = toml::from_str("wait = \"1s 500ms\"").unwrap();
        assert_eq!(text.wait, Duration::from_millis(1500));
        let old: S = toml::from_str("wait_ms = 250").unwrap();
        assert_eq!(old.wait, Duration::from_millis(250));
        assert_eq!(toml::to_string(&old).unwrap().trim(), "wait = \"250ms\"");
        let bad = toml::from_str::<S>("wait = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not a duration"), "{bad}");
    }
}
