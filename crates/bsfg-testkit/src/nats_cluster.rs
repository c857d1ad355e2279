//! A JetStream cluster of nats-servers on loopback: one zone's store
//! replicated over several processes, for the tests of a zone that survives
//! the loss of a machine. Every server has its own name, client port,
//! cluster port and store (`js-<zone>-<i>/`), and all serve the same
//! JetStream domain, the zone's name. Each is a [`NatsServer`], so a test
//! kills (`kill -9`), freezes and restarts them one by one.

use crate::nats_server::NatsServer;
use std::path::Path;

/// A running cluster; its servers are killed when it is dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// The servers, in the order they were named (`<zone>-0`, `<zone>-1`, …).
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers (3 for a cluster that survives the loss of
    /// one) serving JetStream domain `zone`, with their files in `dir`, and
    /// waits until each answers JetStream requests.
    pub async fn start(dir: &Path, zone: &str, size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster has at least one server");
        let route_ports = (0..size)
            .map(|_| bsfg::ports::free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::with_capacity(size);
        for (i, route_port) in route_ports.iter().enumerate() {
            // `no_advertise`: clients reach the servers only at the URLs
            // they were given (a test's proxies stay in the path).
            let cluster = format!(
                "cluster {{\n  name: \"{zone}\"\n  listen: \"127.0.0.1:{route_port}\"\n  \
                 routes: [{routes}]\n  no_advertise: true\n}}\n"
            );
            let server = NatsServer::builder(dir, &format!("{zone}-{i}"))
                .domain(zone)
                .extra(&cluster)
                .launch()?;
            servers.push(server);
        }
        for server in &mut servers {
            server.wait_ready().await?;
        }
        Ok(Self { servers })
    }

    /// Every server's client URL: the zone's `[nats] urls`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}
