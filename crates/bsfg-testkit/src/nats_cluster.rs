//! A JetStream cluster of nats-servers on loopback: one zone's store
//! replicated over several processes, for the tests of a zone that survives
//! the loss of a machine and for the benchmark of one. Every server has its
//! own name, client port, cluster port and store (`js-<zone>-<i>/`), and all
//! serve the same JetStream domain, the zone's name. Each is a
//! [`NatsServer`], so a test kills (`kill -9`), freezes and restarts them
//! one by one; [`NatsCluster::stream_leader`] names the worst one to kill
//! and [`NatsCluster::wait_replicas_current`] waits until a restarted one
//! has caught up. `bsfg demo --ha` starts its zone's store with it.

use crate::nats_server::NatsServer;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often [`NatsCluster::wait_replicas_current`] asks.
const REPLICA_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A running cluster; its servers are killed when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// The servers, in the order they were named (`<zone>-0`, `<zone>-1`, …).
    pub servers: Vec<NatsServer>,
}

/// How to start a [`NatsCluster`]; see [`NatsCluster::builder`]. Every
/// server of the cluster is started alike.
#[derive(Debug, Clone)]
pub struct NatsClusterBuilder {
    dir: PathBuf,
    zone: String,
    size: usize,
    binary: Option<PathBuf>,
    sync_interval: String,
    max_file_store_bytes: Option<u64>,
    tied_to_parent: bool,
}

impl NatsClusterBuilder {
    /// The nats-server executable (default: as [`NatsServer::builder`]).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// JetStream's `sync_interval` of every server, written quoted:
    /// `always` (the default) or a duration such as `2m`.
    pub fn sync_interval(mut self, sync_interval: &str) -> Self {
        self.sync_interval = sync_interval.to_string();
        self
    }

    /// JetStream's `max_file_store` of every server (default: nats-server's
    /// own limit, 75 % of the disk free at start-up).
    pub fn max_file_store_bytes(mut self, bytes: u64) -> Self {
        self.max_file_store_bytes = Some(bytes);
        self
    }

    /// Each server dies with the process that started it
    /// ([`crate::nats_server::NatsServerBuilder::tied_to_parent`]).
    pub fn tied_to_parent(mut self) -> Self {
        self.tied_to_parent = true;
        self
    }

    /// Starts the servers and waits until each answers JetStream requests.
    pub async fn start(self) -> anyhow::Result<NatsCluster> {
        anyhow::ensure!(self.size >= 1, "a cluster has at least one server");
        let route_ports = (0..self.size)
            .map(|_| bsfg::ports::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::with_capacity(self.size);
        for (i, route_port) in route_ports.iter().enumerate() {
            // `no_advertise`: clients reach the servers only at the URLs
            // they were given (a test's proxies stay in the path).
            let cluster = format!(
                "cluster {{\n  name: \"{zone}\"\n  listen: \"127.0.0.1:{route_port}\"\n  \
                 routes: [{routes}]\n  no_advertise: true\n}}\n",
                zone = self.zone
            );
            let mut server = NatsServer::builder(&self.dir, &format!("{}-{i}", self.zone))
                .domain(&self.zone)
                .sync_interval(&self.sync_interval)
                .extra(&cluster);
            if let Some(binary) = &self.binary {
                server = server.binary(binary);
            }
            if let Some(bytes) = self.max_file_store_bytes {
                server = server.max_file_store_bytes(bytes);
            }
            if self.tied_to_parent {
                server = server.tied_to_parent();
            }
            servers.push(server.launch()?);
        }
        for server in &mut servers {
            server.wait_ready().await?;
        }
        Ok(NatsCluster { servers })
    }
}

impl NatsCluster {
    /// A cluster of `size` servers (3 for one that survives the loss of
    /// one) serving JetStream domain `zone`, with their files in `dir`, at
    /// `sync_interval: always`.
    pub fn builder(dir: &Path, zone: &str, size: usize) -> NatsClusterBuilder {
        NatsClusterBuilder {
            dir: dir.to_path_buf(),
            zone: zone.to_string(),
            size,
            binary: None,
            sync_interval: "always".to_string(),
            max_file_store_bytes: None,
            tied_to_parent: false,
        }
    }

    /// Starts `size` servers as [`NatsCluster::builder`] describes and
    /// waits until each answers JetStream requests.
    pub async fn start(dir: &Path, zone: &str, size: usize) -> anyhow::Result<Self> {
        Self::builder(dir, zone, size).start().await
    }

    /// Every server's client URL: the zone's `[nats] urls`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// A JetStream context on the cluster (any server that answers).
    async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let client = async_nats::connect(self.urls()).await?;
        Ok(async_nats::jetstream::new(client))
    }

    /// The index in [`NatsCluster::servers`] of the server leading
    /// `stream` (e.g. `facts_operational`): the worst one to lose.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let js = self.jetstream().await?;
        let info = js.get_stream(stream).await?.info().await?.clone();
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .with_context(|| format!("stream {stream} has no leader"))?;
        let index: usize = leader
            .rsplit('-')
            .next()
            .and_then(|i| i.parse().ok())
            .with_context(|| format!("leader {leader} is not a server of this cluster"))?;
        anyhow::ensure!(index < self.servers.len(), "leader {leader}");
        Ok(index)
    }

    /// Waits until `stream` has a leader and every other replica is
    /// current (a restarted server has rejoined and caught up), at most
    /// `within`.
    pub async fn wait_replicas_current(
        &self,
        stream: &str,
        within: Duration,
    ) -> anyhow::Result<()> {
        let js = self.jetstream().await?;
        let deadline = Instant::now() + within;
        loop {
            let info = js.get_stream(stream).await?.info().await?.clone();
            let c = info.cluster.context("the stream is not clustered")?;
            if c.leader.is_some()
                && c.replicas.len() == self.servers.len() - 1
                && c.replicas.iter().all(|r| r.current && !r.offline)
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replicas of {stream} not current within {within:?}: {:?}",
                c.replicas
            );
            tokio::time::sleep(REPLICA_POLL_INTERVAL).await;
        }
    }
}
