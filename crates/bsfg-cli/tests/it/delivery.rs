//! A consumer's frontier passes only what was served: a fact JetStream
//! delivered while the serving node was frozen longer than any timeout, and
//! a stored record the node cannot decode, must neither be lost under a
//! later cumulative confirm nor wedge the consumer.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use buffa::Message as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Stores `payload` in `facts_operational` as the node would (subject,
/// message id header), bypassing the node: a fact that reached JetStream
/// while the node could not take part.
async fn store_raw(zone: &Zone, message_id: &str, payload: Vec<u8>) -> u64 {
    let js = zone.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        bsfg_domain::identity::key_token(ZONE, message_id).as_str(),
    );
    let ack = js
        .publish_with_headers("facts.operational.batch", headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    ack.sequence
}

/// A record exactly as the node stores an appended fact.
fn stored_record(message_id: &str, n: usize) -> Vec<u8> {
    let e = envelope(message_id);
    StoredFact {
        category: "operational".into(),
        provenance: Provenance {
            origin_zone: e.from_zone.clone(),
            ..Default::default()
        }
        .into(),
        envelope: e.into(),
        fact: batch_fact(n).into(),
        appended_at_unix_ms: now_ms(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Fetches and confirms as a replicator does (confirm the last delivered
/// offset of each answer) until every id in `wanted` was served or 20 s
/// pass; returns the served offsets per message id.
async fn drain(app: &BsfgClient, wanted: &[&str]) -> BTreeMap<String, Vec<u64>> {
    let mut served: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !wanted.iter().all(|w| served.contains_key(*w)) {
        let Ok(r) = app.fetch("mes", 100, 0, 500).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for f in &r.facts {
            served
                .entry(f.envelope.message_id.clone())
                .or_default()
                .push(f.offset);
        }
        if r.last_delivered_offset > r.frontier {
            app.confirm("mes", r.last_delivered_offset).await.unwrap();
        }
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_delivered_into_a_long_poll_across_a_freeze_is_served_before_a_later_confirm() {
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Default::default()
    })
    .await;
    let app = zone.client();
    let first = mid("before-freeze");
    app.append(envelope(&first), batch_fact(1)).await.unwrap();
    assert!(
        drain(&app, &[&first]).await.contains_key(&first),
        "the consumer is live before the freeze"
    );

    // A long poll (1 s) waits in JetStream; the node freezes for longer
    // than the poll's wait plus the client library's 5 s grace, and the
    // fact reaches JetStream meanwhile, which delivers it into the poll.
    let wait_ms = 1000;
    let poll = tokio::spawn({
        let app = app.clone();
        async move { app.fetch("mes", 10, 0, wait_ms).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    zone.signal_node("STOP");
    let frozen = mid("during-freeze");
    let frozen_offset = store_raw(&zone, &frozen, stored_record(&frozen, 2)).await;
    tokio::time::sleep(Duration::from_millis(u64::from(wait_ms)) + Duration::from_secs(7)).await;
    zone.signal_node("CONT");
    let during = poll.await.unwrap();
    eprintln!(
        "the long poll across the freeze answered {:?}",
        during.as_ref().map(|r| r.facts.len())
    );

    // A later fact; the consumer fetches and confirms cumulatively.
    let later = mid("after-freeze");
    let later_offset = app
        .append(envelope(&later), batch_fact(3))
        .await
        .unwrap()
        .offset;
    assert!(later_offset > frozen_offset);
    let served = drain(&app, &[&frozen, &later]).await;
    assert!(
        served.contains_key(&frozen),
        "the fact JetStream delivered during the freeze (offset {frozen_offset}) was never served; served {served:?}"
    );
    assert!(served.contains_key(&later), "served {served:?}");
    let text = zone.metrics_text().await;
    let gaps =
        metric_value(&text, "bsfg_delivery_gaps_total", &["consumer=\"mes\""]).unwrap_or(0.0);
    assert!(gaps >= 1.0, "the node counted the lost delivery: {text}");
    zone.log_lines_with(
        1,
        &[
            ("consumer", "mes"),
            (
                "message",
                "deliveries this node did not take in; redelivering from the frontier",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_quarantined_audited_and_passed() {
    let zone = Zone::start(Opts::default()).await;
    let app = zone.client();
    let before = mid("before-corrupt");
    app.append(envelope(&before), batch_fact(1)).await.unwrap();
    let corrupt_offset = store_raw(
        &zone,
        &mid("corrupt"),
        b"\xff\xff\xff not a record".to_vec(),
    )
    .await;
    let after = mid("after-corrupt");
    app.append(envelope(&after), batch_fact(2)).await.unwrap();

    let served = drain(&app, &[&before, &after]).await;
    assert!(
        served.contains_key(&before) && served.contains_key(&after),
        "the consumer moves past the record: {served:?}"
    );
    // A restart from the frontier goes past it too (it was confirmed).
    let again = app
        .fetch_request(FetchFactsRequest {
            consumer_name: "mes".into(),
            limit: 10,
            restart_from_frontier: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(again.facts.is_empty(), "nothing left after the confirm");

    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(&text, "bsfg_quarantined_facts_total", &["consumer=\"mes\""]),
        Some(1.0),
        "{text}"
    );
    let audit = fetch_all(&app, "auditor", 1).await;
    let record = audit
        .iter()
        .find(|f| f.fact.predicate == "record_quarantined")
        .unwrap_or_else(|| panic!("no quarantine audit record in {audit:?}"));
    assert!(
        record
            .fact
            .object_json
            .contains(&format!("mes offset {corrupt_offset}")),
        "{}",
        record.fact.object_json
    );
}
