//! A zone's store in the `ha` and `ab` runs: one nats-server (R1) or a
//! JetStream cluster of three on loopback (R3), every server at the run's
//! `sync_interval`, and what the node's configuration says of it.

use crate::child::{free_port, nats_cluster, nats_server};
use crate::node_config::with_sync;
use async_nats::jetstream;
use bsfg::config::ZoneConfig;
use bsfg_testkit::nats_server::NatsServer;
use std::path::Path;
use std::time::Duration;

/// One server or a cluster, and a JetStream client of it.
pub(crate) struct Store {
    pub(crate) servers: Vec<NatsServer>,
    /// The replica count the node and the raw stream are given: the
    /// number of servers.
    pub(crate) replicas: usize,
    pub(crate) js: jetstream::Context,
}

impl Store {
    /// `replicas` servers (1, or a cluster of 3) of the nats-server binary
    /// `nats_server_bin` at `sync_interval` `sync`, serving JetStream domain
    /// `zone`, with their files in `dir`.
    pub(crate) async fn start(
        (nats_server_bin, sync): (&Path, &str),
        dir: &Path,
        zone: &str,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let servers = if replicas == 1 {
            let port = free_port()?;
            vec![
                nats_server(nats_server_bin, dir, zone, port, sync)
                    .start()
                    .await?,
            ]
        } else {
            nats_cluster(nats_server_bin, dir, zone, replicas, sync)
                .start()
                .await?
                .servers
        };
        let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
        let mut js = jetstream::new(async_nats::connect(urls).await?);
        js.set_timeout(Duration::from_secs(20));
        Ok(Self {
            servers,
            replicas,
            js,
        })
    }

    pub(crate) fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// The servers' process ids, in order.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(NatsServer::pid).collect()
    }

    /// `config` pointed at this store: `[nats] url` for one server,
    /// `urls` and `replicas` for a cluster; `sync_interval` the run's.
    pub(crate) fn configure(&self, mut config: ZoneConfig, sync: &str) -> ZoneConfig {
        if self.replicas == 1 {
            config.nats.url = self.urls().pop();
            config.nats.urls = Vec::new();
        } else {
            config.nats.url = None;
            config.nats.urls = self.urls();
        }
        config.nats.replicas = self.replicas;
        with_sync(config, sync)
    }
}
