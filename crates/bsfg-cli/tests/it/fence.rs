//! The store-checked fence (`store::facts::fence`): two nodes that both
//! believe they are their zone's writer (two single-node zone processes on
//! one nats-server, no lease between them) still store each key once. Each
//! node's key index knows only its own facts until its gap filler reads the
//! other's in (a second or two); JetStream's duplicate window is set short
//! (100 ms) so that it does not answer for them either. What keeps the
//! second copy out is the fence alone: the other node's write moved the
//! stream's end, so JetStream refuses the publish (`writer_fenced`), the
//! node reads the stream's end and the other's facts in, and the retry is
//! answered `duplicate = true` with the first node's offset.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg::config::{NatsConfig, TlsConfig, ZoneConfig};
use bsfg::ports::free_port;
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::zone_config::ZoneConfigBuilder;
use std::path::Path;
use std::time::{Duration, Instant};

/// Keys appended to the first node and then to the second.
const KEYS: usize = 6;
/// The category's duplicate window: short, so that it answers for nothing.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// Between the two appends of one key: past the duplicate window, well
/// before the other node's gap filler reads the fact in.
const BETWEEN_COPIES: Duration = Duration::from_millis(300);

fn node_config(nats_url: String, dir: &Path) -> ZoneConfig {
    let mut operational = category("operational", &[], true);
    operational.duplicate_window = DUPLICATE_WINDOW;
    let config = ZoneConfigBuilder::new(ZONE)
        .listen(free_port().unwrap())
        .ops_listen(free_port().unwrap())
        .tls(TlsConfig::plaintext_dev())
        .nats(NatsConfig {
            url: Some(nats_url),
            request_timeout: Duration::from_secs(5),
            ..NatsConfig::default()
        })
        .categories(vec![operational, category("audit", &["audit"], false)])
        .consumers(vec![consumer("mes", "operational")])
        .with(|c| c.commit.key_index_path = Some(dir.join("key-index")))
        .build();
    config.check().expect("valid node config");
    config
}

/// Appends until answered (a refusal is retried with the same message id);
/// returns the answer and the refusals' reasons.
async fn append_until_answered(
    client: &BsfgClient,
    envelope: &Envelope,
    fact: &Fact,
) -> (AppendFactResponse, Vec<String>) {
    let mut refusals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = append_retrying(
        client,
        envelope,
        fact,
        Duration::from_millis(50),
        |message| {
            assert!(Instant::now() < deadline, "never answered: {message}");
            refusals.push(message);
        },
    )
    .await;
    (answer, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_store_never_store_a_key_twice() {
    let root = tempfile::tempdir().unwrap();
    let nats = start_nats(root.path(), ZONE).await;
    let mut nodes = Vec::new();
    for name in ["one", "two"] {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = node_config(nats.url(), &dir);
        let child = spawn_serve(&config, &dir, &dir.join("bsfg.log"), &[]).await;
        let client = BsfgClient::connect(&format!("http://{}", config.listen)).unwrap();
        nodes.push((child, client, config.ops_listen));
    }
    let (first, second) = (&nodes[0].1, &nodes[1].1);
    let mut stored: Vec<(Envelope, Fact, u64)> = Vec::new();
    let mut fenced = 0;
    for n in 0..KEYS {
        // The second node also writes keys of its own, so that each node's
        // end of the stream keeps moving under the other.
        let (own_envelope, own_fact) = (envelope(&mid("two")), batch_fact(1000 + n));
        let (own, _) = append_until_answered(second, &own_envelope, &own_fact).await;
        stored.push((own_envelope, own_fact, own.offset));
        let (envelope, fact) = (envelope(&mid("both")), batch_fact(n));
        let (original, _) = append_until_answered(first, &envelope, &fact).await;
        assert!(!original.duplicate);
        tokio::time::sleep(BETWEEN_COPIES).await;
        let (copy, refusals) = append_until_answered(second, &envelope, &fact).await;
        fenced += refusals
            .iter()
            .filter(|r| r.contains("reading the end of category"))
            .count();
        assert!(
            copy.duplicate && copy.offset == original.offset,
            "key {n}: the second node answered {copy:?}, the first stored it at offset {} \
             (refusals meanwhile: {refusals:?})",
            original.offset
        );
        stored.push((envelope, fact, original.offset));
    }
    stored.sort_by_key(|(_, _, offset)| *offset);
    let fetched = fetch_all(first, "mes", stored.len() + 1).await;
    assert_exactly_once_in_order(&fetched, &stored);
    let text = metrics_text(nodes[1].2).await;
    let fence_refusals =
        metric_value(&text, "bsfg_fence_refusals_total", &["operational"]).unwrap_or(0.0);
    eprintln!(
        "{KEYS} keys written by both nodes: stored once each; the second node's fence refused \
         {fence_refusals} publishes; {fenced} writer_fenced answers reached the client"
    );
    assert!(
        fence_refusals >= KEYS as f64,
        "each copy the second node published behind the first's write was fenced: \
         {fence_refusals}"
    );
}
