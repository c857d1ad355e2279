//! `bsfg demo --ha`: one zone (`plant-a`) that survives the loss of a
//! machine, on this machine. Its store is a JetStream cluster of three
//! nats-servers, and two `bsfg serve` processes serve it, one writer at a
//! time by the lease (`docs/ha.md`). A client given both nodes' URLs
//! appends while the writer is killed (`kill -9`) and later one
//! nats-server; at the end every acknowledged fact is read back and
//! checked. [`run_ha`] runs the steps in order.

use super::ha_check;
use super::ha_writer::Writer;
use super::ha_zone::{self, APP_IDENTITY, CLUSTER_SIZE, HaNode, LEASE_TTL, ZONE};
use super::step;
use bsfg::client::BsfgClient;
use bsfg_testkit::nats_cluster::NatsCluster;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the client appends between two steps.
const APPENDING: Duration = Duration::from_secs(2);
/// How long the killed nats-server stays down: longer than a new leader's
/// election (4 to 9 s) of the facts' stream or of the lease bucket (the
/// writer cannot renew meanwhile), so appends are seen going on without it.
const SERVER_DOWN: Duration = Duration::from_secs(15);
/// The longest the demo waits for a lease holder or an acknowledgement.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// The stream of the facts the client appends.
const FACTS_STREAM: &str = "facts_operational";

pub async fn run_ha(dir: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let dir = std::path::absolute(&dir)?;
    intro(&dir);

    let (mut cluster, mut nodes, active) = start_zone(&dir).await?;

    step("4. A client given both nodes' URLs appends one fact at a time");
    let client = client(&dir, &nodes)?;
    let prefix = format!("ha-demo-{}", bsfg::store::now_unix_ms());
    let writer = Writer::start(client.clone(), prefix.clone());
    tokio::time::sleep(APPENDING).await;
    println!("  {} facts acknowledged", writer.count());

    step("5. kill -9 the node holding the lease: the client moves to the other by itself");
    let takeover = kill_the_writer(&mut nodes, active, &writer).await?;

    step("6. Restart the killed node: it comes back as a standby");
    restart_as_standby(&mut nodes, active).await?;
    tokio::time::sleep(APPENDING).await;

    step("7. kill -9 the nats-server leading the facts' stream, then restart it");
    let pause = lose_a_server(&mut cluster, &writer).await?;
    tokio::time::sleep(APPENDING).await;

    step("8. Read every fact back: each acknowledged fact exactly once, in order, byte for byte");
    let acked = writer.stop().await?;
    let read = ha_check::read_back(&client, &prefix, acked.acks.len()).await?;
    ha_check::exactly_once(&read, &acked.acks)?;

    println!(
        "\nHA demo complete in {:.1} s: {} facts acknowledged; the writer killed, the other node \
         acknowledged {:.1} s later; a nats-server killed, the longest pause {:.1} s; \
         nothing acknowledged lost or stored twice.",
        started.elapsed().as_secs_f64(),
        acked.acks.len(),
        takeover.as_secs_f64(),
        pause.as_secs_f64()
    );
    drop(nodes);
    drop(cluster);
    Ok(())
}

fn intro(dir: &Path) {
    println!("BSFG: one zone on three machines, on this machine");
    println!(
        "  plant-a's store is a JetStream cluster of {CLUSTER_SIZE} nats-servers (every stream \
         has {CLUSTER_SIZE} replicas);"
    );
    println!(
        "  two bsfg nodes serve the zone, one writer at a time by a lease (lease_ttl {} s).",
        LEASE_TTL.as_secs()
    );
    println!("  Data: {}", dir.display());
}

/// Steps 1 to 3: the PKI, the cluster, the nodes; which node writes.
async fn start_zone(dir: &Path) -> anyhow::Result<(NatsCluster, Vec<HaNode>, usize)> {
    step("1. Development PKI: the CA, a certificate per node (one identity), the client's");
    ha_zone::issue_pki(dir)?;
    println!(
        "  certificates in {}/certs and node-1/, node-2/",
        dir.display()
    );

    step("2. The zone's store: three nats-servers in one JetStream cluster");
    let cluster = start_cluster(dir).await?;

    step("3. Two bsfg nodes of plant-a on that cluster; the lease decides which one writes");
    let nodes = ha_zone::start_nodes(dir, &cluster).await?;
    for node in &nodes {
        println!(
            "  {} {} (config {}/zone.toml)",
            node.id,
            node.url,
            dir.join(node.id).display()
        );
    }
    let active = ha_zone::active_node(&nodes, WAIT_MAX).await?;
    println!(
        "  {} holds the writer lease (bsfg_lease_held 1); the other is a standby",
        nodes[active].id
    );
    Ok((cluster, nodes, active))
}

async fn start_cluster(dir: &Path) -> anyhow::Result<NatsCluster> {
    let cluster = ha_zone::start_cluster(dir).await?;
    println!(
        "  {:<11} {:<24} {:<17} store",
        "server", "client URL", "JetStream domain"
    );
    for (i, server) in cluster.servers.iter().enumerate() {
        println!(
            "  {:<11} {:<24} {:<17} {}",
            format!("{ZONE}-{i}"),
            server.url(),
            ZONE,
            server.store_dir.display()
        );
    }
    println!("  routes between all three; sync_interval \"always\" on each");
    Ok(cluster)
}

/// The MES application's client, given both nodes' URLs.
fn client(dir: &Path, nodes: &[HaNode]) -> anyhow::Result<BsfgClient> {
    let certs = dir.join("certs");
    let tls = bsfg::tls::client::client_config(
        &certs.join("ca.pem"),
        &certs.join(format!("{APP_IDENTITY}.pem")),
        &certs.join(format!("{APP_IDENTITY}.key")),
    )?;
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    println!("  --url {}", urls.join(","));
    BsfgClient::connect_tls(&urls.join(","), tls)
}

/// Kills the writer; returns the time from the kill to the next
/// acknowledged append.
async fn kill_the_writer(
    nodes: &mut [HaNode],
    active: usize,
    writer: &Writer,
) -> anyhow::Result<Duration> {
    let acked_before = writer.count();
    nodes[active].kill9().await?;
    let killed_at = Instant::now();
    println!(
        "  {} killed after {acked_before} acknowledged facts",
        nodes[active].id
    );
    // The append in flight at the kill may have been acknowledged just
    // before it: the one after is the first the other node answered.
    let next_at = writer.wait_for_ack(acked_before + 1, WAIT_MAX).await?;
    let takeover = next_at.saturating_duration_since(killed_at);
    let now_active = ha_zone::active_node(nodes, WAIT_MAX).await?;
    println!(
        "  {} took the lease; from the kill to the next acknowledged append: {:.2} s",
        nodes[now_active].id,
        takeover.as_secs_f64()
    );
    Ok(takeover)
}

async fn restart_as_standby(nodes: &mut [HaNode], restarted: usize) -> anyhow::Result<()> {
    nodes[restarted].start().await?;
    let active = ha_zone::active_node(nodes, WAIT_MAX).await?;
    anyhow::ensure!(
        active != restarted,
        "the restarted node took the lease from a live writer"
    );
    println!(
        "  {} is up again, a standby (bsfg_lease_held 0); {} still writes",
        nodes[restarted].id, nodes[active].id
    );
    Ok(())
}

/// Kills the server leading the facts' stream for `SERVER_DOWN`, restarts
/// it and waits until it has caught up; returns the longest pause between
/// two acknowledged appends meanwhile.
async fn lose_a_server(cluster: &mut NatsCluster, writer: &Writer) -> anyhow::Result<Duration> {
    let victim = cluster.stream_leader(FACTS_STREAM).await?;
    let acked_before = writer.count();
    cluster.servers[victim].kill9().await?;
    println!("  {ZONE}-{victim} killed (it led {FACTS_STREAM}); the other two elect a new leader");
    tokio::time::sleep(SERVER_DOWN).await;
    let during = writer.count() - acked_before;
    println!(
        "  {during} facts acknowledged in the {} s it was down; longest pause between two: {:.2} s",
        SERVER_DOWN.as_secs(),
        writer.longest_pause_since(acked_before).as_secs_f64()
    );
    cluster.servers[victim].restart().await?;
    cluster
        .wait_replicas_current(FACTS_STREAM, WAIT_MAX)
        .await?;
    println!("  {ZONE}-{victim} restarted on its store and caught up from the cluster");
    Ok(writer.longest_pause_since(acked_before))
}
