//! Cross-field checks of a zone configuration that a serde schema cannot
//! express. `check()` runs the named checks in a fixed order; the first
//! failure is the error.

use super::{PrincipalKind, TlsMode, ZoneConfig};
use anyhow::bail;
use std::time::Duration;

/// The longest long-poll an upstream may ask for: FetchFacts carries its
/// wait in 32-bit milliseconds, and no peer waits longer than an hour.
const UPSTREAM_WAIT_MAX: Duration = Duration::from_secs(3600);

/// The longest linger an upstream may have: a hop's lag at a low rate is
/// meant to stay in the tens of milliseconds.
const UPSTREAM_LINGER_MAX: Duration = Duration::from_millis(50);

impl ZoneConfig {
    /// Cross-field checks a serde schema cannot express.
    pub fn check(&self) -> anyhow::Result<()> {
        bsfg_domain::validate::zone("zone", &self.zone).map_err(|r| anyhow::anyhow!("{r}"))?;
        if self.categories.iter().filter(|c| c.default).count() != 1 {
            bail!("exactly one category must have default = true");
        }
        self.check_commit()?;
        self.check_boundary()?;
        self.check_categories()?;
        self.check_consumers()?;
        self.check_buckets()?;
        self.check_tls()?;
        self.check_nats()?;
        self.check_ha()?;
        self.check_principals()?;
        self.check_upstreams()?;
        self.status.check()?;
        self.check_routes()?;
        self.check_status_route()
    }

    /// `[status] to_zone`: status facts must be able to leave towards it,
    /// in the category their kind goes to (else they would be stored and
    /// never cross, as AppendFact refuses for callers).
    fn check_status_route(&self) -> anyhow::Result<()> {
        let Some(to) = &self.status.to_zone else {
            return Ok(());
        };
        let kind = crate::store::statuses::STATUS_KIND;
        let category = &self.category_for_kind(kind).name;
        self.check_route(to, category)
            .map_err(|r| anyhow::anyhow!("[status] to_zone = {to:?}: {}", r.message))
    }

    /// `[commit]`: batch, queue and key index bounds.
    fn check_commit(&self) -> anyhow::Result<()> {
        let k = &self.commit;
        if !(1..=4096).contains(&k.batch_facts_max)
            || !k
                .batches_in_flight_max
                .is_none_or(|n| (1..=64).contains(&n))
            || !(1..=1_000_000).contains(&k.queue_facts_max)
        {
            bail!(
                "[commit]: need 1 <= batch_facts_max <= 4096, 1 <= batches_in_flight_max <= 64, 1 <= queue_facts_max <= 1000000"
            );
        }
        if let Some(min) = k.atomic_batch_facts_min
            && min > crate::store::facts::ATOMIC_BATCH_FACTS_MAX
        {
            bail!(
                "[commit] atomic_batch_facts_min is {min}; need 0 (never) to {} (nats-server's \
                 largest atomic batch)",
                crate::store::facts::ATOMIC_BATCH_FACTS_MAX
            );
        }
        if !(1024..=4_194_304).contains(&k.key_index_staged_facts_max) {
            bail!(
                "[commit] key_index_staged_facts_max is {}; need 1024 to 4194304",
                k.key_index_staged_facts_max
            );
        }
        if !(1024..=4_194_304).contains(&k.key_index_buffered_facts_max) {
            bail!(
                "[commit] key_index_buffered_facts_max is {}; need 1024 to 4194304",
                k.key_index_buffered_facts_max
            );
        }
        if !k.key_filter_bytes.is_power_of_two()
            || !((1 << 20)..=(1 << 30)).contains(&k.key_filter_bytes)
        {
            bail!(
                "[commit] key_filter_bytes is {}; need a power of two from 1048576 (1 MiB) to 1073741824 (1 GiB)",
                k.key_filter_bytes
            );
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600))
            .contains(&k.key_index_sync_interval)
        {
            bail!("[commit] key_index_sync_interval must be between 10ms and 1h");
        }
        Ok(())
    }

    /// `[boundary]`: connection, memory and timeout bounds.
    fn check_boundary(&self) -> anyhow::Result<()> {
        let b = &self.boundary;
        let largest_request = crate::node::boundary::routes::Routes::new(self).cost_bytes_max();
        if !(1..=65_536).contains(&b.connections_max)
            || !(largest_request..=u32::MAX as usize).contains(&b.request_memory_bytes_max)
        {
            bail!(
                "[boundary]: need 1 <= connections_max <= 65536 and {largest_request} <= request_memory_bytes_max <= {} (the largest request must fit)",
                u32::MAX
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&b.body_timeout)
            || b.connection_idle_timeout < Duration::from_secs(1)
        {
            bail!(
                "[boundary]: body_timeout must be between 1s and 1h, connection_idle_timeout at least 1s"
            );
        }
        Ok(())
    }

    /// Category names and fill bounds; each subject kind in one category.
    fn check_categories(&self) -> anyhow::Result<()> {
        for c in &self.categories {
            let token_ok = !c.name.is_empty()
                && c.name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
            if !token_ok {
                bail!(
                    "category name {:?} must be lower-case letters, digits and _",
                    c.name
                );
            }
            if !(1..=100).contains(&c.fill_threshold_percent)
                || c.retain_fill_percent > c.fill_threshold_percent
            {
                bail!(
                    "category {}: need 1 <= retain_fill_percent <= fill_threshold_percent <= 100",
                    c.name
                );
            }
            if c.capacity_bytes < 64 * 1024 {
                bail!(
                    "category {}: capacity_bytes must be at least 64 KiB",
                    c.name
                );
            }
        }
        for (i, c) in self.categories.iter().enumerate() {
            for k in &c.kinds {
                if self.categories[i + 1..].iter().any(|o| o.kinds.contains(k)) {
                    bail!("subject kind {k:?} is routed to more than one category");
                }
            }
        }
        Ok(())
    }

    /// Consumer names, unique, each of a known category.
    fn check_consumers(&self) -> anyhow::Result<()> {
        for consumer in &self.consumers {
            bsfg_domain::validate::consumer_name(&consumer.name)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            if !self.categories.iter().any(|c| c.name == consumer.category) {
                bail!(
                    "consumer {} names unknown category {}",
                    consumer.name,
                    consumer.category
                );
            }
            if self
                .consumers
                .iter()
                .filter(|c| c.name == consumer.name)
                .count()
                > 1
            {
                bail!("consumer {} is declared twice", consumer.name);
            }
        }
        Ok(())
    }

    /// Bucket names.
    fn check_buckets(&self) -> anyhow::Result<()> {
        for b in &self.buckets {
            bsfg_domain::validate::bucket(&b.name).map_err(|r| anyhow::anyhow!("{r}"))?;
        }
        Ok(())
    }

    /// `[tls]`: mutual TLS needs its files.
    fn check_tls(&self) -> anyhow::Result<()> {
        if self.tls.mode == TlsMode::Mtls
            && (self.tls.ca.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!(
                "[tls] mode = \"mtls\" needs ca, cert and key (create them with `bsfg certs init` and `bsfg certs issue`)"
            );
        }
        Ok(())
    }

    /// `[nats]`: `sync_interval` is `always` or a duration; `url` or
    /// `urls`, not both; a replica count JetStream accepts, and 1 for the
    /// embedded (single) server.
    fn check_nats(&self) -> anyhow::Result<()> {
        if self.nats.url.is_some() && !self.nats.urls.is_empty() {
            bail!("[nats] has url and urls: name the cluster's servers in urls only");
        }
        if !(1..=5).contains(&self.nats.replicas) {
            bail!(
                "[nats] replicas is {}; need 1 to 5 (JetStream's limit)",
                self.nats.replicas
            );
        }
        if self.nats.is_embedded() && self.nats.replicas != 1 {
            bail!(
                "[nats] replicas is {} but the node starts its own single server: \
                 name a cluster's servers in [nats] urls, or set replicas = 1",
                self.nats.replicas
            );
        }
        if self.nats.sync_interval != "always"
            && humantime::parse_duration(&self.nats.sync_interval).is_err()
        {
            bail!(
                "[nats] sync_interval must be \"always\" or a duration such as \"1s\", not {:?}",
                self.nats.sync_interval
            );
        }
        Ok(())
    }

    /// `[ha]`: the nodes share an external store; a node id; a lease long
    /// enough to renew over a loaded network.
    fn check_ha(&self) -> anyhow::Result<()> {
        let Some(ha) = &self.ha else {
            return Ok(());
        };
        if self.nats.is_embedded() {
            bail!("[ha] needs the zone's shared store: name its servers in [nats] urls");
        }
        if ha.node_id.is_empty() || ha.node_id.chars().any(char::is_whitespace) {
            bail!("[ha] node_id must be a non-empty name without spaces");
        }
        if !(Duration::from_millis(500)..=Duration::from_secs(300)).contains(&ha.lease_ttl) {
            bail!("[ha] lease_ttl is {:?}; need 500ms to 5m", ha.lease_ttl);
        }
        Ok(())
    }

    /// Principals: identities mapped once, peers with a zone and not operators,
    /// grants of known consumers and buckets.
    fn check_principals(&self) -> anyhow::Result<()> {
        let mut identities = std::collections::HashSet::new();
        for p in &self.principals {
            if p.identities.is_empty() {
                bail!("principal {} has no identities", p.name);
            }
            for id in &p.identities {
                if !identities.insert(id.as_str()) {
                    bail!("identity {id:?} is mapped to more than one principal");
                }
            }
            if p.kind == PrincipalKind::Peer && p.zone.is_none() {
                bail!("peer principal {} needs zone", p.name);
            }
            if p.kind == PrincipalKind::Peer && p.operator {
                bail!(
                    "peer principal {} cannot be an operator: operator = true is for this zone's own people and tools (kind = \"app\")",
                    p.name
                );
            }
            for c in &p.consumers {
                if !self.consumers.iter().any(|k| &k.name == c) {
                    bail!("principal {} names unknown consumer {c}", p.name);
                }
            }
            for b in p.buckets_read.iter().chain(&p.buckets_write) {
                if !self.buckets.iter().any(|k| &k.name == b) {
                    bail!("principal {} names unknown bucket {b}", p.name);
                }
            }
        }
        Ok(())
    }

    /// Upstreams: a peer principal each, sane backoff and batch bounds.
    fn check_upstreams(&self) -> anyhow::Result<()> {
        for u in &self.upstreams {
            if u.url.is_empty() == u.urls.is_empty() {
                bail!("upstream {} needs url or urls (one of the two)", u.peer);
            }
            let ok = self
                .principals
                .iter()
                .any(|p| p.name == u.peer && p.kind == PrincipalKind::Peer);
            if !ok {
                bail!(
                    "upstream {} needs a principal named {} with kind = \"peer\" (its origins and import policy apply)",
                    u.url,
                    u.peer
                );
            }
            if u.backoff_min.is_zero() || u.backoff_min > u.backoff_max {
                bail!(
                    "upstream {}: backoff_min ({:?}) must be above zero and at most backoff_max ({:?})",
                    u.peer,
                    u.backoff_min,
                    u.backoff_max
                );
            }
            if u.batch_facts_max == 0 || u.batches_ahead_max == 0 {
                bail!(
                    "upstream {}: batch_facts_max and batches_ahead_max must be at least 1",
                    u.peer
                );
            }
            if u.linger > UPSTREAM_LINGER_MAX {
                bail!(
                    "upstream {}: linger ({:?}) must be at most {UPSTREAM_LINGER_MAX:?}: it adds \
                     to every hop's lag",
                    u.peer,
                    u.linger
                );
            }
            if u.wait > UPSTREAM_WAIT_MAX {
                bail!(
                    "upstream {}: wait ({:?}) must be at most {UPSTREAM_WAIT_MAX:?}; a peer \
                     answers a long-poll after its [fetch] wait_max (30s by default) anyway",
                    u.peer,
                    u.wait
                );
            }
        }
        Ok(())
    }

    /// `[routes]`: destinations and next hops are zone names.
    fn check_routes(&self) -> anyhow::Result<()> {
        for (destination, hop) in &self.routes {
            bsfg_domain::validate::zone("route destination", destination)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            bsfg_domain::validate::zone("route next hop", hop)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ZoneConfig;

    #[test]
    fn commit_limits_are_checked() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plant-a.toml");
        let mut config = ZoneConfig::load(&path).unwrap();
        config.commit.batch_facts_max = 0;
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("batch_facts_max")
        );
        config.commit.batch_facts_max = 256;
        config.commit.atomic_batch_facts_min = Some(1001);
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("atomic_batch_facts_min")
        );
        config.commit.atomic_batch_facts_min = Some(0);
        config.check().unwrap();
        config.commit.atomic_batch_facts_min = None;
        assert_eq!(
            config.atomic_batch_facts_min(),
            32,
            "at sync_interval always"
        );
        config.nats.sync_interval = "2m".into();
        assert_eq!(
            config.atomic_batch_facts_min(),
            0,
            "never at a periodic sync"
        );
        config.nats.sync_interval = "always".into();
        for bytes in [3 << 20, 1 << 19, 1 << 31] {
            config.commit.key_filter_bytes = bytes;
            assert!(
                config
                    .check()
                    .unwrap_err()
                    .to_string()
                    .contains("key_filter_bytes"),
                "{bytes} bytes"
            );
        }
        config.commit.key_filter_bytes = 64 << 20;
        config.check().unwrap();
    }
}
