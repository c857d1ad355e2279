//! Zone configuration (TOML).
//!
//! Everything a node needs is declared here: its zone, listeners, the NATS
//! server it owns (or an external one), categories with their retention and
//! capacity, named consumers and object buckets. Consumers are provisioned
//! from configuration, never created ad hoc by clients.

mod boundary;
mod category;
mod check;
mod commit;
mod duration;
mod fetch;
mod ha;
mod nats;
mod paths;
mod principal;
mod route;
pub mod site_check;
mod status;
mod tls;
mod upstream;

pub use boundary::BoundaryConfig;
pub use category::{BucketConfig, CategoryConfig, ConsumerConfig, StartPosition};
pub use commit::CommitConfig;
pub use fetch::FetchConfig;
pub use ha::{HaConfig, LEASE_TTL_DEFAULT};
pub use nats::{NatsConfig, STORE_FREE_BYTES_MIN_DEFAULT};
pub use principal::{PrincipalConfig, PrincipalKind};
pub use status::{STATUS_INTERVAL_MAX, STATUS_INTERVAL_MIN, StatusConfig};
pub use tls::{TlsConfig, TlsMode};
pub use upstream::UpstreamConfig;

use bsfg_domain::limits::Limits;
use category::default_categories;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// This zone's name; also its JetStream domain.
    pub zone: String,
    /// Boundary port (Connect, gRPC, gRPC-Web).
    pub listen: SocketAddr,
    /// Operations port: /metrics and /healthz over plain HTTP.
    pub ops_listen: SocketAddr,
    /// Transport security of the boundary port. Required: mutual TLS, or an
    /// explicit `mode = "plaintext-dev"` for development only.
    pub tls: TlsConfig,
    /// Who may call this node, mapped from client certificate identities.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    #[serde(default)]
    pub nats: NatsConfig,
    /// Several nodes for this zone (see `docs/ha.md`); absent: one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub fetch: FetchConfig,
    /// What callers of the boundary port can make the node hold.
    #[serde(default)]
    pub boundary: BoundaryConfig,
    /// Group commit of concurrent appends.
    #[serde(default)]
    pub commit: CommitConfig,
    #[serde(default = "default_categories")]
    pub categories: Vec<CategoryConfig>,
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    #[serde(default)]
    pub buckets: Vec<BucketConfig>,
    /// Next hop per destination zone: a peer is served only the facts whose
    /// `to_zone` routes through it. E.g. on plant-a: enterprise = "idmz".
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
    /// Peers this node pulls facts from (the receiver pulls; nobody pushes).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// How often retention and capacity accounting run.
    #[serde(default = "default_retention_interval", with = "humantime_serde")]
    pub retention_interval: Duration,
    /// How far this node's clock may disagree with its store's (the
    /// nats-server's) or a peer's before it says so (WARN, metric, status).
    /// Ages are judged by the store's clock whatever the skew; NTP keeps
    /// clocks within milliseconds, so 10 s means a time source is broken.
    #[serde(default = "default_clock_skew_max", with = "humantime_serde")]
    pub clock_skew_max: Duration,
    /// The root of every random choice the node makes (the key index's
    /// hash key, the links' retry jitter; see `bsfg_domain::seed`). Unset,
    /// the node draws one at start and logs it (`random_seed` in the
    /// "zone node ready" line). Set it to replay a logged run, or in tests;
    /// not in production: a known seed lets callers choose message ids
    /// that crowd one bucket of the key index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_seed: Option<u64>,
    /// The zone's own status facts, for the fleet view where they are sent.
    #[serde(default, skip_serializing_if = "StatusConfig::is_default")]
    pub status: StatusConfig,
}

fn default_retention_interval() -> Duration {
    Duration::from_secs(5)
}
pub fn default_clock_skew_max() -> Duration {
    Duration::from_secs(10)
}

impl ZoneConfig {
    /// The value for `purpose` under this node's root seed. `node::start`
    /// sets the root before anything asks; a store opened on its own
    /// (tools, tests of the store) draws one here.
    pub fn seed_for(&self, purpose: &str) -> u64 {
        let root = self.random_seed.unwrap_or_else(rand::random);
        bsfg_domain::seed::derive(root, purpose)
    }

    /// Reads and checks a zone's configuration file; its relative paths
    /// are relative to the file (see `paths`).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let mut config: ZoneConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let base = std::path::absolute(path)?
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        config.resolve_paths(&base);
        config.check()?;
        Ok(config)
    }

    /// Where the idempotency key index lives (see `CommitConfig`).
    pub fn key_index_path(&self) -> PathBuf {
        self.commit.key_index_path.clone().unwrap_or_else(|| {
            // The zone in the name: nodes of different zones that share a
            // working directory (external nats, default store_dir) must
            // not share a file.
            self.nats
                .store_dir
                .parent()
                .unwrap_or_else(|| std::path::Path::new(""))
                .join(format!("key-index.{}.kix", self.zone))
        })
    }

    /// Facts of a category in one append round from which they are
    /// committed as one atomic batch; 0: never (`CommitConfig`).
    pub fn atomic_batch_facts_min(&self) -> usize {
        self.commit.atomic_batch_facts_min(&self.nats.sync_interval)
    }

    /// Group-commit batches appended at once (`CommitConfig`).
    pub fn batches_in_flight_max(&self) -> usize {
        self.commit.batches_in_flight_max(&self.nats.sync_interval)
    }

    /// The category a subject kind is routed to.
    pub fn category_for_kind(&self, kind: &str) -> &CategoryConfig {
        self.categories
            .iter()
            .find(|c| c.kinds.iter().any(|k| k == kind))
            .or_else(|| self.categories.iter().find(|c| c.default))
            .expect("check() guarantees a default category")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example must stay a valid configuration.
    #[test]
    fn the_example_configuration_loads_and_passes_its_checks() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plant-a.toml");
        let config = ZoneConfig::load(&path).expect("examples/plant-a.toml loads");
        assert_eq!(config.zone, "plant-a");
        assert_eq!(config.commit.batches_in_flight_max, None);
        assert_eq!(config.batches_in_flight_max(), 1, "at sync_interval always");
        assert!(!config.fetch.compress);
        let operators: Vec<&str> = config
            .principals
            .iter()
            .filter(|p| p.operator)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            operators,
            ["operator"],
            "operator = true is read; it defaults to false"
        );
    }

    /// Files written with the older setting names still load, to the same
    /// values as the new names; written back, they use the new names.
    #[test]
    fn older_setting_names_still_load() {
        let head = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n\
                    [tls]\nmode = \"plaintext-dev\"\n";
        let old = format!(
            "{head}[fetch]\nlimit_default = 7\nlimit_max = 70\nwait_ms_max = 1500\n\
             [[upstreams]]\npeer = \"p\"\nurl = \"https://p\"\nconsumer = \"c\"\n\
             batch_limit = 9\nwait_ms = 250\npipeline_depth = 3\n"
        );
        let new = format!(
            "{head}[fetch]\nfacts_default = 7\nfacts_max = 70\nwait_max = \"1s 500ms\"\n\
             [[upstreams]]\npeer = \"p\"\nurl = \"https://p\"\nconsumer = \"c\"\n\
             batch_facts_max = 9\nwait = \"250ms\"\nbatches_ahead_max = 3\n"
        );
        let old: ZoneConfig = toml::from_str(&old).expect("older names load");
        let new: ZoneConfig = toml::from_str(&new).expect("new names load");
        for c in [&old, &new] {
            assert_eq!((c.fetch.facts_default, c.fetch.facts_max), (7, 70));
            assert_eq!(c.fetch.wait_max, Duration::from_millis(1500));
            let u = &c.upstreams[0];
            assert_eq!((u.batch_facts_max, u.batches_ahead_max), (9, 3));
            assert_eq!(u.wait, Duration::from_millis(250));
        }
        let written = toml::to_string(&old).unwrap();
        assert!(written.contains("wait = \"250ms\""), "{written}");
        assert!(!written.contains("batch_limit"), "{written}");
    }
}
