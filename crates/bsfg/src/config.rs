//! Zone configuration (TOML).
//!
//! Everything a node needs is declared here: its zone, listeners, the NATS
//! server it owns (or an external one), categories with their retention and
//! capacity, named consumers and object buckets. Consumers are provisioned
//! from configuration, never created ad hoc by clients.

use bsfg_domain::limits::Limits;
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
}

/// One peer this node replicates from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The peer principal (must be a `kind = "peer"` principal of this zone:
    /// its origins and import policy apply to what is pulled).
    pub peer: String,
    /// The peer's boundary URL (https:// with mTLS, this node's certificate).
    pub url: String,
    /// The consumer on the peer exported to this zone.
    pub consumer: String,
    #[serde(default = "default_batch_limit")]
    pub batch_limit: u32,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes_max: u64,
    /// Long-poll wait of each fetch.
    #[serde(default = "default_wait_ms")]
    pub wait_ms: u32,
    /// Batches fetched ahead of the one being screened (memory bound:
    /// (pipeline_depth + 3) x batch_bytes_max, see `replicator`).
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: usize,
    /// Retry backoff bounds (with jitter).
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Directory where artifacts are spooled while they are pulled, so an
    /// interrupted transfer resumes where it stopped.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
}

fn default_batch_limit() -> u32 {
    1000
}
fn default_batch_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_wait_ms() -> u32 {
    1000
}
fn default_pipeline_depth() -> usize {
    2
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("data/spool")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Mutual TLS 1.3; a client certificate from the site CA is required.
    Mtls,
    /// No TLS and no authentication. Development only; logged loudly.
    PlaintextDev,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// Trusted CA bundle (PEM) for client certificates.
    pub ca: Option<PathBuf>,
    /// This node's certificate chain and key (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How often the files are checked for replacement.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    pub fn plaintext_dev() -> Self {
        Self {
            mode: TlsMode::PlaintextDev,
            ca: None,
            cert: None,
            key: None,
            reload_interval: default_tls_reload(),
        }
    }
    pub fn mtls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            mode: TlsMode::Mtls,
            ca: Some(ca),
            cert: Some(cert),
            key: Some(key),
            reload_interval: default_tls_reload(),
        }
    }
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(2)
}

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// An external nats-server for this zone. When absent the node starts and
    /// supervises its own (the embedded default), loopback only, with a
    /// password generated at each start.
    pub url: Option<String>,
    /// How the node logs in to an external server: a user and a file
    /// holding its password (keep it owner-only), or a NATS credentials
    /// file (`.creds`, JWT and nkey seed). Neither: no login (then anyone
    /// who reaches the server can read and write the zone's store).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    /// Store directory of the embedded nats-server.
    pub store_dir: PathBuf,
    /// Client port of the embedded nats-server (0 picks a free one).
    pub port: u16,
    /// nats-server binary; defaults to `.tools/bin/nats-server`, then PATH.
    pub server_bin: Option<PathBuf>,
    /// Timeout for every JetStream API call, and for a whole append round:
    /// its publishes and all their acknowledgements share one deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Embedded server's JetStream `sync_interval`: `always` (default: an
    /// acknowledged fact survives a power cut) or a duration such as `1s`
    /// (much faster; a power cut can lose that much acknowledged data).
    #[serde(default = "default_sync_interval")]
    pub sync_interval: String,
    /// Appends (and uploads) are refused `disk_full` while the filesystem
    /// of the embedded server's store directory, or of the key index, has
    /// less free space than this (bytes; 0 turns the refusal off). See
    /// `store::disk` for why 256 MiB and why not a percentage.
    pub store_free_bytes_min: u64,
}

/// The default `[nats] store_free_bytes_min`: 256 MiB.
pub const STORE_FREE_BYTES_MIN_DEFAULT: u64 = 256 << 20;

fn default_sync_interval() -> String {
    "always".into()
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            user: None,
            password_file: None,
            creds_file: None,
            store_dir: PathBuf::from("data/jetstream"),
            port: 0,
            server_bin: None,
            request_timeout: Duration::from_secs(5),
            sync_interval: default_sync_interval(),
            store_free_bytes_min: STORE_FREE_BYTES_MIN_DEFAULT,
        }
    }
}

/// Group commit: concurrent AppendFact calls are appended in batches (one
/// key-index look-up and one pipelined publish per batch), and the
/// idempotency key index they are checked against (`store::key_index`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    /// Most facts in one batch.
    pub batch_facts_max: usize,
    /// Most batches being appended at once.
    pub batches_in_flight_max: usize,
    /// Most appends waiting for a batch; beyond it callers wait.
    pub queue_facts_max: usize,
    /// The key index file; by default `key-index.<zone>.kix` beside the
    /// nats store directory (`[nats] store_dir`).
    pub key_index_path: Option<PathBuf>,
    /// How often the key index is checkpointed at the latest: its buffered
    /// entries merged into the pages, the pages fsynced, the header written,
    /// the table grown. A full buffer checkpoints sooner. Losing the
    /// buffer costs only a re-read of those facts at start-up (at most
    /// `key_index_buffered_facts_max`; 100,000 take about 0.2 s). Each merge
    /// writes every page its entries touch, once, so merging rarely writes
    /// far less to disk (`bsfg-bench key-index`, BENCHMARKS.md "Merging
    /// from a memory buffer").
    #[serde(with = "humantime_serde")]
    pub key_index_sync_interval: Duration,
    /// Recorded key index entries held in memory (about 40 bytes each,
    /// twice that while a merge sorts them) before they are merged into
    /// the index file's pages.
    pub key_index_buffered_facts_max: usize,
    /// Most acknowledged facts waiting in memory for the key index's
    /// writer; beyond it appends wait (a failing disk), then are refused.
    pub key_index_staged_facts_max: usize,
    /// Memory of the key filter that answers most look-ups of new keys
    /// without reading a page (a power of two, 1 MiB to 1 GiB). It never
    /// loses a key; a fuller one only reads pages more often: with 1 byte
    /// per retained fact about 2.4 % of new keys read a page, with 2 bytes
    /// 0.24 %. The default, 4 MiB, suits up to about 4M retained facts.
    pub key_filter_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            batch_facts_max: 256,
            batches_in_flight_max: 2,
            queue_facts_max: 4096,
            key_index_path: None,
            key_index_sync_interval: Duration::from_secs(300),
            key_index_buffered_facts_max: crate::store::key_index::BUFFERED_ENTRIES_MAX_DEFAULT,
            key_index_staged_facts_max: 65_536,
            key_filter_bytes: crate::store::key_index::FILTER_BYTES_DEFAULT,
        }
    }
}

/// Bounds of the boundary port (see `node::boundary`). Every field caps
/// what callers can make the node hold or wait for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoundaryConfig {
    /// Open connections at once; more are closed at accept and counted
    /// (`bsfg_connections_refused`). Each can buffer up to 8 MiB of
    /// request data it has sent but the node has not read yet.
    pub connections_max: usize,
    /// Request memory the node admits at once, in bytes. A request is
    /// admitted with about four times its largest possible message (a
    /// declared, uncompressed body counts its length) and waits for room
    /// for up to `body_timeout`, then is refused `node_busy`.
    pub request_memory_bytes_max: usize,
    /// A unary request's body must arrive within it; a streamed upload must
    /// send something at least this often.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
}

impl Default for BoundaryConfig {
    fn default() -> Self {
        Self {
            connections_max: 256,
            request_memory_bytes_max: 64 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
            connection_idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    pub limit_default: u32,
    pub limit_max: u32,
    pub bytes_default: u64,
    pub bytes_max: u64,
    pub wait_ms_max: u32,
    /// Most bytes a consumer's next batch is pulled ahead while its caller
    /// handles the current one (one such batch per consumer; 0 turns
    /// read-ahead off). See `store::consumers`.
    pub read_ahead_bytes_max: u64,
    /// Compress FetchFacts responses (gzip) for clients that accept it.
    /// Off by default: on a small gateway the CPU is scarcer than the link;
    /// turn it on for thin WAN links.
    pub compress: bool,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            limit_default: 100,
            limit_max: 10_000,
            bytes_default: 1024 * 1024,
            bytes_max: 16 * 1024 * 1024,
            wait_ms_max: 30_000,
            read_ahead_bytes_max: 1024 * 1024,
            compress: false,
        }
    }
}

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

fn default_categories() -> Vec<CategoryConfig> {
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
fn default_retention_interval() -> Duration {
    Duration::from_secs(5)
}
pub fn default_clock_skew_max() -> Duration {
    Duration::from_secs(10)
}

impl ZoneConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let config: ZoneConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        config.check()?;
        Ok(config)
    }

    /// Cross-field checks a serde schema cannot express.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        bsfg_domain::validate::zone("zone", &self.zone).map_err(|r| anyhow::anyhow!("{r}"))?;
        if self.categories.iter().filter(|c| c.default).count() != 1 {
            bail!("exactly one category must have default = true");
        }
        let k = &self.commit;
        if !(1..=4096).contains(&k.batch_facts_max)
            || !(1..=64).contains(&k.batches_in_flight_max)
            || !(1..=1_000_000).contains(&k.queue_facts_max)
        {
            bail!(
                "[commit]: need 1 <= batch_facts_max <= 4096, 1 <= batches_in_flight_max <= 64, 1 <= queue_facts_max <= 1000000"
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
        for b in &self.buckets {
            bsfg_domain::validate::bucket(&b.name).map_err(|r| anyhow::anyhow!("{r}"))?;
        }
        if self.tls.mode == TlsMode::Mtls
            && (self.tls.ca.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!(
                "[tls] mode = \"mtls\" needs ca, cert and key (create them with `bsfg certs init` and `bsfg certs issue`)"
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
        for u in &self.upstreams {
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
            if u.batch_limit == 0 || u.pipeline_depth == 0 {
                bail!(
                    "upstream {}: batch_limit and pipeline_depth must be at least 1",
                    u.peer
                );
            }
        }
        for (destination, hop) in &self.routes {
            bsfg_domain::validate::zone("route destination", destination)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            bsfg_domain::validate::zone("route next hop", hop)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
        }
        Ok(())
    }

    /// The peer zone a fact addressed to `to_zone` leaves through, if any:
    /// a configured route, else the peer itself when `to_zone` is a
    /// neighbouring peer's zone. Facts for this zone never leave it.
    pub fn next_hop(&self, to_zone: &str) -> Option<&str> {
        if to_zone == self.zone {
            return None;
        }
        if let Some(hop) = self.routes.get(to_zone) {
            return Some(hop);
        }
        self.principals
            .iter()
            .find(|p| p.kind == PrincipalKind::Peer && p.zone.as_deref() == Some(to_zone))
            .and_then(|p| p.zone.as_deref())
    }

    /// Whether a fact of `category` addressed to `to_zone` can ever leave
    /// this zone: `to_zone` is this zone, or some link leads towards it and
    /// the peer on that link is granted a consumer of the category (and its
    /// export policy does not exclude the category). Otherwise the fact
    /// would be stored and never cross, so AppendFact refuses it.
    pub fn check_route(&self, to_zone: &str, category: &str) -> Result<(), bsfg_domain::Rejection> {
        use bsfg_domain::{Code, Rejection};
        let Some(hop) = self.next_hop(to_zone) else {
            if to_zone == self.zone {
                return Ok(());
            }
            let reachable: Vec<&str> = std::iter::once(self.zone.as_str())
                .chain(self.routes.keys().map(String::as_str))
                .chain(
                    self.principals
                        .iter()
                        .filter(|p| p.kind == PrincipalKind::Peer)
                        .filter_map(|p| p.zone.as_deref()),
                )
                .collect();
            return Err(Rejection::invalid(
                "no_route_to_zone",
                format!(
                    "no link of zone {} leads to zone {to_zone:?}; zones reachable from here: {reachable:?} (a [routes] entry or a peer principal makes a zone reachable)",
                    self.zone
                ),
            ));
        };
        let carried = self
            .principals
            .iter()
            .filter(|p| p.kind == PrincipalKind::Peer && p.zone.as_deref() == Some(hop))
            .any(|p| {
                let exported = p.export.categories.is_empty()
                    || p.export.categories.iter().any(|c| c == category);
                exported
                    && p.consumers.iter().any(|name| {
                        self.consumers
                            .iter()
                            .any(|c| &c.name == name && c.category == category)
                    })
            });
        if carried {
            return Ok(());
        }
        Err(Rejection::new(
            Code::FailedPrecondition,
            "category_not_routed",
            format!(
                "facts for zone {to_zone} leave through peer {hop}, but no consumer of category {category} is granted to it: this fact would never cross; an operator grants {hop}'s principal a consumer of {category}, or the producer uses a kind of a category that crosses"
            ),
        ))
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
        assert_eq!(config.commit.batches_in_flight_max, 2);
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

    /// Every field of a section has a default: naming one is enough.
    #[test]
    fn a_partial_nats_section_takes_defaults() {
        let text = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n[tls]\nmode = \"plaintext-dev\"\n[nats]\nsync_interval = \"1s\"\n";
        let config: ZoneConfig = toml::from_str(text).expect("parses");
        assert_eq!(config.nats.sync_interval, "1s");
        assert_eq!(config.nats.port, 0);
        assert_eq!(
            config.nats.request_timeout,
            NatsConfig::default().request_timeout
        );
    }

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
