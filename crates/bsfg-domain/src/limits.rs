//! Size limits. Every variable-length input has one; units are in the names.

use serde::{Deserialize, Serialize};

/// Limits applied to facts and objects at the boundary. Configurable per zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest encoded fact record (envelope + fact + provenance) stored.
    pub fact_bytes_max: usize,
    /// Largest object_json before canonicalisation.
    pub object_json_bytes_max: usize,
    pub message_id_bytes_max: usize,
    pub labels_count_max: usize,
    pub label_value_bytes_max: usize,
    pub attachments_count_max: usize,
    pub object_key_bytes_max: usize,
    /// Largest artifact accepted by PutObject.
    pub object_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fact_bytes_max: 256 * 1024,
            object_json_bytes_max: 192 * 1024,
            message_id_bytes_max: 128,
            labels_count_max: 32,
            label_value_bytes_max: 256,
            attachments_count_max: 16,
            object_key_bytes_max: 512,
            object_bytes_max: 8 * 1024 * 1024 * 1024,
        }
    }
}

/// Fixed grammar limits (not configurable: they shape NATS subjects).
pub const ZONE_BYTES_MAX: usize = 63;
pub const SUBJECT_KIND_BYTES_MAX: usize = 32;
pub const SUBJECT_BYTES_MAX: usize = 256;
pub const PREDICATE_BYTES_MAX: usize = 64;
pub const BUCKET_BYTES_MAX: usize = 64;
pub const LABEL_KEY_BYTES_MAX: usize = 63;
pub const TEXT_FIELD_BYTES_MAX: usize = 256;
