//! What a zone of two nodes on a three-server JetStream cluster tells an
//! operator: each node's GetStatus, `bsfg status` and /metrics name the
//! same active node, each node its own role, the lease as it names the
//! holder, and every server's replica of every fact stream with its lag.

use crate::ha_nodes::{CLUSTER_SIZE, LEASE_TTL, NodeSpec, active_node, two_node_zone};
use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use std::time::{Duration, Instant};

/// The fact categories of the nodes' configuration (`node_spec`).
const CATEGORIES: [&str; 2] = ["audit", "operational"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_report_the_active_node_the_lease_and_every_replica() {
    let root = tempfile::tempdir().unwrap();
    let (_cluster, nodes) = two_node_zone(root.path()).await;
    let _children = [nodes[0].start().await, nodes[1].start().await];
    let active = active_node(&nodes, &[true, true]).await;
    let active_id = ["a", "b"][active];
    // Facts for the replicas to take in (and to lag behind meanwhile).
    let urls: Vec<String> = nodes.iter().map(NodeSpec::url).collect();
    let client = BsfgClient::connect(&urls.join(",")).unwrap();
    for n in 0..50 {
        client
            .append(envelope(&mid("ha-status")), batch_fact(n))
            .await
            .unwrap();
    }
    for (i, node) in nodes.iter().enumerate() {
        let role = if i == active { "active" } else { "standby" };
        let ha = settled_status(node, role).await;
        assert_eq!(ha.node_id, ["a", "b"][i]);
        assert_eq!(ha.lease_holder_node_id, active_id, "{ha:?}");
        assert_eq!(ha.lease_holder_url, nodes[active].url(), "{ha:?}");
        let age = ha.lease_renewal_age_seconds;
        if i == active {
            assert!((0.0..LEASE_TTL.as_secs_f64()).contains(&age), "{ha:?}");
        } else {
            assert!(age < 0.0, "the standby never held the lease: {ha:?}");
        }
        assert_replicas(&ha);
        assert_cli_status(node, role, active_id).await;
        assert_replica_metrics(node).await;
    }
}

/// The node's `ha` status once it reports `role`, the lease's holder and
/// every replica of every fact stream current.
async fn settled_status(node: &NodeSpec, role: &str) -> HaStatus {
    let client = BsfgClient::connect(&node.url()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.status().await.unwrap();
        let ha = status.ha.as_option().cloned().unwrap_or_default();
        let settled = ha.role == role
            && !ha.lease_holder_node_id.is_empty()
            && ha.servers.len() == CLUSTER_SIZE
            && ha.servers.iter().all(|s| s.current)
            && ha
                .servers
                .iter()
                .all(|s| s.streams.len() == CATEGORIES.len());
        if settled {
            return ha;
        }
        assert!(Instant::now() < deadline, "not settled as {role}: {ha:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every server named as the cluster names it, holding a current replica
/// of every category with lag 0; each stream led by exactly one of them.
fn assert_replicas(ha: &HaStatus) {
    let names: Vec<&str> = ha.servers.iter().map(|s| s.name.as_str()).collect();
    let expected: Vec<String> = (0..CLUSTER_SIZE).map(|i| format!("{ZONE}-{i}")).collect();
    assert_eq!(names, expected, "{ha:?}");
    let read_age = ha.servers_read_age_seconds;
    assert!((0.0..5.0).contains(&read_age), "{ha:?}");
    for (c, category) in CATEGORIES.iter().enumerate() {
        let replicas: Vec<&StreamReplicaStatus> =
            ha.servers.iter().map(|s| &s.streams[c]).collect();
        assert!(replicas.iter().all(|r| r.category == *category), "{ha:?}");
        assert!(
            replicas
                .iter()
                .all(|r| r.current && !r.offline && r.lag == 0)
        );
        let leaders = replicas.iter().filter(|r| r.leader).count();
        assert_eq!(leaders, 1, "one leader of {category}: {ha:?}");
    }
}

/// `bsfg status` against the node shows its role, the active node and a
/// row per server.
async fn assert_cli_status(node: &NodeSpec, role: &str, active_id: &str) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .args(["status", "--url", &node.url()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    eprintln!("bsfg status of node {}:\n{table}", node.url());
    let node_id = node.config.ha.as_ref().unwrap().node_id.clone();
    let writer = format!("  writer: {role} (node {node_id}), active node {active_id} http://");
    assert!(table.contains(&writer), "{table}");
    for i in 0..CLUSTER_SIZE {
        let row = format!("  {ZONE}-{i} ");
        let line = table.lines().find(|l| l.starts_with(&row));
        let line = line.unwrap_or_else(|| panic!("no row of server {i}: {table}"));
        assert!(
            line.contains("yes") && line.contains("operational"),
            "{table}"
        );
    }
}

/// /metrics: every server current, every replica's lag 0.
async fn assert_replica_metrics(node: &NodeSpec) {
    let text = metrics_text(node.config.ops_listen).await;
    for i in 0..CLUSTER_SIZE {
        let server = format!("server=\"{ZONE}-{i}\"");
        let current = metric_value(&text, "bsfg_cluster_server_current", &[&server]);
        assert_eq!(current, Some(1.0), "{text}");
        for category in CATEGORIES {
            let category = format!("category=\"{category}\"");
            let lag = metric_value(&text, "bsfg_stream_replica_lag", &[&category, &server]);
            assert_eq!(lag, Some(0.0), "{text}");
        }
    }
}
