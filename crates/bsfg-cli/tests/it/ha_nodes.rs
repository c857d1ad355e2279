//! Two BSFG nodes of one zone on one three-server JetStream cluster, one
//! writer at a time by the writer lease: the active node is killed
//! (`kill -9`) again and again under continuous appends from a client that
//! moves between the two nodes; the other node takes over, and afterwards
//! every acknowledged fact is stored exactly once, in order, byte for byte.
//! And `bsfg demo --ha`, which shows the same to a user: it completes with
//! its exactly-once check and leaves nothing running, even when killed.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg::config::{HaConfig, NatsConfig, TlsConfig, ZoneConfig};
use bsfg::ports::free_port;
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::nats_cluster::NatsCluster;
use bsfg_testkit::zone_config::ZoneConfigBuilder;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Child;

/// Servers in the cluster.
pub(crate) const CLUSTER_SIZE: usize = 3;
/// The nodes' `[ha] lease_ttl`.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);
/// Kills of the active node in the test.
const KILLS: usize = 5;
/// Kills of the active node in the ignored, longer test.
const KILLS_MANY: usize = 20;
/// How long appends run between a takeover and the next kill.
const BETWEEN_KILLS: Duration = Duration::from_secs(2);
/// The longest the zone may go without acknowledging after its active
/// node is killed.
const TAKEOVER_MAX: Duration = Duration::from_secs(5);
/// The clients' call deadline: a little above the nodes' request timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The writer's wait before retrying a refusal the client returned.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// One node's configuration and its directory.
pub(crate) struct NodeSpec {
    pub(crate) config: ZoneConfig,
    dir: PathBuf,
}

pub(crate) fn node_spec(cluster: &NatsCluster, root: &Path, node_id: &str) -> NodeSpec {
    node_spec_on(cluster.urls(), root, node_id)
}

/// A node of the zone whose store is reached at `urls` (the cluster's
/// servers, or proxies in front of them).
pub(crate) fn node_spec_on(urls: Vec<String>, root: &Path, node_id: &str) -> NodeSpec {
    let dir = root.join(node_id);
    std::fs::create_dir_all(&dir).unwrap();
    let config = ZoneConfigBuilder::new(ZONE)
        .listen(free_port().unwrap())
        .ops_listen(free_port().unwrap())
        .tls(TlsConfig::plaintext_dev())
        .nats(NatsConfig {
            urls,
            replicas: CLUSTER_SIZE,
            request_timeout: Duration::from_secs(2),
            ..NatsConfig::default()
        })
        .categories(vec![
            category("operational", &[], true),
            category("audit", &["audit"], false),
        ])
        .consumers(vec![consumer("mes", "operational")])
        .with(|c| {
            c.commit.key_index_path = Some(dir.join("key-index"));
            c.ha = Some(HaConfig {
                node_id: node_id.into(),
                advertise_url: None,
                lease_ttl: LEASE_TTL,
            });
        })
        .build();
    config.check().expect("valid node config");
    NodeSpec { config, dir }
}

impl NodeSpec {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    pub(crate) async fn start(&self) -> Child {
        spawn_serve(&self.config, &self.dir, &self.dir.join("bsfg.log"), &[]).await
    }

    async fn holds_lease(&self) -> bool {
        let text = metrics_text(self.config.ops_listen).await;
        metric_value(&text, "bsfg_lease_held", &[]) == Some(1.0)
    }
}

/// What the writer saw: each acknowledged fact with its offset and when.
#[derive(Default)]
pub(crate) struct Acked {
    pub(crate) facts: Vec<(Envelope, Fact, u64)>,
    pub(crate) at: Vec<Instant>,
    /// Refusals the client returned after trying both nodes.
    refusals: Vec<String>,
}

/// Appends one fact at a time until `stop` through a client given both
/// nodes' URLs; a refusal it returns (both nodes refused for a while) is
/// retried with the same message id.
async fn write_until(urls: Vec<String>, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    // A frozen node holds a call this long before the client moves on.
    let client = BsfgClient::connect(&urls.join(","))
        .unwrap()
        .with_call_timeout(CALL_TIMEOUT);
    for n in 0.. {
        let envelope = envelope(&mid("ha"));
        let fact = batch_fact(n);
        let refused = |message| acked.lock().unwrap().refusals.push(message);
        let offset = append_retrying(&client, &envelope, &fact, RETRY_DELAY, refused)
            .await
            .offset;
        {
            let mut a = acked.lock().unwrap();
            a.facts.push((envelope, fact, offset));
            a.at.push(Instant::now());
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Waits until exactly one node holds the lease; returns its index.
pub(crate) async fn active_node(nodes: &[NodeSpec], running: &[bool]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut holders = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if running[i] && node.holds_lease().await {
                holders.push(i);
            }
        }
        if holders.len() == 1 {
            return holders[0];
        }
        assert!(holders.len() <= 1, "two nodes hold the lease: {holders:?}");
        assert!(Instant::now() < deadline, "no node took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads everything back through consumer `mes` from whichever node is
/// active, confirming as it goes (skipping redeliveries at offsets already
/// taken): at least `expected` facts, and on until a fetch finds nothing
/// more (so that a fact stored beyond them is seen too).
pub(crate) async fn read_back(urls: &[String], expected: usize) -> Vec<StoredFact> {
    let client = BsfgClient::connect(&urls.join(",")).unwrap();
    let mut out: Vec<StoredFact> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut more = true;
    while (out.len() < expected || more) && Instant::now() < deadline {
        match client.fetch("mes", 1000, 0, 500).await {
            Ok(r) => {
                more = !r.facts.is_empty();
                let last = out.last().map_or(0, |f| f.offset);
                out.extend(r.facts.into_iter().filter(|f| f.offset > last));
                // Confirmed as read: a consumer holds only so many
                // unconfirmed facts (`unconfirmed_max`).
                if let Some(f) = out.last() {
                    let _ = client.confirm("mes", f.offset).await;
                }
            }
            Err(_) => tokio::time::sleep(RETRY_DELAY).await,
        }
    }
    out
}

/// The first lines of a node's log that tell of a panic or an error.
fn log_trouble(node: &NodeSpec) -> Vec<String> {
    let log = std::fs::read_to_string(node.dir.join("bsfg.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("failed"))
        .take(5)
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_node_hands_the_zone_to_the_other_without_loss_or_duplicate() {
    kill_the_active_node(KILLS).await;
}

/// The same, `KILLS_MANY` times, for the distribution of takeover times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 2 minutes; run with --run-ignored only"]
async fn killing_the_active_node_many_times_for_the_takeover_distribution() {
    kill_the_active_node(KILLS_MANY).await;
}

/// A three-server cluster and the configurations of two nodes of the zone
/// on it, `a` and `b` (not started).
pub(crate) async fn two_node_zone(root: &Path) -> (NatsCluster, [NodeSpec; 2]) {
    let cluster = NatsCluster::start(root, ZONE, CLUSTER_SIZE).await.unwrap();
    let nodes = [
        node_spec(&cluster, root, "a"),
        node_spec(&cluster, root, "b"),
    ];
    (cluster, nodes)
}

/// Kills the active node `kills` times under continuous appends; see the
/// module documentation.
async fn kill_the_active_node(kills: usize) {
    let root = tempfile::tempdir().unwrap();
    let (_cluster, nodes) = two_node_zone(root.path()).await;
    let mut children = [Some(nodes[0].start().await), Some(nodes[1].start().await)];
    let mut running = [true, true];
    let urls: Vec<String> = nodes.iter().map(NodeSpec::url).collect();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(urls.clone(), acked.clone(), stop.clone()));
    let mut takeovers = Vec::new();
    for _ in 0..kills {
        let active = active_node(&nodes, &running).await;
        tokio::time::sleep(BETWEEN_KILLS).await;
        let acked_before = acked.lock().unwrap().facts.len();
        let mut child = children[active].take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let killed_at = Instant::now();
        running[active] = false;
        let takeover = loop {
            if let Some(at) = acked.lock().unwrap().at.get(acked_before + 1).copied() {
                break at.saturating_duration_since(killed_at);
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                let trouble = log_trouble(&nodes[1 - active]);
                panic!("no takeover; the other node's log: {trouble:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        takeovers.push(takeover);
        children[active] = Some(nodes[active].start().await);
        running[active] = true;
    }
    tokio::time::sleep(BETWEEN_KILLS).await;
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let mut sorted = takeovers.clone();
    sorted.sort();
    eprintln!(
        "{kills} kills of the active node: takeover (kill to the next acknowledgement) \
         {sorted:?}; {} facts acknowledged; refusals the client returned: {:?}",
        acked.facts.len(),
        acked.refusals
    );
    let fetched = read_back(&urls, acked.facts.len()).await;
    assert_exactly_once_in_order(&fetched, &acked.facts);
    for t in &takeovers {
        assert!(*t < TAKEOVER_MAX, "takeovers {takeovers:?}");
    }
}

/// Writers appending at once during the freeze test: enough that the
/// active node always has an append round on its way to the store.
const FREEZE_WRITERS: usize = 6;
/// How long the active node stays frozen: three leases, longer than the
/// lease, the request timeout and the client's failover.
const FREEZE: Duration = Duration::from_secs(6);

/// The active node frozen (SIGSTOP) for three leases under appends from
/// several clients, while the other takes over and writes; then thawed
/// (SIGCONT): whatever it had on its way to the store when it froze meets
/// the other node's writes (`store::facts::fence` refuses it), and it goes
/// on as a standby. Afterwards every acknowledged fact is stored exactly
/// once, at its acknowledged offset, byte for byte, each writer's facts in
/// its order, and nothing unacknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_node_thawed_after_a_takeover_stores_nothing_twice_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (_cluster, nodes) = two_node_zone(root.path()).await;
    let children = [nodes[0].start().await, nodes[1].start().await];
    let urls: Vec<String> = nodes.iter().map(NodeSpec::url).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..FREEZE_WRITERS)
        .map(|_| {
            let acked = Arc::new(Mutex::new(Acked::default()));
            let task = tokio::spawn(write_until(urls.clone(), acked.clone(), stop.clone()));
            (acked, task)
        })
        .collect();
    let active = active_node(&nodes, &[true, true]).await;
    tokio::time::sleep(BETWEEN_KILLS).await;
    let pid = children[active].id().expect("the active node runs");
    bsfg_testkit::process::signal(pid, "STOP").unwrap();
    let frozen_at = Instant::now();
    let other = active_node(&nodes, &[active == 1, active == 0]).await;
    assert_ne!(other, active);
    tokio::time::sleep(FREEZE.saturating_sub(frozen_at.elapsed())).await;
    bsfg_testkit::process::signal(pid, "CONT").unwrap();
    // The thawed node finds the lease taken and goes on as a standby.
    tokio::time::sleep(BETWEEN_KILLS * 2).await;
    assert_eq!(active_node(&nodes, &[true, true]).await, other);
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    for (facts, task) in writers {
        task.await.unwrap();
        acked.push(std::mem::take(&mut *facts.lock().unwrap()));
    }
    let total: usize = acked.iter().map(|a| a.facts.len()).sum();
    let fenced = metrics_text(nodes[active].config.ops_listen).await;
    eprintln!(
        "froze the active node {FREEZE:?}; {total} facts acknowledged by {FREEZE_WRITERS} \
         writers; the thawed node's fenced refusals: {:?}",
        metric_value(&fenced, "bsfg_append_failures_total", &["writer_fenced"])
    );
    let mut fetched = read_back(&urls, total).await;
    assert_each_acked_once(&mut fetched, &acked, &[]);
}

/// Every fact the writers acknowledged is in `fetched` once, at its
/// acknowledged offset, with its content; nothing else is but, at most
/// once each, the facts `unanswered` (abandoned before an answer); each
/// writer's facts are at increasing offsets in its acknowledgement order.
pub(crate) fn assert_each_acked_once(
    fetched: &mut Vec<StoredFact>,
    writers: &[Acked],
    unanswered: &[String],
) {
    let mut by_id = std::collections::HashMap::new();
    for f in fetched.drain(..) {
        let id = f.envelope.as_option().expect("envelope").message_id.clone();
        let offset = f.offset;
        if let Some(earlier) = by_id.insert(id.clone(), f) {
            panic!("{id} stored twice: offsets {} and {offset}", earlier.offset);
        }
    }
    by_id.retain(|id, _| !unanswered.contains(id));
    let total: usize = writers.iter().map(|a| a.facts.len()).sum();
    assert_eq!(by_id.len(), total, "stored facts vs acknowledged facts");
    for writer in writers {
        let offsets: Vec<u64> = writer.facts.iter().map(|(_, _, offset)| *offset).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "a writer's facts in its order"
        );
        for (envelope, fact, offset) in &writer.facts {
            let got = by_id
                .get(&envelope.message_id)
                .unwrap_or_else(|| panic!("{} acknowledged but missing", envelope.message_id));
            assert_eq!(got.offset, *offset, "{}: offset", envelope.message_id);
            let f = got.fact.as_option().expect("fact");
            assert_eq!(f.subject, fact.subject);
            assert_eq!(
                f.object_json.as_bytes(),
                canonical(&fact.object_json).as_bytes()
            );
        }
    }
}

/// The processes whose command line names a file under `dir` (what a demo
/// started there: its nats-servers and `bsfg serve` nodes).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

/// Waits until no process names a file under `dir`; panics after 10 s.
async fn assert_all_stopped(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bsfg demo --ha` as a user runs it: it exits 0 after its exactly-once
/// check, and nothing it started is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_demo_completes_with_its_exactly_once_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .args(["demo", "--ha", "--dir"])
        .arg(dir.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("exactly-once check passed"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("HA demo complete"), "{stdout}");
    assert_all_stopped(dir.path()).await;
}

/// `kill -9` of `bsfg demo --ha` midway takes its nats-servers and nodes
/// down with it (the parent-death signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_ha_demo_stops_everything_it_started() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .args(["demo", "--ha", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let appending = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("== 4.") {
                return;
            }
        }
        panic!("the demo ended before its nodes were up");
    };
    tokio::time::timeout(Duration::from_secs(60), appending)
        .await
        .expect("the demo reaches step 4 within 60 s");
    assert!(
        processes_under(dir.path()).len() >= CLUSTER_SIZE + 2,
        "three nats-servers and two nodes running: {:#?}",
        processes_under(dir.path())
    );
    demo.start_kill().unwrap();
    demo.wait().await.unwrap();
    assert_all_stopped(dir.path()).await;
}
