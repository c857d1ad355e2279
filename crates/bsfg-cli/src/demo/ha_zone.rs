//! The zone of `bsfg demo --ha`: plant-a's store on a JetStream cluster of
//! three nats-servers on loopback (`bsfg_testkit::nats_cluster`), and two
//! `bsfg serve` processes of the zone, each with its own node certificate,
//! `[nats] urls`, `replicas = 3` and `[ha]`. Every process the demo starts
//! gets SIGTERM when the demo ends, however it ends (Ctrl-C, `kill`,
//! `kill -9`: `bsfg::parent_death`), and is killed when dropped.

use anyhow::Context as _;
use bsfg::config::{HaConfig, NatsConfig, TlsConfig, ZoneConfig};
use bsfg_testkit::nats_cluster::NatsCluster;
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site;
use bsfg_testkit::zone_config::{ZoneConfigBuilder, app_principal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The demo's zone.
pub(super) const ZONE: &str = "plant-a";
/// Servers in the zone's JetStream cluster; every stream has a replica on
/// each.
pub(super) const CLUSTER_SIZE: usize = 3;
/// The nodes' `[ha] lease_ttl`: a killed writer is replaced after about
/// this long.
pub(super) const LEASE_TTL: Duration = Duration::from_secs(2);
/// The nodes' `[nats] request_timeout`: bounds an append round cut off by
/// a lost nats-server.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The two nodes' `[ha] node_id`.
const NODE_IDS: [&str; 2] = ["node-1", "node-2"];
/// The identity every node certificate of the zone carries.
const NODE_IDENTITY: &str = "plant-a-bsfg";
/// The client's certificate: the zone's MES application.
pub(super) const APP_IDENTITY: &str = "mes.plant-a";
/// How long the demo's certificates are valid.
const VALID_DAYS: i64 = 30;
/// How long a node may take to answer `/healthz` after it is started.
const NODE_READY_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long one request to a node's operations port may take.
const OPS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the demo asks a node whether it is ready or writes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The CA, the client's certificate, and a node certificate per node in
/// the node's directory: the same identity, each with its own key.
pub(super) fn issue_pki(dir: &Path) -> anyhow::Result<()> {
    let certs = dir.join("certs");
    let pki = Pki::open_or_init(&certs, "BSFG demo HA CA", VALID_DAYS)?;
    pki.issue(APP_IDENTITY, VALID_DAYS)?;
    for id in NODE_IDS {
        let node_dir = dir.join(id);
        std::fs::create_dir_all(&node_dir)?;
        let request = Pki::node_request(NODE_IDENTITY, VALID_DAYS);
        bsfg::tls::pki::issue(&certs, &node_dir, &request)?;
    }
    Ok(())
}

/// The three servers, each tied to the demo's life.
pub(super) async fn start_cluster(dir: &Path) -> anyhow::Result<NatsCluster> {
    NatsCluster::builder(dir, ZONE, CLUSTER_SIZE)
        .tied_to_parent()
        .start()
        .await
}

/// One `bsfg serve` process of the zone.
pub(super) struct HaNode {
    pub(super) id: &'static str,
    /// Its boundary URL (`[ha] advertise_url`).
    pub(super) url: String,
    ops: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<tokio::process::Child>,
}

impl HaNode {
    /// Writes node `id`'s configuration into `dir/<id>/zone.toml`.
    fn prepare(dir: &Path, id: &'static str, cluster: &NatsCluster) -> anyhow::Result<Self> {
        let node_dir = dir.join(id);
        let port = bsfg::ports::free_port()?;
        let ops = bsfg::ports::free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let config = node_config(dir, id, cluster, port, ops, &url);
        config.check()?;
        let config_path = node_dir.join("zone.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        Ok(Self {
            id,
            url,
            ops: config.ops_listen,
            config_path,
            log_path: node_dir.join("bsfg.log"),
            child: None,
        })
    }

    /// Starts `bsfg serve` (this executable) and waits until it is ready.
    pub(super) async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        bsfg::parent_death::tie_to_parent(command.as_std_mut());
        self.child = Some(command.spawn().context("starting bsfg serve")?);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + NODE_READY_WAIT_MAX;
        loop {
            if matches!(ops_get(self.ops, "/healthz").await, Ok((200, _))) {
                return Ok(());
            }
            let child = self.child.as_mut().context("the node is not running")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                anyhow::bail!(
                    "{} exited ({status}); see {}",
                    self.id,
                    self.log_path.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready within {NODE_READY_WAIT_MAX:?}; see {}",
                self.id,
                self.log_path.display()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub(super) async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the node is not running")?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Whether the node holds the writer lease (`bsfg_lease_held` 1); a
    /// node that is down or does not answer does not.
    pub(super) async fn holds_lease(&self) -> bool {
        if self.child.is_none() {
            return false;
        }
        let Ok((200, metrics)) = ops_get(self.ops, "/metrics").await else {
            return false;
        };
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("bsfg_lease_held "))
            .is_some_and(|v| v.trim() == "1")
    }
}

/// Node `id`: mutual TLS with its own certificate, the zone's MES app, the
/// cluster's servers with three replicas, and `[ha]`.
fn node_config(
    dir: &Path,
    id: &str,
    cluster: &NatsCluster,
    port: u16,
    ops: u16,
    url: &str,
) -> ZoneConfig {
    let node_dir = dir.join(id);
    let tls = TlsConfig::mtls(
        dir.join("certs").join("ca.pem"),
        node_dir.join(format!("{NODE_IDENTITY}.pem")),
        node_dir.join(format!("{NODE_IDENTITY}.key")),
    );
    ZoneConfigBuilder::new(ZONE)
        .listen(port)
        .ops_listen(ops)
        .tls(tls)
        .principal(app_principal("mes", APP_IDENTITY, &["mes"], &[], &[]))
        .nats(NatsConfig {
            urls: cluster.urls(),
            replicas: CLUSTER_SIZE,
            request_timeout: NATS_REQUEST_TIMEOUT,
            ..NatsConfig::default()
        })
        .consumer(site::consumer("mes", "operational"))
        .with(|c| {
            c.commit.key_index_path = Some(node_dir.join("key-index"));
            c.ha = Some(HaConfig {
                node_id: id.into(),
                advertise_url: Some(url.into()),
                lease_ttl: LEASE_TTL,
            });
        })
        .build()
}

/// Both nodes, started one after the other.
pub(super) async fn start_nodes(dir: &Path, cluster: &NatsCluster) -> anyhow::Result<Vec<HaNode>> {
    let mut nodes = Vec::new();
    for id in NODE_IDS {
        let mut node = HaNode::prepare(dir, id, cluster)?;
        node.start().await?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Waits until exactly one node holds the lease, at most `within`; its
/// index in `nodes`.
pub(super) async fn active_node(nodes: &[HaNode], within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut holders = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.holds_lease().await {
                holders.push(i);
            }
        }
        if let [one] = holders[..] {
            return Ok(one);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no single lease holder within {within:?} (holders: {holders:?})"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `GET <path>` on an operations port (plain HTTP/1.1): status and body.
async fn ops_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(OPS_TIMEOUT, exchange).await??;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}
