//! A zone of the reference site on several machines (`SiteOpts::ha_zone`):
//! its store a three-server JetStream cluster (`[nats] urls`, three
//! replicas), two `bsfg serve` nodes (`[ha]`, node ids `a` and `b`) taking
//! turns as its writer by the lease (docs/ha.md). Its peers' links and its
//! application client name both nodes. The zone's `SiteZone` fields are
//! node `a`'s and the cluster's first server's; `HaPart` holds the rest.

use crate::crossing::SiteZone;
use crate::harness::*;
use bsfg::config::{HaConfig, ZoneConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Servers in the zone's cluster.
const CLUSTER_SIZE: usize = 3;
/// The nodes' `[ha] lease_ttl`.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// The nodes' `[nats] request_timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The application client's call deadline: a little above the nodes'
/// request timeout, so a frozen node is passed over quickly.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What an HA zone has beyond a single-node zone's fields.
pub struct HaPart {
    /// The cluster's servers after the first (`SiteZone::nats`).
    pub more_servers: Vec<NatsServer>,
    /// Node `b`.
    pub second: SecondNode,
}

/// The zone's second node: its configuration, directory and process.
pub struct SecondNode {
    pub config: ZoneConfig,
    pub dir: PathBuf,
    pub process: Option<Child>,
}

/// Starts the zone's cluster in `dir`: its first server, and the others.
pub async fn start_cluster(dir: &Path, zone: &str) -> (NatsServer, Vec<NatsServer>) {
    let cluster = bsfg_testkit::nats_cluster::NatsCluster::start(dir, zone, CLUSTER_SIZE)
        .await
        .unwrap();
    let mut servers = cluster.servers;
    let first = servers.remove(0);
    (first, servers)
}

/// Node `node_id` of an HA zone listening on `port`.
fn make_node(config: &mut ZoneConfig, node_id: &str, port: u16) {
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.ha = Some(HaConfig {
        node_id: node_id.into(),
        advertise_url: Some(format!("https://127.0.0.1:{port}")),
        lease_ttl: LEASE_TTL,
    });
}

impl HaPart {
    /// Makes `config` (its first server's URL in `[nats] url`) node `a` of
    /// a zone stored in the cluster of that server and `more_servers`, and
    /// derives node `b`, listening on `second_port`, in `<zone dir>/b`.
    pub fn new(config: &mut ZoneConfig, more_servers: Vec<NatsServer>, second_port: u16) -> Self {
        let first = config.nats.url.take().expect("the cluster's first server");
        config.nats.urls = std::iter::once(first)
            .chain(more_servers.iter().map(NatsServer::url))
            .collect();
        config.nats.replicas = CLUSTER_SIZE;
        config.nats.request_timeout = REQUEST_TIMEOUT;
        let port = config.listen.port();
        make_node(config, "a", port);
        let zone_dir = config.nats.store_dir.parent().unwrap().to_path_buf();
        let dir = zone_dir.join("b");
        std::fs::create_dir_all(&dir).unwrap();
        let mut second = config.clone();
        make_node(&mut second, "b", second_port);
        second.ops_listen = format!("127.0.0.1:{}", bsfg::ports::free_port().unwrap())
            .parse()
            .unwrap();
        second.commit.key_index_path = Some(dir.join(format!("key-index.{}.kix", config.zone)));
        for u in &mut second.upstreams {
            u.spool_dir = dir.join("spool");
        }
        config.check().expect("node a's configuration");
        second.check().expect("node b's configuration");
        let second = SecondNode {
            config: second,
            dir,
            process: None,
        };
        HaPart {
            more_servers,
            second,
        }
    }

    /// Copies node `b`'s log and the other servers' logs into `keep`.
    pub fn keep_logs(&self, keep: &Path, zone: &str) {
        let _ = std::fs::copy(
            self.second.dir.join("bsfg.log"),
            keep.join(format!("{zone}-b-bsfg.log")),
        );
        for (i, s) in self.more_servers.iter().enumerate() {
            let to = keep.join(format!("{zone}-nats-server-{}.log", i + 1));
            let _ = std::fs::copy(s.log_path(), to);
        }
    }
}

impl SiteZone {
    fn ha_part(&self) -> &HaPart {
        self.ha.as_ref().expect("an HA zone")
    }

    fn ha_part_mut(&mut self) -> &mut HaPart {
        self.ha.as_mut().expect("an HA zone")
    }

    /// Starts node `i` (0: `a`, 1: `b`) and waits until it answers.
    pub async fn spawn_node(&mut self, i: usize) {
        if i == 0 {
            return self.spawn_process().await;
        }
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let env = [("RUST_LOG".to_string(), rust_log)];
        let second = &mut self.ha_part_mut().second;
        assert!(second.process.is_none(), "already running");
        let log = second.dir.join("bsfg.log");
        second.process = Some(spawn_serve(&second.config, &second.dir, &log, &env).await);
    }

    /// SIGKILL of node `i`, waiting for it to be gone.
    pub async fn kill9_node_at(&mut self, i: usize) {
        if i == 0 {
            return self.kill9_node().await;
        }
        let second = &mut self.ha_part_mut().second;
        let mut child = second.process.take().expect("node b runs");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i`.
    pub fn signal_node_at(&self, i: usize, signal: &str) {
        if i == 0 {
            return self.signal_node(signal);
        }
        let child = self.ha_part().second.process.as_ref();
        let pid = child.and_then(|c| c.id()).expect("node b runs");
        bsfg_testkit::process::signal(pid, signal).unwrap();
    }

    /// Node `i`'s operations port.
    fn node_ops(&self, i: usize) -> SocketAddr {
        match i {
            0 => self.config.ops_listen,
            _ => self.ha_part().second.config.ops_listen,
        }
    }

    /// Waits until exactly one of the nodes marked in `running` holds the
    /// lease (`bsfg_lease_held`); returns its index.
    pub async fn active_node(&self, running: [bool; 2]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut holders = Vec::new();
            for i in (0..2).filter(|i| running[*i]) {
                let held =
                    match http_raw(self.node_ops(i), "GET", "/metrics", "text/plain", b"").await {
                        Ok((_, body)) => String::from_utf8_lossy(&body).to_string(),
                        Err(_) => String::new(),
                    };
                if metric_value(&held, "bsfg_lease_held", &[]) == Some(1.0) {
                    holders.push(i);
                }
            }
            if holders.len() == 1 {
                return holders[0];
            }
            assert!(
                Instant::now() < deadline,
                "{}: lease holders {holders:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Server `i` of the zone's cluster.
    pub fn server_mut(&mut self, i: usize) -> &mut NatsServer {
        match i {
            0 => &mut self.nats,
            _ => &mut self.ha_part_mut().more_servers[i - 1],
        }
    }
}
