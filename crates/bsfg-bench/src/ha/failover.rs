//! Item 3: failover between two `bsfg serve` nodes of one zone on a
//! three-server cluster (`[ha]`, lease_ttl 2 s), as the test
//! `bsfg-cli/tests/it/ha_nodes.rs` does it: one client given both URLs
//! appends one fact at a time (a refusal it returns is retried with the
//! same message id); `--kills` times the node holding the lease is killed
//! (`kill -9`) and, once the other took over, restarted as a standby. The
//! failover time is from the kill to the first acknowledgement the client
//! takes more than [`IN_FLIGHT_GRACE`] after it.

use super::HaArgs;
use crate::child::{Child, free_port, start_node};
use crate::metrics::scrape_metrics;
use crate::node_config::node_config;
use crate::rpc::bench_fact;
use crate::store::Store;
use crate::{object_json, run_id};
use bsfg::client::BsfgClient;
use bsfg::config::{HaConfig, ZoneConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nodes' `[ha] lease_ttl`.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long appends run between a takeover and the next kill (the
/// restarted standby's key index catches up meanwhile).
const BETWEEN_KILLS: Duration = Duration::from_secs(2);
/// An acknowledgement taken this soon after the kill may be the killed
/// node's, already on its way; no takeover is this fast (the lease lasts
/// at least two thirds of `LEASE_TTL` past the last renewal).
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(100);
/// The longest the bench waits for a takeover or a lease holder.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// The writer's wait before retrying a refusal the client returned.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// What the kills showed.
pub(super) struct Failover {
    /// Kill → next acknowledgement, ms, one per kill.
    pub(super) takeovers_ms: Vec<f64>,
    pub(super) acked: usize,
    /// Refusals the client returned (after trying both nodes).
    pub(super) refusals: u64,
}

/// One node of the zone: its configuration, directory and process.
struct HaNode {
    config: ZoneConfig,
    dir: PathBuf,
    child: Option<Child>,
}

impl HaNode {
    fn new(a: &HaArgs, store: &Store, root: &Path, node_id: &str) -> anyhow::Result<Self> {
        let dir = root.join(node_id);
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        // The NATS port given here is replaced by the store's URLs.
        let mut config = node_config((port, free_port()?, 0), 0, &dir, false)?;
        config.ha = Some(HaConfig {
            node_id: node_id.into(),
            advertise_url: Some(format!("http://127.0.0.1:{port}")),
            lease_ttl: LEASE_TTL,
        });
        let config = store.configure(config, &a.nats_sync);
        config.check()?;
        Ok(Self {
            config,
            dir,
            child: None,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    async fn start(&mut self, bin: &Path) -> anyhow::Result<()> {
        let (toml, log) = (self.dir.join("node.toml"), self.dir.join("node.log"));
        self.child = Some(start_node(bin, &self.config, &toml, &log).await?);
        Ok(())
    }

    async fn holds_lease(&self) -> bool {
        if self.child.is_none() {
            return false;
        }
        let text = scrape_metrics(self.config.ops_listen.port())
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("bsfg_lease_held "))
            .any(|v| v.trim().parse::<f64>() == Ok(1.0))
    }
}

/// The writer's acknowledgement times and the refusals it was given.
#[derive(Default)]
struct Acks {
    at: Mutex<Vec<Instant>>,
    refusals: AtomicU64,
    stop: AtomicBool,
}

/// Appends one fact at a time until `stop`, retrying a refusal with the
/// same message id.
async fn write_until(urls: Vec<String>, acks: Arc<Acks>) -> anyhow::Result<()> {
    let client = BsfgClient::connect(&urls.join(","))?;
    let payload = object_json(super::append::FACT_BYTES);
    for n in 0u64.. {
        let (envelope, fact) = bench_fact(format!("{}-ha-failover-{n}", run_id()), &payload);
        while client.append(envelope.clone(), fact.clone()).await.is_err() {
            acks.refusals.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY_DELAY).await;
        }
        acks.at.lock().unwrap().push(Instant::now());
        if acks.stop.load(Ordering::Acquire) {
            break;
        }
    }
    Ok(())
}

/// Waits until exactly one running node holds the lease; its index.
async fn active_node(nodes: &[HaNode]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let mut holders = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.holds_lease().await {
                holders.push(i);
            }
        }
        anyhow::ensure!(holders.len() <= 1, "two nodes hold the lease");
        if let [holder] = holders[..] {
            return Ok(holder);
        }
        anyhow::ensure!(Instant::now() < deadline, "no node took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the first acknowledgement taken after `killed_at` plus
/// [`IN_FLIGHT_GRACE`]; the time from the kill to it.
async fn next_ack_after(acks: &Acks, killed_at: Instant) -> anyhow::Result<Duration> {
    let after = killed_at + IN_FLIGHT_GRACE;
    loop {
        let next = acks
            .at
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take_while(|&&t| t > after)
            .last()
            .copied();
        if let Some(at) = next {
            return Ok(at - killed_at);
        }
        anyhow::ensure!(
            killed_at.elapsed() < WAIT_MAX,
            "no takeover within {WAIT_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two nodes on a three-server cluster, `--kills` kills of the active one.
pub(super) async fn run(a: &HaArgs, dir: &Path) -> anyhow::Result<Failover> {
    let store = Store::start(
        (&a.nats_server, &a.nats_sync),
        &dir.join("cluster"),
        "bench",
        3,
    )
    .await?;
    let mut nodes = vec![
        HaNode::new(a, &store, dir, "a")?,
        HaNode::new(a, &store, dir, "b")?,
    ];
    for node in &mut nodes {
        node.start(&a.bsfg).await?;
    }
    let acks = Arc::new(Acks::default());
    let urls = nodes.iter().map(HaNode::url).collect();
    let writer = tokio::spawn(write_until(urls, acks.clone()));
    let mut takeovers_ms = Vec::new();
    for kill in 0..a.kills {
        let active = active_node(&nodes).await?;
        tokio::time::sleep(BETWEEN_KILLS).await;
        // Dropping the process kills it (SIGKILL) and waits for it.
        drop(nodes[active].child.take());
        let killed_at = Instant::now();
        let takeover = next_ack_after(&acks, killed_at).await?;
        eprintln!("kill {kill} of node {active}: takeover in {takeover:?}");
        takeovers_ms.push(takeover.as_secs_f64() * 1e3);
        nodes[active].start(&a.bsfg).await?;
    }
    acks.stop.store(true, Ordering::Release);
    writer.await??;
    let acked = acks.at.lock().unwrap().len();
    Ok(Failover {
        takeovers_ms,
        acked,
        refusals: acks.refusals.load(Ordering::Relaxed),
    })
}
