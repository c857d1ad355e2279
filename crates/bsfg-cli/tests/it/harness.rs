//! Test harness: a real nats-server process per test (own port, own store
//! directory, JetStream domain = zone name) and a real zone node, either
//! in-process (`bsfg::node::start`) or as a `bsfg serve` child process.
//!
//! Nodes run with mutual TLS by default: each test gets its own development
//! PKI in its temp dir (CA, node certificate `plant-a-bsfg` for
//! localhost/127.0.0.1, application certificate `mes.plant-a`), and
//! `zone.client()` is an mTLS client presenting `mes.plant-a`. Other
//! certificates: `zone.pki.issue(..)`, `zone.client_as(name)`,
//! `zone.client_with(config)`.

use bsfg::client::BsfgClient;
use bsfg::config::{
    BucketConfig, CategoryConfig, ConsumerConfig, NatsConfig, PrincipalConfig, TlsConfig,
    ZoneConfig,
};
use bsfg::ports::free_port;
use bsfg_proto::bsfg::v1::*;
pub use bsfg_testkit::nats_server::NatsServer;
pub use bsfg_testkit::pki::Pki;
pub use bsfg_testkit::zone_config::app_principal;
use bsfg_testkit::zone_config::{ZoneConfigBuilder, mtls};
use connectrpc::ConnectError;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub const ZONE: &str = "plant-a";
pub const BUCKET: &str = "records";
/// The node certificate's identity.
pub const NODE_CERT: &str = "plant-a-bsfg";
/// The default application certificate (`zone.client()`).
pub const APP_CERT: &str = "mes.plant-a";
/// The common name of a test zone's CA.
pub const TEST_CA: &str = "BSFG test CA";

/// Waits until a dropped in-process node has closed its key index: its
/// file lock released, which comes after the clean header and the saved
/// filter are written. Why: dropping a node aborts its tasks, and the last
/// of them lets go of the index a moment later on a worker thread (under
/// load, later than a fixed pause; seen as a missing saved filter in CI).
pub async fn wait_until_key_index_closed(path: &Path) {
    use std::os::fd::AsRawFd as _;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(file) = std::fs::File::open(path) else {
            return;
        };
        // SAFETY: flock on a descriptor owned here; closing it releases a
        // lock taken by this probe.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(file);
        if free {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped node still holds its key index {} after 10 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Options for a test zone.
#[derive(Clone)]
pub struct Opts {
    pub categories: Vec<CategoryConfig>,
    pub consumers: Vec<ConsumerConfig>,
    pub buckets: Vec<BucketConfig>,
    pub retention_interval: Duration,
    pub out_of_process: bool,
    /// `None`: one app principal `mes` (certificate `mes.plant-a`) allowed
    /// every configured consumer and bucket, and the zone's operator.
    /// `Some`: exactly these.
    pub principals: Option<Vec<PrincipalConfig>>,
    /// Run the boundary port in plaintext-dev mode (no TLS at all).
    pub plaintext_dev: bool,
    /// How often the node re-reads its TLS files.
    pub tls_reload_interval: Duration,
    /// `[routes]` entries (destination zone, next hop): a peer is served
    /// only facts whose to_zone routes through it.
    pub routes: Vec<(&'static str, &'static str)>,
    /// `[commit] key_index_sync_interval`; `None`: the node's default.
    pub key_index_sync_interval: Option<Duration>,
    /// `[boundary]`; `None`: the node's defaults.
    pub boundary: Option<bsfg::config::BoundaryConfig>,
    /// With `out_of_process`: the node's environment, e.g. [`faketime`].
    pub node_env: Vec<(String, String)>,
}

/// The libfaketime preload, where it is installed (Debian `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// The environment that sets a process's wall clock `offset` (e.g. "+1h")
/// from the machine's, its monotonic clock untouched; None (the reason
/// printed) where libfaketime is not installed.
pub fn faketime(offset: &str) -> Option<Vec<(String, String)>> {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!("SKIPPED: {LIBFAKETIME} not found (scripts/setup.sh installs Debian's faketime)");
        return None;
    }
    Some(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_DONT_RESET".into(), "1".into()),
    ])
}

pub use bsfg_testkit::site::category;

pub use bsfg_testkit::site::consumer;

impl Default for Opts {
    /// Categories `operational` (default), `audit` (kind `audit`, written
    /// by the node only) and `documents` (kind `document`);
    /// consumer `mes` on operational, `auditor` on audit; bucket `records`.
    fn default() -> Self {
        Opts {
            categories: vec![
                category("operational", &[], true),
                category("audit", &["audit"], false),
                category("documents", &["document"], false),
            ],
            consumers: vec![consumer("mes", "operational"), consumer("auditor", "audit")],
            buckets: vec![BucketConfig {
                name: BUCKET.into(),
                capacity_bytes: 256 * 1024 * 1024,
            }],
            retention_interval: Duration::from_secs(5),
            out_of_process: false,
            principals: None,
            plaintext_dev: false,
            tls_reload_interval: Duration::from_millis(200),
            routes: vec![],
            key_index_sync_interval: None,
            boundary: None,
            node_env: vec![],
        }
    }
}

pub enum Node {
    InProcess(bsfg::node::RunningNode),
    Process(Child),
    Stopped,
}

pub struct Zone {
    pub nats: NatsServer,
    /// The environment of an out-of-process node.
    pub node_env: Vec<(String, String)>,
    pub config: ZoneConfig,
    pub node: Node,
    pub boundary_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// The zone's PKI (the node's files live here too).
    pub pki: Pki,
    dir: tempfile::TempDir,
}

impl Zone {
    pub async fn start(opts: Opts) -> Zone {
        let dir = tempfile::tempdir().unwrap();
        let nats = start_nats(dir.path(), ZONE).await;
        let pki = Pki::init(&dir.path().join("certs"), TEST_CA, 30).unwrap();
        pki.issue_node(NODE_CERT, 30).unwrap();
        pki.issue(APP_CERT, 30).unwrap();
        let tls = if opts.plaintext_dev {
            TlsConfig::plaintext_dev()
        } else {
            let mut tls = mtls(&pki, NODE_CERT);
            tls.reload_interval = opts.tls_reload_interval;
            tls
        };
        let principals = opts.principals.unwrap_or_else(|| {
            let consumers: Vec<&str> = opts.consumers.iter().map(|c| c.name.as_str()).collect();
            let buckets: Vec<&str> = opts.buckets.iter().map(|b| b.name.as_str()).collect();
            vec![PrincipalConfig {
                operator: true,
                ..app_principal("mes", APP_CERT, &consumers, &buckets, &buckets)
            }]
        });
        let mut builder = ZoneConfigBuilder::new(ZONE)
            .listen(free_port().unwrap())
            .ops_listen(free_port().unwrap())
            .tls(tls)
            .principals(principals)
            .nats(NatsConfig {
                url: Some(nats.url()),
                store_dir: nats.store_dir.clone(),
                ..NatsConfig::default()
            })
            .categories(opts.categories)
            .consumers(opts.consumers)
            .buckets(opts.buckets)
            .retention_interval(opts.retention_interval);
        for (to_zone, next_hop) in opts.routes {
            builder = builder.route(to_zone, next_hop);
        }
        let mut config = builder.build();
        if let Some(interval) = opts.key_index_sync_interval {
            config.commit.key_index_sync_interval = interval;
        }
        if let Some(boundary) = opts.boundary {
            config.boundary = boundary;
        }
        config.check().expect("test zone config is valid");
        let mut zone = Zone {
            nats,
            node_env: opts.node_env,
            boundary_addr: config.listen,
            ops_addr: config.ops_listen,
            config,
            node: Node::Stopped,
            pki,
            dir,
        };
        if opts.out_of_process {
            zone.start_process().await;
        } else {
            zone.start_in_process().await;
        }
        zone
    }

    async fn start_in_process(&mut self) {
        let mut config = self.config.clone();
        // A fresh port each time: the previous listener closes asynchronously.
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.ops_listen = "127.0.0.1:0".parse().unwrap();
        let node = bsfg::node::start(config).await.expect("node starts");
        self.boundary_addr = node.boundary_addr;
        self.ops_addr = node.ops_addr;
        self.node = Node::InProcess(node);
    }

    async fn start_process(&mut self) {
        let log = self.dir.path().join("bsfg.log");
        let child = spawn_serve(&self.config, self.dir.path(), &log, &self.node_env).await;
        self.node = Node::Process(child);
        self.boundary_addr = self.config.listen;
        self.ops_addr = self.config.ops_listen;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bsfg.log")).unwrap_or_default()
    }

    /// Waits (the node writes its log in bursts) until at least `n` log
    /// lines with `fields[key] == value` for every pair have been written,
    /// and returns the matching lines. Every line must be one JSON object.
    pub async fn log_lines_with(&self, n: usize, pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.log_text();
            let matching: Vec<serde_json::Value> = text
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
                })
                .filter(|l| pairs.iter().all(|(k, v)| l["fields"][*k] == *v))
                .collect();
            if matching.len() >= n {
                return matching;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} log lines with {pairs:?}; log:\n{text}",
                matching.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_tls(&self) -> bool {
        self.config.tls.mode == bsfg::config::TlsMode::Mtls
    }

    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.boundary_addr)
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client (new connections) for the node as it currently runs,
    /// presenting `mes.plant-a` (mTLS) or nothing (plaintext-dev).
    pub fn client(&self) -> BsfgClient {
        if self.is_tls() {
            self.client_as(APP_CERT)
        } else {
            BsfgClient::connect(&self.url()).unwrap()
        }
    }

    /// An mTLS client presenting the certificate `<name>` of the zone's PKI
    /// (issued on first use).
    pub fn client_as(&self, name: &str) -> BsfgClient {
        self.client_with(self.pki.client_config(name).unwrap())
    }

    /// An mTLS client with any rustls configuration.
    pub fn client_with(&self, tls: Arc<rustls::ClientConfig>) -> BsfgClient {
        BsfgClient::connect_tls(&format!("https://{}", self.boundary_addr), tls).unwrap()
    }

    /// The client configuration of `zone.client()` (mTLS as `mes.plant-a`).
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.pki.client_config(APP_CERT).unwrap()
    }

    /// The operations port's /metrics text.
    pub async fn metrics_text(&self) -> String {
        metrics_text(self.ops_addr).await
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the `bsfg serve` process.
    pub fn signal_node(&self, signal: &str) {
        let Node::Process(child) = &self.node else {
            panic!("signal_node needs an out-of-process node")
        };
        bsfg_testkit::process::signal(child.id().expect("the node process is running"), signal)
            .unwrap();
    }

    /// The `bsfg serve` process id.
    pub fn node_pid(&self) -> u32 {
        let Node::Process(child) = &self.node else {
            panic!("node_pid needs an out-of-process node")
        };
        child.id().expect("the node process is running")
    }

    /// The node process's peak resident memory so far (VmHWM), in bytes.
    pub fn node_peak_rss_bytes(&self) -> u64 {
        let peak_kib = bsfg_testkit::procfs::rss(self.node_pid()).peak_kib;
        assert!(peak_kib > 0, "VmHWM in /proc/<pid>/status");
        peak_kib * 1024
    }

    /// SIGKILL of the `bsfg serve` process.
    pub async fn kill9_node(&mut self) {
        match std::mem::replace(&mut self.node, Node::Stopped) {
            Node::Process(mut child) => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
            }
            _ => panic!("kill9_node needs an out-of-process node"),
        }
    }

    pub async fn stop_node(&mut self) {
        match std::mem::replace(&mut self.node, Node::Stopped) {
            Node::Process(mut child) => {
                child.start_kill().unwrap();
                child.wait().await.unwrap();
            }
            Node::InProcess(node) => {
                drop(node);
                wait_until_key_index_closed(&self.config.key_index_path()).await;
            }
            Node::Stopped => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Stops the node (if running) and starts it again in the same mode.
    pub async fn restart_node(&mut self, out_of_process: bool) {
        self.stop_node().await;
        if out_of_process {
            self.start_process().await;
        } else {
            self.start_in_process().await;
        }
    }

    /// A direct connection to the zone's JetStream, bypassing the node.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }

    /// Messages in `facts_<category>`.
    pub async fn message_count(&self, category: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(format!("facts_{category}")).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Message counts of every configured category.
    pub async fn all_counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for c in &self.config.categories {
            out.insert(c.name.clone(), self.message_count(&c.name).await);
        }
        out
    }

    /// Every live object in a bucket (links and blobs), name → (size, digest).
    pub async fn list_bucket(&self, bucket: &str) -> BTreeMap<String, (usize, Option<String>)> {
        use futures::StreamExt;
        let js = self.jetstream().await;
        let store = js.get_object_store(bucket).await.unwrap();
        let mut list = store.list().await.unwrap();
        let mut out = BTreeMap::new();
        while let Some(info) = list.next().await {
            let info = info.unwrap();
            out.insert(info.name.clone(), (info.size, info.digest.clone()));
        }
        out
    }

    /// The chunk subjects of `bucket` that no object's metadata names:
    /// bytes no object can reach or delete.
    pub async fn orphan_chunk_subjects(&self, bucket: &str) -> Vec<String> {
        use futures::TryStreamExt;
        let js = self.jetstream().await;
        let store = js.get_object_store(bucket).await.unwrap();
        let mut live = std::collections::HashSet::new();
        let mut list = store.list().await.unwrap();
        while let Some(info) = list.try_next().await.unwrap() {
            live.insert(format!("$O.{bucket}.C.{}", info.nuid));
        }
        let stream = js.get_stream(format!("OBJ_{bucket}")).await.unwrap();
        let filter = format!("$O.{bucket}.C.>");
        let mut subjects = stream.info_with_subjects(filter).await.unwrap();
        let mut orphans = Vec::new();
        while let Some((subject, _)) = subjects.try_next().await.unwrap() {
            if !live.contains(&subject) {
                orphans.push(subject);
            }
        }
        orphans
    }

    /// Total bytes held by a bucket's underlying stream (chunks included).
    pub async fn bucket_stream_messages(&self, bucket: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(format!("OBJ_{bucket}")).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// A nats-server for zone `zone` (its JetStream domain) with its files in
/// `dir`, on a free port, syncing every write.
pub async fn start_nats(dir: &Path, zone: &str) -> NatsServer {
    NatsServer::builder(dir, zone).start().await.unwrap()
}

/// Starts `bsfg serve` with `config` (written to `<dir>/zone.toml`) and
/// the environment `env`, its output appended to `log`, and waits until
/// its operations port says healthy and its boundary port accepts; panics,
/// quoting the log, if it exits first or is not ready within 30 s.
pub async fn spawn_serve(
    config: &ZoneConfig,
    dir: &Path,
    log: &Path,
    env: &[(String, String)],
) -> Child {
    let path = dir.join("zone.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bsfg serve");
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthz_ok(config.ops_listen).await
        || tokio::net::TcpStream::connect(config.listen).await.is_err()
    {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{}: bsfg serve exited with {status}; log: {}",
                config.zone,
                log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{}: bsfg serve not ready; log: {}",
            config.zone,
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// The /metrics text of the operations port at `addr`.
pub async fn metrics_text(addr: SocketAddr) -> String {
    let (status, body) = http_raw(addr, "GET", "/metrics", "text/plain", b"")
        .await
        .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

async fn healthz_ok(addr: SocketAddr) -> bool {
    match http_raw(addr, "GET", "/healthz", "text/plain", b"").await {
        Ok((status, _)) => status == 200,
        Err(_) => false,
    }
}

/// A hand-written HTTP/1.1 request (Connection: close) in plain TCP (the
/// operations port, or a plaintext-dev boundary); returns status and body.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    http_over(stream, addr, method, path, content_type, body).await
}

/// A TLS connection to `addr` (server name 127.0.0.1) with ALPN narrowed to
/// `alpn`; the handshake is complete when this returns.
pub async fn tls_connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = (**tls).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await
}

/// The same hand-written HTTP/1.1 request over mutual TLS (ALPN http/1.1).
pub async fn https_raw(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let stream = tls_connect(addr, tls, &[b"http/1.1"]).await?;
    http_over(stream, addr, method, path, content_type, body).await
}

async fn http_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("HTTP response timed out"))??;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(head.clone()))?;
    let mut body = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique message id.
pub fn mid(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now_ms() -> i64 {
    bsfg::store::now_unix_ms()
}

pub fn envelope(message_id: &str) -> Envelope {
    Envelope {
        message_id: message_id.into(),
        from_zone: ZONE.into(),
        // A test zone has no links: its facts stay in it.
        to_zone: ZONE.into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    }
}

/// The value of the first sample of `name` whose line carries every label.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
}

pub fn fact(subject: &str, predicate: &str, object_json: &str) -> Fact {
    Fact {
        subject: subject.into(),
        predicate: predicate.into(),
        object_json: object_json.into(),
        ..Default::default()
    }
}

pub fn batch_fact(n: usize) -> Fact {
    fact(
        &format!("batch:PlantA/B{n}"),
        "step_completed",
        &format!(r#"{{ "step": "granulation", "n": {n}, "duration_s": 5400.0 }}"#),
    )
}

pub fn canonical(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    serde_json_canonicalizer::to_string(&value).unwrap()
}

/// Asserts a Connect error's code and reason prefix.
pub fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, ConnectError>,
    code: &str,
    reason: &str,
) {
    match result {
        Ok(v) => panic!("expected {code} {reason}, got Ok({v:?})"),
        Err(e) => {
            let message = e.message.clone().unwrap_or_default();
            assert_eq!(e.code.as_str(), code, "code for {reason}: {message}");
            assert!(
                message.starts_with(reason),
                "expected reason {reason:?}, got message {message:?}"
            );
        }
    }
}

/// Fetches everything currently available to `consumer` (short waits) until
/// `expected` facts were seen or the deadline passes.
pub async fn fetch_all(client: &BsfgClient, consumer: &str, expected: usize) -> Vec<StoredFact> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.len() < expected && Instant::now() < deadline {
        let r = client.fetch(consumer, 1000, 0, 500).await.unwrap();
        out.extend(r.facts);
    }
    out
}

/// Appends until acknowledged, retrying each refusal with the same message
/// id (idempotent) after `retry_delay`; each refusal's message goes to
/// `refused` first.
pub async fn append_retrying(
    client: &BsfgClient,
    envelope: &Envelope,
    fact: &Fact,
    retry_delay: Duration,
    mut refused: impl FnMut(String),
) -> AppendFactResponse {
    loop {
        match client.append(envelope.clone(), fact.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                refused(e.message.unwrap_or_default());
                tokio::time::sleep(retry_delay).await;
            }
        }
    }
}

/// Checks that `fetched` are exactly the `sent` facts, once each, in offset
/// order, with content equal byte for byte to what was sent (canonicalised).
pub fn assert_exactly_once_in_order(fetched: &[StoredFact], sent: &[(Envelope, Fact, u64)]) {
    assert_eq!(
        fetched.len(),
        sent.len(),
        "fact count: fetched offsets {:?}",
        fetched.iter().map(|f| f.offset).collect::<Vec<_>>()
    );
    for (got, (envelope, fact, offset)) in fetched.iter().zip(sent) {
        assert_eq!(got.offset, *offset, "offset order");
        let e = got.envelope.as_option().expect("envelope");
        assert_eq!(e.message_id, envelope.message_id);
        assert_eq!(e.from_zone, envelope.from_zone);
        assert_eq!(e.to_zone, envelope.to_zone);
        assert_eq!(e.produced_at_unix_ms, envelope.produced_at_unix_ms);
        let f = got.fact.as_option().expect("fact");
        assert_eq!(f.subject, fact.subject);
        assert_eq!(f.predicate, fact.predicate);
        assert_eq!(
            f.object_json.as_bytes(),
            canonical(&fact.object_json).as_bytes()
        );
    }
    let offsets: Vec<u64> = fetched.iter().map(|f| f.offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing offsets: {offsets:?}"
    );
}

/// Uploads `bytes` in 64 KiB chunks.
pub async fn put(
    client: &BsfgClient,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    expected_digest: &str,
) -> Result<PutObjectResponse, ConnectError> {
    let header = PutObjectHeader {
        bucket: bucket.into(),
        key: key.into(),
        media_type: "application/octet-stream".into(),
        expected_digest: expected_digest.into(),
        ..Default::default()
    };
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    client
        .put_object(
            header,
            futures::stream::iter(chunks),
            Duration::from_secs(60),
        )
        .await
}

/// Downloads an object from `start`; returns its info and the bytes.
pub async fn get(
    client: &BsfgClient,
    bucket: &str,
    key: &str,
    start: u64,
) -> anyhow::Result<(ObjectInfo, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut expect = start;
    let info = client
        .get_object(
            bucket,
            key,
            start,
            Duration::from_secs(60),
            |offset, chunk| {
                anyhow::ensure!(offset == expect, "chunk at {offset}, expected {expect}");
                expect += chunk.len() as u64;
                bytes.extend_from_slice(chunk);
                Ok(())
            },
        )
        .await?;
    Ok((info, bytes))
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
