//! `[[categories]]`, `[[consumers]]` and `[[buckets]]`: what the zone stores
//! and who reads it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    /// Category name; stream `facts_<name>`, subjects `facts.<name>.>`.
    pub name: String,
    /// Subject kinds routed here. The category with `default = true` takes
    /// every kind not listed elsewhere.
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub default: bool,
    /// Hard capacity of the category log (JetStream max_bytes).
    pub capacity_bytes: u64,
    /// Appends are refused at this fill of capacity_bytes.
    #[serde(default = "default_fill_threshold")]
    pub fill_threshold_percent: u8,
    /// Retention removes confirmed facts once the log is above this fill.
    #[serde(default = "default_retain_percent")]
    pub retain_fill_percent: u8,
    /// Facts older than this are removed once every consumer confirmed them.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// JetStream duplicate window (beyond it, the key index answers retries).
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub name: String,
    pub category: String,
    /// Subject kinds this consumer receives; empty means all.
    #[serde(default)]
    pub kinds: Vec<String>,
    #[serde(default)]
    pub start: StartPosition,
    /// Delivered but unconfirmed facts are delivered again after this.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub redeliver_after: Duration,
    /// Most facts delivered and not yet confirmed.
    #[serde(default = "default_unconfirmed_max")]
    pub unconfirmed_max: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
    Offset(u64),
    /// RFC 3339 time.
    Time(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub name: String,
    pub capacity_bytes: u64,
}

pub(super) fn default_categories() -> Vec<CategoryConfig> {
    let category = |name: &str, kinds: &[&str], default: bool, gib: u64| CategoryConfig {
        name: name.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        default,
        capacity_bytes: gib * 1024 * 1024 * 1024,
        fill_threshold_percent: default_fill_threshold(),
        retain_fill_percent: default_retain_percent(),
        max_age: Duration::from_secs(30 * 24 * 3600),
        duplicate_window: default_duplicate_window(),
    };
    vec![
        category("operational", &[], true, 4),
        category("audit", &["audit"], false, 1),
        category("documents", &["document", "recipe"], false, 1),
    ]
}
fn default_fill_threshold() -> u8 {
    80
}
fn default_retain_percent() -> u8 {
    60
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_unconfirmed_max() -> u32 {
    20_000
}
