//! `[[principals]]`: who may call this node, and what they may do.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A local application of this zone: asserts only this zone as from_zone.
    App,
    /// A peer zone's node.
    Peer,
}

/// A caller, as named by its certificate, and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    pub name: String,
    pub kind: PrincipalKind,
    /// Certificate identities (SAN DNS name or URI, or CN) of this principal.
    pub identities: Vec<String>,
    /// For a peer: its zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// For a peer: the from_zone values it may assert (the origins routed
    /// through it). An app may assert only this zone.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Consumers it may fetch from and confirm (for a peer: those exported
    /// to it).
    #[serde(default)]
    pub consumers: Vec<String>,
    #[serde(default)]
    pub buckets_read: Vec<String>,
    #[serde(default)]
    pub buckets_write: Vec<String>,
    /// The zone's operator (OperationsService): sees every link and
    /// consumer in GetStatus (others see only the consumers they are
    /// granted, and no links) and may replay any consumer with
    /// ResetConsumer (nobody else may). Apps only; default false.
    #[serde(default)]
    pub operator: bool,
    /// For a peer: what this zone serves to it.
    #[serde(default)]
    pub export: bsfg_domain::policy::FactPolicy,
    /// For a peer: what this zone accepts from it.
    #[serde(default)]
    pub import: bsfg_domain::policy::FactPolicy,
}
