//! The active node of an HA zone cut off from its cluster while its clients
//! still reach it: node `a` reaches the three servers only through fault
//! proxies, node `b` directly. `a` takes the lease, clients append through
//! both nodes, and every proxy is cut: `a` stops acknowledging (its writer
//! gate closes before its lease can expire in the store) before `b` takes
//! the lease and acknowledges. The proxies are restored after three leases:
//! what `a`'s NATS client held for the store meanwhile goes out then and
//! meets `b`'s writes (the fence refuses it). Afterwards every acknowledged
//! fact is stored once, nothing else, and `a` is a standby.

use crate::ha_nodes::{
    Acked, CLUSTER_SIZE, NodeSpec, active_node, assert_each_acked_once, node_spec, node_spec_on,
    read_back,
};
use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_testkit::faultproxy::FaultProxy;
use bsfg_testkit::nats_cluster::NatsCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients appending through each node.
const WRITERS_PER_NODE: usize = 3;
/// How long node `a` stays cut off: three leases.
const CUT: Duration = Duration::from_secs(6);
/// Appends before the cut, and after the restore.
const SETTLE: Duration = Duration::from_secs(2);

/// What one client saw: its acknowledged facts, and the message id it gave
/// up on when told to stop (it may be stored: its answer never came).
#[derive(Default)]
struct Writes {
    acked: Acked,
    abandoned: Option<String>,
}

/// Appends one fact at a time through `url` until `stop`, retrying each
/// refusal with the same message id.
async fn write_through(url: String, writes: Arc<Mutex<Writes>>, stop: Arc<AtomicBool>) {
    let client = BsfgClient::connect(&url)
        .unwrap()
        .with_call_timeout(Duration::from_secs(3));
    for n in 0.. {
        let (envelope, fact) = (envelope(&mid("cut")), batch_fact(n));
        loop {
            if stop.load(Ordering::Acquire) {
                writes.lock().unwrap().abandoned = Some(envelope.message_id);
                return;
            }
            if let Ok(r) = client.append(envelope.clone(), fact.clone()).await {
                let mut w = writes.lock().unwrap();
                w.acked.facts.push((envelope, fact, r.offset));
                w.acked.at.push(Instant::now());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Proxies in front of every server of `cluster`, and their URLs.
async fn proxies(cluster: &NatsCluster) -> (Vec<FaultProxy>, Vec<String>) {
    let mut proxies = Vec::new();
    for url in cluster.urls() {
        let target = url.trim_start_matches("nats://").parse().unwrap();
        proxies.push(FaultProxy::start(target).await.unwrap());
    }
    let urls = proxies
        .iter()
        .map(|p| format!("nats://{}", p.addr))
        .collect();
    (proxies, urls)
}

/// Starts writers through `node`, each with its own record.
fn writers(node: &NodeSpec, stop: &Arc<AtomicBool>) -> Vec<Arc<Mutex<Writes>>> {
    (0..WRITERS_PER_NODE)
        .map(|_| {
            let writes = Arc::new(Mutex::new(Writes::default()));
            tokio::spawn(write_through(node.url(), writes.clone(), stop.clone()));
            writes
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_node_cut_off_from_its_cluster_stops_acknowledging_before_the_other_starts() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(root.path(), ZONE, CLUSTER_SIZE)
        .await
        .unwrap();
    let (proxies, proxied) = proxies(&cluster).await;
    let nodes = [
        node_spec_on(proxied, root.path(), "a"),
        node_spec(&cluster, root.path(), "b"),
    ];
    let _a = nodes[0].start().await;
    assert_eq!(active_node(&nodes, &[true, false]).await, 0);
    let _b = nodes[1].start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let through_a = writers(&nodes[0], &stop);
    let through_b = writers(&nodes[1], &stop);
    tokio::time::sleep(SETTLE).await;
    proxies.iter().for_each(FaultProxy::cut);
    let cut_at = Instant::now();
    tokio::time::sleep(CUT).await;
    proxies.iter().for_each(FaultProxy::restore);
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        active_node(&nodes, &[true, true]).await,
        1,
        "b kept the lease"
    );
    stop.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let take = |w: &[Arc<Mutex<Writes>>]| -> Vec<Writes> {
        w.iter()
            .map(|w| std::mem::take(&mut *w.lock().unwrap()))
            .collect()
    };
    let (through_a, through_b) = (take(&through_a), take(&through_b));
    let last_a = through_a.iter().filter_map(|w| w.acked.at.last()).max();
    let first_b = through_b.iter().filter_map(|w| w.acked.at.first()).min();
    let (last_a, first_b) = (
        *last_a.expect("a acknowledged"),
        *first_b.expect("b took over"),
    );
    let since_cut_ms = |t: Instant| match t.checked_duration_since(cut_at) {
        Some(after) => after.as_secs_f64() * 1e3,
        None => -(cut_at - t).as_secs_f64() * 1e3,
    };
    let fenced = metrics_text(nodes[0].config.ops_listen).await;
    eprintln!(
        "a's last acknowledgement {:.0} ms from the cut, b's first {:.0} ms; a's fenced \
         refusals: {:?}",
        since_cut_ms(last_a),
        since_cut_ms(first_b),
        metric_value(&fenced, "bsfg_append_failures_total", &["writer_fenced"])
    );
    assert!(last_a < first_b, "a still acknowledged after b began");
    let all: Vec<Writes> = through_a.into_iter().chain(through_b).collect();
    let unanswered: Vec<String> = all.iter().filter_map(|w| w.abandoned.clone()).collect();
    let acked: Vec<Acked> = all.into_iter().map(|w| w.acked).collect();
    let total = acked.iter().map(|a| a.facts.len()).sum();
    let urls: Vec<String> = nodes.iter().map(NodeSpec::url).collect();
    let mut fetched = read_back(&urls, total).await;
    assert_each_acked_once(&mut fetched, &acked, &unanswered);
}
