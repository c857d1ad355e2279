//! Idempotency and durability across crashes: kill -9 of the node, kill -9
//! and restart of nats-server, and retries after the duplicate window.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use std::time::{Duration, Instant};

/// Appends, retrying while the zone is unavailable (e.g. nats reconnecting).
async fn append_retrying(client: &BsfgClient, e: &Envelope, f: &Fact) -> AppendFactResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.append(e.clone(), f.clone()).await {
            Ok(r) => return r,
            Err(err)
                if Instant::now() < deadline
                    && matches!(
                        err.code.as_str(),
                        "unavailable" | "deadline_exceeded" | "unknown" | "internal"
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("append failed: {err:?}"),
        }
    }
}

/// Facts the node has read into its key index from the operational stream.
fn read_in_facts(metrics_text: &str) -> f64 {
    metric_value(
        metrics_text,
        "bsfg_key_index_read_in_facts_total",
        &["category=\"operational\""],
    )
    .unwrap_or(0.0)
}

/// Garbage over `bytes` of the key index's bucket pages, which start after
/// the two 8 KiB header copies (`store::key_index::format`).
fn overwrite_key_index_pages(index_file: &std::path::Path, bytes: usize) {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(index_file)
        .unwrap();
    file.write_all_at(&vec![0xA5; bytes], 16 * 1024).unwrap();
}

async fn append_batch(client: &BsfgClient, prefix: &str, n: usize) -> Vec<(Envelope, Fact, u64)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let (e, f) = (envelope(&mid(prefix)), batch_fact(i));
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        assert!(!r.duplicate);
        sent.push((e, f, r.offset));
    }
    sent
}

/// Every retry answers duplicate with the original offset; the log holds each
/// acknowledged fact exactly once, in order, byte for byte.
async fn retry_all_and_verify(zone: &Zone, sent: &[(Envelope, Fact, u64)]) {
    let client = zone.client();
    for (e, f, offset) in sent {
        let r = append_retrying(&client, e, f).await;
        assert!(r.duplicate, "retry of {} must be a duplicate", e.message_id);
        assert_eq!(r.offset, *offset);
    }
    assert_eq!(zone.message_count("operational").await, sent.len() as u64);
    let fetched = fetch_all(&client, "mes", sent.len()).await;
    assert_exactly_once_in_order(&fetched, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_across_kill9_of_the_node() {
    let mut zone = Zone::start(Opts {
        out_of_process: true,
        ..Opts::default()
    })
    .await;
    let sent = append_batch(&zone.client(), "kill-node", 5).await;
    zone.kill9_node().await;
    zone.restart_node(true).await;
    retry_all_and_verify(&zone, &sent).await;

    // Kill while a stream of appends is in flight: whatever was acknowledged
    // is stored once; retrying every attempt fills in the rest exactly once.
    let client = zone.client();
    let attempted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Envelope, Fact)>::new()));
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (attempted, acked_count) = (attempted.clone(), acked_count.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let (e, f) = (envelope(&mid("inflight")), batch_fact(100 + i));
                attempted.lock().unwrap().push((e.clone(), f.clone()));
                match client.append(e, f).await {
                    Ok(r) => {
                        acked.push(r.offset);
                        acked_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            acked
        })
    };
    // Kill once appends are flowing (not after a fixed time: a loaded
    // machine can take longer than that for the first one).
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_count.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "no appends acknowledged within 30 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    zone.kill9_node().await;
    let acked = writer.await.unwrap();
    let attempts = attempted.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some appends were acknowledged before the kill"
    );
    assert!(
        acked.len() < attempts.len(),
        "the kill interrupted the writer"
    );
    zone.restart_node(true).await;
    let client = zone.client();
    let mut all = sent.clone();
    for (i, (e, f)) in attempts.iter().enumerate() {
        let r = append_retrying(&client, e, f).await;
        if let Some(offset) = acked.get(i) {
            assert!(
                r.duplicate,
                "acknowledged before the kill, so a retry is a duplicate"
            );
            assert_eq!(r.offset, *offset);
        }
        all.push((e.clone(), f.clone(), r.offset));
    }
    // The consumer already got `sent`; restarting re-delivers unconfirmed ones,
    // so confirm what we have and verify the rest.
    all.sort_by_key(|s| s.2);
    assert_eq!(zone.message_count("operational").await, all.len() as u64);
    let fetched = fetch_all(&client, "mes", all.len()).await;
    assert_exactly_once_in_order(&fetched, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_across_kill9_and_restart_of_nats_server() {
    let mut zone = Zone::start(Opts::default()).await;
    let sent = append_batch(&zone.client(), "kill-nats", 5).await;
    zone.nats.kill9().await.unwrap();
    zone.nats.restart().await.unwrap();
    retry_all_and_verify(&zone, &sent).await;
    // New appends work after the restart too.
    let r = append_retrying(&zone.client(), &envelope(&mid("after")), &batch_fact(9)).await;
    assert!(!r.duplicate);
    assert_eq!(
        zone.message_count("operational").await,
        sent.len() as u64 + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_after_the_duplicate_window() {
    let mut opts = Opts::default();
    opts.categories[0].duplicate_window = Duration::from_secs(1);
    let zone = Zone::start(opts).await;
    let sent = append_batch(&zone.client(), "window", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    retry_all_and_verify(&zone, &sent).await;
    // A conflicting retry past the window is still a conflict.
    let mut other = sent[0].1.clone();
    other.object_json = r#"{"changed":true}"#.into();
    assert_rejected(
        zone.client().append(sent[0].0.clone(), other).await,
        "already_exists",
        "conflicting_duplicate",
    );
    assert_eq!(zone.message_count("operational").await, 3);
}

/// A zone (in-process node, 1 s duplicate window) with `n` facts appended,
/// its node stopped cleanly once the window has passed: from then on only
/// the key index can answer the retries.
async fn appended_then_stopped_past_the_duplicate_window(
    prefix: &str,
    n: usize,
) -> (Zone, Vec<(Envelope, Fact, u64)>) {
    let mut opts = Opts::default();
    opts.categories[0].duplicate_window = Duration::from_secs(1);
    let mut zone = Zone::start(opts).await;
    let sent = append_batch(&zone.client(), prefix, n).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    zone.stop_node().await;
    (zone, sent)
}

/// The key index is derived from the streams: with its file deleted while
/// the node is down, the node rebuilds it from the stored facts before it
/// accepts an append, so every retry is still a duplicate and a key stored
/// in one category is still refused in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_after_the_key_index_file_is_lost() {
    let (mut zone, sent) = appended_then_stopped_past_the_duplicate_window("lost-index", 4).await;
    let index_file = zone.config.key_index_path();
    assert!(
        index_file.exists(),
        "the node keeps its key index at {}",
        index_file.display()
    );
    std::fs::remove_file(&index_file).unwrap();
    zone.restart_node(false).await;
    retry_all_and_verify(&zone, &sent).await;
    let (e, _, offset) = &sent[0];
    let refused = zone
        .client()
        .append(
            e.clone(),
            fact("document:PlantA/lost", "step_completed", r#"{"a":1}"#),
        )
        .await;
    assert_rejected(refused, "already_exists", "conflicting_duplicate");
    assert_eq!(
        zone.message_count("documents").await,
        0,
        "nothing stored in the other category"
    );
    let text = zone.metrics_text().await;
    let read_in = read_in_facts(&text);
    assert_eq!(
        read_in,
        sent.len() as f64,
        "the rebuild read every stored fact in ({offset} was the first)"
    );
}

/// A clean stop saves the key filter beside the index and the restarted
/// node loads it instead of reading every page. Every retry past the
/// duplicate window must still be a duplicate: a loaded filter missing a
/// stored key would answer "absent" and let the fact be stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_across_a_clean_restart_with_the_saved_key_filter() {
    let (mut zone, sent) = appended_then_stopped_past_the_duplicate_window("saved-filter", 5).await;
    let saved =
        std::path::PathBuf::from(format!("{}.filter", zone.config.key_index_path().display()));
    assert!(
        saved.exists(),
        "a clean stop saves the key filter at {}",
        saved.display()
    );
    zone.restart_node(false).await;
    assert!(!saved.exists(), "the restarted node took the saved filter");
    retry_all_and_verify(&zone, &sent).await;
    assert_eq!(
        read_in_facts(&zone.metrics_text().await),
        0.0,
        "a clean restart reads nothing in from the stream"
    );
}

/// A power loss can tear a key-index page being rewritten. After a kill -9
/// (no clean close) the node checks every page at start-up; a torn one
/// makes it start the index empty and read the streams in again before it
/// accepts an append, so every retry past the duplicate window is still a
/// duplicate. The tear is simulated by overwriting the first bucket pages
/// (`store::key_index::format`: two 8 KiB header copies, then 4 KiB pages)
/// with garbage while the node is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_after_a_torn_key_index_page() {
    let mut opts = Opts {
        out_of_process: true,
        key_index_sync_interval: Some(Duration::from_secs(1)),
        ..Opts::default()
    };
    opts.categories[0].duplicate_window = Duration::from_secs(1);
    let mut zone = Zone::start(opts).await;
    let sent = append_batch(&zone.client(), "torn-page", 6).await;
    // Past the duplicate window, and past a checkpoint of the index (1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    zone.kill9_node().await;
    let index_file = zone.config.key_index_path();
    overwrite_key_index_pages(&index_file, 64 * 4096);
    zone.restart_node(true).await;
    retry_all_and_verify(&zone, &sent).await;
    let text = zone.metrics_text().await;
    let read_in = read_in_facts(&text);
    assert_eq!(
        read_in,
        sent.len() as f64,
        "the torn index was started over and every stored fact read in again"
    );
}

/// A key index page damaged while the node runs (a disk error, or the file
/// written by something else) is caught by the next look-up that reads it:
/// that append is refused, the node starts the index over and reads the
/// stream in again by itself, and every earlier key is still a duplicate
/// after JetStream's duplicate window. The probe is a retry of a stored
/// key: a new key is answered by the key filter without reading a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_index_damaged_while_running_is_rebuilt_by_the_node() {
    // Checkpoints often, so the entries are merged into the pages (out of
    // the memory buffer) before the damage.
    let mut opts = Opts {
        key_index_sync_interval: Some(Duration::from_millis(200)),
        ..Opts::default()
    };
    opts.categories[0].duplicate_window = Duration::from_secs(1);
    let zone = Zone::start(opts).await;
    let client = zone.client();
    let mut sent = append_batch(&client, "damaged", 6).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(&text, "bsfg_key_index_buffered_facts", &[]),
        Some(0.0),
        "the entries are in the pages"
    );
    // Garbage over every bucket page (the two header copies stay).
    let index_file = zone.config.key_index_path();
    let pages_bytes = std::fs::metadata(&index_file).unwrap().len() - 16 * 1024;
    overwrite_key_index_pages(&index_file, pages_bytes as usize);
    let (e, f, offset) = sent[0].clone();
    let refused = client
        .append(e.clone(), f.clone())
        .await
        .expect_err("an append reading a damaged page is refused");
    assert_eq!(refused.code.as_str(), "unavailable", "{refused:?}");
    assert!(
        refused
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("key_index_unavailable"),
        "{refused:?}"
    );
    assert_eq!(
        zone.message_count("operational").await,
        sent.len() as u64,
        "nothing stored by the refused append"
    );
    // The node rebuilds by itself: the retry is a duplicate at its offset,
    // and a new append goes through, once.
    let again = append_retrying(&client, &e, &f).await;
    assert!(again.duplicate && again.offset == offset, "{again:?}");
    let (e, f) = (envelope(&mid("after-damage")), batch_fact(99));
    let appended = append_retrying(&client, &e, &f).await;
    assert!(!appended.duplicate);
    sent.push((e, f, appended.offset));
    retry_all_and_verify(&zone, &sent).await;
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(&text, "bsfg_key_index_rebuilds_total", &[]),
        Some(1.0),
        "one rebuild"
    );
    assert_eq!(metric_value(&text, "bsfg_key_index_ready", &[]), Some(1.0));
    let read_in = read_in_facts(&text);
    assert!(read_in >= 6.0, "the stream was read in again: {read_in}");
}

/// A fact that reached the stream without the node seeing its
/// acknowledgement (simulated by publishing the node's exact record
/// directly) is read into the key index by the gap filler, so a retry after
/// the duplicate window is still answered as a duplicate, not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_fact_whose_acknowledgement_was_lost_is_still_a_duplicate() {
    use buffa::Message as _;
    let mut opts = Opts::default();
    opts.categories[0].duplicate_window = Duration::from_secs(1);
    let zone = Zone::start(opts).await;
    let client = zone.client();
    // The node's own appends before and after, so the lost one is a gap
    // below facts the index already holds.
    let before = append_batch(&client, "before-gap", 2).await;
    let (e, f) = (
        envelope(&mid("lost-ack")),
        fact("batch:PlantA/B7", "step_completed", r#"{"step":7}"#),
    );
    let record = StoredFact {
        category: "operational".into(),
        envelope: e.clone().into(),
        fact: f.clone().into(),
        provenance: Provenance {
            origin_zone: e.from_zone.clone(),
            ..Default::default()
        }
        .into(),
        appended_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        bsfg_domain::identity::key_token(&e.from_zone, &e.message_id).as_str(),
    );
    headers.insert(
        "Bsfg-Content",
        hex::encode(bsfg_domain::identity::content_digest(&f)).as_str(),
    );
    let js = zone.jetstream().await;
    let ack = js
        .publish_with_headers(
            "facts.operational.batch",
            headers,
            record.encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let after = append_batch(&client, "after-gap", 2).await;
    assert_eq!(ack.sequence, before[1].2 + 1);
    // Past the duplicate window, and past two maintenance ticks (1 s each).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let retry = client.append(e.clone(), f.clone()).await.unwrap();
    assert!(retry.duplicate, "the retry is answered from the key index");
    assert_eq!(retry.offset, ack.sequence);
    assert_eq!(zone.message_count("operational").await, 5, "stored once");
    for (e, f, offset) in before.iter().chain(&after) {
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        assert!(
            r.duplicate && r.offset == *offset,
            "the node's own facts stay duplicates"
        );
    }
    // Different content under a stored key is refused, whether the stored
    // fact carries its content digest as a header (the older stored
    // format, as above) or not (the format the node writes).
    let changed = fact("batch:PlantA/B7", "step_completed", r#"{"step":8}"#);
    assert_rejected(
        client.append(e.clone(), changed.clone()).await,
        "already_exists",
        "conflicting_duplicate",
    );
    assert_rejected(
        client.append(after[0].0.clone(), changed).await,
        "already_exists",
        "conflicting_duplicate",
    );
    let stored = js
        .get_stream("facts_operational")
        .await
        .unwrap()
        .direct_get(after[0].2)
        .await
        .unwrap();
    assert!(
        stored.headers.get("Bsfg-Content").is_none(),
        "the content digest is no longer stored as a header: {:?}",
        stored.headers
    );
    assert_eq!(
        zone.message_count("operational").await,
        5,
        "nothing stored by the refusals"
    );
    let text = zone.metrics_text().await;
    assert!(read_in_facts(&text) >= 1.0);
    assert_eq!(
        metric_value(
            &text,
            "bsfg_key_index_through_offset",
            &["category=\"operational\""]
        ),
        Some(5.0)
    );
}
