//! A JetStream cluster of nats-servers on loopback: one zone's store
//! replicated over several processes, for the tests of a zone that survives
//! the loss of a machine and for the benchmark of one. Every server has its
//! own name, client port, cluster port and store (`js-<zone>-<i>/`), and all
//! serve the same JetStream domain, the zone's name. Each is a
//! [`NatsServer`], so a test kills (`kill -9`), freezes and restarts them
//! one by one.

use crate::nats_server::NatsServer;
use std::path::{Path, PathBuf};

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
            let cluster = format!(
                "cluster {{\n  name: \"{zone}\"\n  listen: \"127.0.0.1:{route_port}\"\n  \
                 routes: [{routes}]\n}}\n",
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
}
