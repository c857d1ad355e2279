//! Where the replicas of the zone's fact streams stand: every
//! [`SAMPLE_INTERVAL`] the node reads each category's stream info (one
//! request per category) and keeps the last reading, which servers lead,
//! which replicas are current and how far each lags. The status answer
//! (`node::ha_status`) shows it by server; `/metrics` as
//! `bsfg_stream_replica_lag{category,server}` and
//! `bsfg_cluster_server_current{server}`.
//!
//! Bounded: one reading (a replica per category and server) is kept, and
//! the gauges name at most [`SERVER_LABELS_MAX`] servers. A pass in which a
//! stream's info cannot be read keeps the previous reading and its time,
//! so its age shows how old it is.

use super::FactLog;
use crate::metrics::{Labels, Metrics, labels};
use async_nats::jetstream::stream::ClusterInfo;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the streams' info is read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one stream info may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most servers the gauges name (the first by name); a cluster of a zone
/// has 3 or 5, and a stream at most 5 replicas.
pub const SERVER_LABELS_MAX: usize = 7;

/// One server's replica of one category's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub category: String,
    pub server: String,
    pub leader: bool,
    pub current: bool,
    pub offline: bool,
    /// Operations behind the leader (0 for the leader).
    pub lag: u64,
    /// Since the leader last heard from it (zero for the leader).
    pub last_seen_age: Duration,
}

/// A server and its replicas, in category order.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    /// Every replica it holds is current and not offline.
    pub current: bool,
    pub replicas: Vec<Replica>,
}

/// The last reading of every fact stream's replicas.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    /// By server name.
    pub servers: Vec<Server>,
}

/// The sampler and its last reading.
pub struct StreamReplicas {
    last: Mutex<Option<Reading>>,
}

impl StreamReplicas {
    /// Reads at once, then every [`SAMPLE_INTERVAL`] until dropped.
    pub fn start(facts: Arc<FactLog>, metrics: Arc<Metrics>) -> Arc<Self> {
        let replicas = Arc::new(Self {
            last: Mutex::new(None),
        });
        let weak = Arc::downgrade(&replicas);
        // Weak: the sampler must not keep the fact log (and its key index
        // file) alive after the node stopped.
        let facts = Arc::downgrade(&facts);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut labelled = Labelled::default();
            loop {
                ticker.tick().await;
                let Some(log) = facts.upgrade() else {
                    return;
                };
                let reading = read(&log).await;
                drop(log);
                let Some(replicas) = weak.upgrade() else {
                    return;
                };
                if let Some(reading) = reading {
                    labelled.set_gauges(&metrics, &reading.servers);
                    *replicas.last.lock().expect("replicas poisoned") = Some(reading);
                }
            }
        });
        replicas
    }

    /// The last reading; None before the first.
    pub fn last(&self) -> Option<Reading> {
        self.last.lock().expect("replicas poisoned").clone()
    }
}

/// One stream info per category; None when one of them cannot be read.
async fn read(facts: &FactLog) -> Option<Reading> {
    let infos = facts.categories().map(|category| async move {
        let mut stream = category.stream.clone();
        let info = tokio::time::timeout(ANSWER_TIMEOUT, stream.info()).await;
        match info {
            Ok(Ok(info)) => Some((category.config.name.clone(), info.cluster.clone())),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, category = %category.config.name, "stream info");
                None
            }
            Err(_) => None,
        }
    });
    let at = Instant::now();
    let mut replicas = Vec::new();
    for answer in futures::future::join_all(infos).await {
        let (category, cluster) = answer?;
        if let Some(cluster) = cluster {
            replicas.extend(replicas_of(&category, &cluster));
        }
    }
    Some(Reading {
        at,
        servers: by_server(replicas),
    })
}

/// A stream's replicas from its cluster info: its leader, then the others.
pub fn replicas_of(category: &str, cluster: &ClusterInfo) -> Vec<Replica> {
    let leader = cluster.leader.iter().map(|server| Replica {
        category: category.to_string(),
        server: server.clone(),
        leader: true,
        current: true,
        offline: false,
        lag: 0,
        last_seen_age: Duration::ZERO,
    });
    let others = cluster.replicas.iter().map(|peer| Replica {
        category: category.to_string(),
        server: peer.name.clone(),
        leader: false,
        current: peer.current,
        offline: peer.offline,
        lag: peer.lag.unwrap_or(0),
        last_seen_age: peer.active,
    });
    leader.chain(others).collect()
}

/// The replicas grouped by server, servers by name, each server's replicas
/// by category.
pub fn by_server(replicas: Vec<Replica>) -> Vec<Server> {
    let mut servers: BTreeMap<String, Vec<Replica>> = BTreeMap::new();
    for replica in replicas {
        servers
            .entry(replica.server.clone())
            .or_default()
            .push(replica);
    }
    servers
        .into_iter()
        .map(|(name, mut replicas)| {
            replicas.sort_by(|a, b| a.category.cmp(&b.category));
            let current = replicas.iter().all(|r| r.current && !r.offline);
            Server {
                name,
                current,
                replicas,
            }
        })
        .collect()
}

/// The label sets the gauges were last set for, so that a server or a
/// replica gone from the streams loses its series.
#[derive(Default)]
struct Labelled {
    servers: Vec<Labels>,
    replicas: Vec<Labels>,
}

impl Labelled {
    /// Sets the gauges of the first [`SERVER_LABELS_MAX`] servers and
    /// removes those of series no longer there.
    fn set_gauges(&mut self, metrics: &Metrics, servers: &[Server]) {
        let mut server_labels = Vec::new();
        let mut replica_labels = Vec::new();
        for server in servers.iter().take(SERVER_LABELS_MAX) {
            let lbl = labels(&[("server", server.name.as_str())]);
            let current = metrics.cluster_server_current.get_or_create(&lbl);
            current.set(i64::from(server.current));
            server_labels.push(lbl);
            for r in &server.replicas {
                let lbl = labels(&[("category", &r.category), ("server", &server.name)]);
                let lag = i64::try_from(r.lag).unwrap_or(i64::MAX);
                metrics.stream_replica_lag.get_or_create(&lbl).set(lag);
                replica_labels.push(lbl);
            }
        }
        for gone in self.servers.iter().filter(|l| !server_labels.contains(l)) {
            metrics.cluster_server_current.remove(gone);
        }
        for gone in self.replicas.iter().filter(|l| !replica_labels.contains(l)) {
            metrics.stream_replica_lag.remove(gone);
        }
        self.servers = server_labels;
        self.replicas = replica_labels;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream::PeerInfo;

    fn cluster(leader: &str, peers: &[(&str, bool, u64)]) -> ClusterInfo {
        ClusterInfo {
            leader: Some(leader.into()),
            replicas: peers
                .iter()
                .map(|(name, current, lag)| PeerInfo {
                    name: name.to_string(),
                    current: *current,
                    active: Duration::from_millis(100),
                    offline: false,
                    lag: Some(*lag),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_are_grouped_by_server_and_a_lagging_replica_makes_its_server_not_current() {
        let mut replicas = replicas_of("operational", &cluster("n2", &[("n1", true, 0)]));
        replicas.extend(replicas_of("audit", &cluster("n1", &[("n2", false, 7)])));
        let servers = by_server(replicas);
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        let n2 = &servers[1];
        assert!(!n2.current, "{n2:?}");
        assert_eq!(n2.replicas[0].category, "audit");
        assert_eq!((n2.replicas[0].leader, n2.replicas[0].lag), (false, 7));
        assert!(n2.replicas[1].leader, "n2 leads operational");
        assert!(servers[0].current);
    }

    #[test]
    fn the_gauges_name_at_most_the_cap_of_servers_and_drop_servers_gone() {
        let metrics = Metrics::new();
        let mut labelled = Labelled::default();
        let many: Vec<(String, bool, u64)> = (1..=9).map(|n| (format!("n{n}"), true, n)).collect();
        let peers: Vec<(&str, bool, u64)> =
            many.iter().map(|(n, c, l)| (n.as_str(), *c, *l)).collect();
        let servers = by_server(replicas_of("operational", &cluster("n0", &peers)));
        labelled.set_gauges(&metrics, &servers);
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("bsfg_cluster_server_current{"))
            .count();
        assert_eq!(series, SERVER_LABELS_MAX, "{text}");
        let servers = by_server(replicas_of("operational", &cluster("n0", &[])));
        labelled.set_gauges(&metrics, &servers);
        let text = metrics.render();
        assert!(!text.contains("server=\"n1\""), "{text}");
        assert!(text.contains("bsfg_stream_replica_lag{category=\"operational\",server=\"n0\"} 0"));
    }
}
