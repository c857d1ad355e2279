//! Zone configurations for tests, the demo and the benchmarks, built as
//! typed values: a [`ZoneConfigBuilder`] starts from the smallest valid
//! configuration, so every setting a caller leaves alone is the node's
//! default (what a zone TOML file that omits it gets), and settings added
//! to `ZoneConfig` later need no change here. A node in another process
//! gets the value as TOML (`toml::to_string`).
//!
//! The helpers make the entries the callers share: [`category`],
//! [`consumer`], [`upstream`], [`bucket`], [`app_principal`],
//! [`peer_principal`], and
//! [`mtls`] from a [`Pki`]. [`merge_toml`] lays TOML lines over a section,
//! for settings given on the command line or in the environment.

use crate::pki::Pki;
use bsfg::config::{
    BucketConfig, CategoryConfig, ConsumerConfig, NatsConfig, PrincipalConfig, PrincipalKind,
    TlsConfig, UpstreamConfig, ZoneConfig,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::time::Duration;

/// The smallest valid zone configuration; the builder overwrites each
/// value it names.
const MINIMAL_ZONE_TOML: &str = "zone = \"zone\"\nlisten = \"127.0.0.1:0\"\n\
    ops_listen = \"127.0.0.1:0\"\n[tls]\nmode = \"plaintext-dev\"\n";

/// A zone configuration under construction; [`ZoneConfigBuilder::build`]
/// gives it.
#[derive(Debug, Clone)]
pub struct ZoneConfigBuilder {
    config: ZoneConfig,
}

impl ZoneConfigBuilder {
    /// Zone `zone`: both listeners on a loopback port the node picks,
    /// plaintext-dev, no principals, the node's default categories, an
    /// embedded nats-server, and every other setting at its default.
    pub fn new(zone: &str) -> Self {
        let mut config: ZoneConfig =
            toml::from_str(MINIMAL_ZONE_TOML).expect("the minimal zone configuration parses");
        config.zone = zone.to_string();
        Self { config }
    }

    /// The boundary port, on loopback.
    pub fn listen(mut self, port: u16) -> Self {
        self.config.listen = loopback(port);
        self
    }

    /// The operations port, on loopback.
    pub fn ops_listen(mut self, port: u16) -> Self {
        self.config.ops_listen = loopback(port);
        self
    }

    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = tls;
        self
    }

    pub fn nats(mut self, nats: NatsConfig) -> Self {
        self.config.nats = nats;
        self
    }

    /// Replaces the principals.
    pub fn principals(mut self, principals: Vec<PrincipalConfig>) -> Self {
        self.config.principals = principals;
        self
    }

    pub fn principal(mut self, principal: PrincipalConfig) -> Self {
        self.config.principals.push(principal);
        self
    }

    /// Replaces the categories (the node's defaults until then).
    pub fn categories(mut self, categories: Vec<CategoryConfig>) -> Self {
        self.config.categories = categories;
        self
    }

    /// Replaces the consumers.
    pub fn consumers(mut self, consumers: Vec<ConsumerConfig>) -> Self {
        self.config.consumers = consumers;
        self
    }

    pub fn consumer(mut self, consumer: ConsumerConfig) -> Self {
        self.config.consumers.push(consumer);
        self
    }

    /// Replaces the buckets.
    pub fn buckets(mut self, buckets: Vec<BucketConfig>) -> Self {
        self.config.buckets = buckets;
        self
    }

    /// `[routes]`: facts for `to_zone` go through the peer `next_hop`.
    pub fn route(mut self, to_zone: &str, next_hop: &str) -> Self {
        self.config
            .routes
            .insert(to_zone.to_string(), next_hop.to_string());
        self
    }

    pub fn upstream(mut self, upstream: UpstreamConfig) -> Self {
        self.config.upstreams.push(upstream);
        self
    }

    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.config.retention_interval = interval;
        self
    }

    /// Any other change.
    pub fn with(mut self, change: impl FnOnce(&mut ZoneConfig)) -> Self {
        change(&mut self.config);
        self
    }

    pub fn build(self) -> ZoneConfig {
        self.config
    }
}

/// `127.0.0.1:<port>`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Mutual TLS with the CA of `pki` and its node certificate `node`.
pub fn mtls(pki: &Pki, node: &str) -> TlsConfig {
    TlsConfig::mtls(pki.ca(), pki.cert(node), pki.key(node))
}

/// A category of the given kinds (none: the kinds no other category
/// takes, with `default`), size and age; the node's defaults otherwise.
pub fn category(
    name: &str,
    kinds: &[&str],
    default: bool,
    capacity_bytes: u64,
    max_age: Duration,
) -> CategoryConfig {
    let mut category: CategoryConfig =
        toml::from_str("name = \"\"\ncapacity_bytes = 0\nmax_age = \"0s\"\n")
            .expect("the minimal category parses");
    category.name = name.to_string();
    category.kinds = strings(kinds);
    category.default = default;
    category.capacity_bytes = capacity_bytes;
    category.max_age = max_age;
    category
}

/// A consumer of `category`; the node's defaults otherwise (from the
/// earliest fact).
pub fn consumer(name: &str, category: &str) -> ConsumerConfig {
    let mut consumer: ConsumerConfig =
        toml::from_str("name = \"\"\ncategory = \"\"\n").expect("the minimal consumer parses");
    consumer.name = name.to_string();
    consumer.category = category.to_string();
    consumer
}

/// A link pulling `consumer` of `peer` at `url`; the node's defaults
/// otherwise.
pub fn upstream(peer: &str, url: &str, consumer: &str) -> UpstreamConfig {
    let mut upstream: UpstreamConfig = toml::from_str("peer = \"\"\nurl = \"\"\nconsumer = \"\"\n")
        .expect("the minimal upstream parses");
    upstream.peer = peer.to_string();
    upstream.url = url.to_string();
    upstream.consumer = consumer.to_string();
    upstream
}

pub fn bucket(name: &str, capacity_bytes: u64) -> BucketConfig {
    BucketConfig {
        name: name.to_string(),
        capacity_bytes,
    }
}

/// An application principal (not an operator) of certificate `identity`.
pub fn app_principal(
    name: &str,
    identity: &str,
    consumers: &[&str],
    buckets_read: &[&str],
    buckets_write: &[&str],
) -> PrincipalConfig {
    PrincipalConfig {
        name: name.to_string(),
        kind: PrincipalKind::App,
        identities: vec![identity.to_string()],
        zone: None,
        origins: vec![],
        consumers: strings(consumers),
        buckets_read: strings(buckets_read),
        buckets_write: strings(buckets_write),
        operator: false,
        export: Default::default(),
        import: Default::default(),
    }
}

/// The peer principal of zone `zone` (certificate `identity`): it may
/// relay facts of `origins`, pull `consumers` and read `buckets_read`.
pub fn peer_principal(
    zone: &str,
    identity: &str,
    origins: &[&str],
    consumers: &[&str],
    buckets_read: &[&str],
) -> PrincipalConfig {
    PrincipalConfig {
        kind: PrincipalKind::Peer,
        zone: Some(zone.to_string()),
        origins: strings(origins),
        ..app_principal(zone, identity, consumers, buckets_read, &[])
    }
}

/// `section` with the settings of `toml_lines` (e.g.
/// `batches_in_flight_max = 4`) laid over it; an unknown or mistyped
/// setting is an error, as it would be in a zone file.
pub fn merge_toml<T: Serialize + DeserializeOwned>(
    section: &T,
    toml_lines: &str,
) -> anyhow::Result<T> {
    let toml::Value::Table(mut table) = toml::Value::try_from(section)? else {
        anyhow::bail!("a configuration section is a table");
    };
    let extra: toml::Table =
        toml::from_str(toml_lines).map_err(|e| anyhow::anyhow!("settings {toml_lines:?}: {e}"))?;
    table.extend(extra);
    toml::Value::Table(table)
        .try_into()
        .map_err(|e| anyhow::anyhow!("settings {toml_lines:?}: {e}"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_configuration_passes_its_checks_and_survives_toml() {
        let config = ZoneConfigBuilder::new("plant-a")
            .listen(7443)
            .categories(vec![category(
                "operational",
                &[],
                true,
                1 << 20,
                Duration::from_secs(60),
            )])
            .consumer(consumer("mes", "operational"))
            .buckets(vec![bucket("records", 1 << 20)])
            .principal(app_principal(
                "mes",
                "mes.plant-a",
                &["mes"],
                &["records"],
                &[],
            ))
            .principal(peer_principal("idmz", "idmz-bsfg", &["idmz"], &[], &[]))
            .route("enterprise", "idmz")
            .build();
        config.check().unwrap();
        let text = toml::to_string(&config).unwrap();
        let again: ZoneConfig = toml::from_str(&text).unwrap();
        assert_eq!(toml::to_string(&again).unwrap(), text);
        assert_eq!(again.listen, loopback(7443));
        assert_eq!(again.next_hop("enterprise"), Some("idmz"));
    }

    #[test]
    fn merged_lines_override_and_an_unknown_setting_is_refused() {
        let commit = bsfg::config::CommitConfig::default();
        let merged = merge_toml(&commit, "batches_in_flight_max = 4").unwrap();
        assert_eq!(merged.batches_in_flight_max, Some(4));
        assert_eq!(merged.queue_facts_max, commit.queue_facts_max);
        assert_eq!(
            merge_toml(&commit, "").unwrap().batch_facts_max,
            commit.batch_facts_max
        );
        assert!(merge_toml(&commit, "no_such_setting = 1").is_err());
    }
}
