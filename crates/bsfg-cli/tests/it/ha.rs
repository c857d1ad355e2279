//! A zone whose store is a JetStream cluster of three nats-servers, every
//! stream, cursor and bucket with three replicas: appends go on while any
//! one server is killed, and nothing acknowledged is lost.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg::config::{NatsConfig, TlsConfig, ZoneConfig};
use bsfg::ports::free_port;
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::nats_cluster::NatsCluster;
use bsfg_testkit::zone_config::ZoneConfigBuilder;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Servers in the test cluster: survives the loss of one.
const CLUSTER_SIZE: usize = 3;
/// `[nats] request_timeout` of the test zone: bounds the pause.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long appends run before the kill and after the restart.
const PHASE: Duration = Duration::from_secs(3);
/// How long the killed server stays down: longer than `PAUSE_MAX`, so
/// appends must have gone on without it.
const DOWN: Duration = Duration::from_secs(15);
/// The longest an append may pause while a server of three is lost: the
/// round in flight times out (`NATS_REQUEST_TIMEOUT`), then the stream's
/// surviving servers elect a leader (nats-server's RAFT election timeout,
/// 4 to 9 s, answering "no responders" meanwhile).
const PAUSE_MAX: Duration = Duration::from_secs(12);
/// The writer's wait before retrying a refused append.
const RETRY_DELAY: Duration = Duration::from_millis(20);

/// A plaintext-dev zone on `cluster`, every object with `CLUSTER_SIZE`
/// replicas; consumer `mes` reads the operational category.
fn cluster_zone_config(cluster: &NatsCluster, dir: &std::path::Path) -> ZoneConfig {
    let config = ZoneConfigBuilder::new(ZONE)
        .listen(free_port().unwrap())
        .ops_listen(free_port().unwrap())
        .tls(TlsConfig::plaintext_dev())
        .nats(NatsConfig {
            urls: cluster.urls(),
            replicas: CLUSTER_SIZE,
            // An append round whose publishes went to the killed server
            // waits this long for their acknowledgements, then is retried.
            request_timeout: NATS_REQUEST_TIMEOUT,
            ..NatsConfig::default()
        })
        .categories(vec![
            category("operational", &[], true),
            category("audit", &["audit"], false),
        ])
        .consumers(vec![consumer("mes", "operational")])
        .with(|c| c.commit.key_index_path = Some(dir.join("key-index")))
        .build();
    config.check().expect("valid cluster zone config");
    config
}

/// What the writer saw: each acknowledged fact with its offset, and the
/// longest time between two acknowledgements.
#[derive(Default)]
struct Acked {
    facts: Vec<(Envelope, Fact, u64)>,
    longest_pause: Duration,
}

/// Appends one fact at a time until `stop`, retrying a refused or lost
/// append with the same message id (the node's idempotency makes the retry
/// safe) until it is acknowledged.
async fn write_until(client: BsfgClient, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut last_ack = Instant::now();
    for n in 0.. {
        let envelope = envelope(&mid("ha"));
        let fact = batch_fact(n);
        let offset = append_retrying(&client, &envelope, &fact, RETRY_DELAY, |_| {})
            .await
            .offset;
        let now = Instant::now();
        {
            let mut a = acked.lock().unwrap();
            a.longest_pause = a.longest_pause.max(now - last_ack);
            a.facts.push((envelope, fact, offset));
        }
        last_ack = now;
        if stop.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Fetches everything for `consumer` (retrying refusals: a consumer's
/// cursor on a restarted server answers once that server has recovered)
/// until `expected` facts were seen or 60 s passed, confirming as it goes. A fetch that failed may
/// make the node redeliver from the frontier: facts at offsets already
/// taken are redeliveries, not stored twice (a fact stored twice has two
/// offsets), and are skipped.
async fn fetch_all_retrying(
    client: &BsfgClient,
    consumer: &str,
    expected: usize,
) -> Vec<StoredFact> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        match client.fetch(consumer, 1000, 0, 500).await {
            Ok(r) => {
                let last = out.last().map_or(0, |f: &StoredFact| f.offset);
                out.extend(r.facts.into_iter().filter(|f| f.offset > last));
                // Confirmed as read: a consumer holds at most
                // `unconfirmed_max` facts delivered and not confirmed.
                if let Some(through) = out.last().map(|f| f.offset) {
                    let _ = client.confirm(consumer, through).await;
                }
            }
            Err(_) => tokio::time::sleep(RETRY_DELAY * 10).await,
        }
    }
    out
}

/// Every stream of the zone (facts, buckets) has `CLUSTER_SIZE` replicas.
async fn assert_every_stream_replicated(cluster: &NatsCluster) {
    use futures::TryStreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.urls()).await.unwrap());
    let streams: Vec<_> = js.streams().try_collect().await.unwrap();
    assert!(
        streams.len() >= 3,
        "facts streams and the refs bucket: {}",
        streams.len()
    );
    for info in streams {
        assert_eq!(
            info.config.num_replicas, CLUSTER_SIZE,
            "stream {}",
            info.config.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_on_while_one_server_of_an_r3_cluster_is_killed_and_nothing_acked_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(dir.path(), ZONE, CLUSTER_SIZE)
        .await
        .unwrap();
    let node = bsfg::node::start(cluster_zone_config(&cluster, dir.path()))
        .await
        .unwrap();
    let client = BsfgClient::connect(&format!("http://{}", node.boundary_addr)).unwrap();
    assert_every_stream_replicated(&cluster).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(client.clone(), acked.clone(), stop.clone()));
    tokio::time::sleep(PHASE).await;
    // The worst server to lose: the one leading the facts' stream.
    let victim = cluster.stream_leader("facts_operational").await.unwrap();
    cluster.servers[victim].kill9().await.unwrap();
    let killed_at = acked.lock().unwrap().facts.len();
    tokio::time::sleep(DOWN).await;
    let during = acked.lock().unwrap().facts.len() - killed_at;
    cluster.servers[victim].restart().await.unwrap();
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    cluster
        .wait_replicas_current("facts_operational", Duration::from_secs(30))
        .await
        .unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "r3 cluster, leader server {victim} killed: {} facts acknowledged ({during} while it \
         was down), longest pause between acknowledgements {:?}",
        acked.facts.len(),
        acked.longest_pause
    );
    assert!(
        during > 0,
        "appends went on while a server of three was down"
    );
    assert!(
        acked.longest_pause < PAUSE_MAX,
        "longest pause {:?}",
        acked.longest_pause
    );
    let fetched = fetch_all_retrying(&client, "mes", acked.facts.len()).await;
    assert_exactly_once_in_order(&fetched, &acked.facts);
}
