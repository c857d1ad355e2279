//! AppendFacts: several facts in one request, against a real nats-server
//! and a real node over real sockets. Each fact is checked, authorised,
//! stored and answered as its own AppendFact would be (results[i] for
//! facts[i]); a request's facts are stored in its order; a request over the
//! limits (1,000 facts, 1 MiB) is refused whole, nothing stored.

use crate::faults::{Rng, fault_seed};
use crate::harness::*;
use crate::interop::buf_curl_as;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `n` new facts (unique message ids with `prefix`), object_json written
/// with spaces so that storing it canonical is visible.
fn new_facts(prefix: &str, n: usize) -> Vec<(Envelope, Fact)> {
    (0..n)
        .map(|i| (envelope(&mid(prefix)), batch_fact(i)))
        .collect()
}

/// Every answer of a request, each expected stored: (offset, duplicate).
fn appended(results: &[Result<AppendFactResponse, FactRefusal>]) -> Vec<(u64, bool)> {
    results
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(a) => {
                assert_eq!(a.category, "operational", "fact {i}");
                (a.offset, a.duplicate)
            }
            Err(e) => panic!("fact {i} refused: {e:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_stored_in_request_order_and_answered_by_position() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let batch = new_facts("order", 300);
    let results = client.append_facts(batch.clone()).await.unwrap();
    assert_eq!(results.len(), batch.len(), "one result per fact");
    let answers = appended(&results);
    assert!(
        answers.iter().all(|(_, duplicate)| !duplicate),
        "every fact new"
    );
    let offsets: Vec<u64> = answers.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=300).collect::<Vec<u64>>(),
        "contiguous offsets in request order, from the empty log's first"
    );
    assert_eq!(zone.message_count("operational").await, 300);

    // FetchFacts gives them back byte for byte, in request order.
    let sent: Vec<(Envelope, Fact, u64)> = batch
        .iter()
        .zip(&offsets)
        .map(|((e, f), o)| (e.clone(), f.clone(), *o))
        .collect();
    let fetched = fetch_all(&client, "mes", sent.len()).await;
    assert_exactly_once_in_order(&fetched, &sent);

    // The same request again: every fact a duplicate at its offset, nothing
    // more stored.
    let again = client.append_facts(batch.clone()).await.unwrap();
    let answers = appended(&again);
    for (i, (offset, duplicate)) in answers.iter().enumerate() {
        assert!(*duplicate, "fact {i} answered as a duplicate");
        assert_eq!(*offset, offsets[i], "fact {i} at its first offset");
    }
    assert_eq!(zone.message_count("operational").await, 300);
    // And a fact of it sent on its own is answered the same way.
    let single = client
        .append(batch[150].0.clone(), batch[150].1.clone())
        .await
        .unwrap();
    assert!(single.duplicate && single.offset == offsets[150]);
    assert_eq!(zone.message_count("operational").await, 300);
}

/// Audit records not read yet (the auditor consumer, confirmed as read),
/// as JSON objects, after waiting up to `wait_ms` for the first.
async fn new_audit_records(client: &BsfgClient, wait_ms: u32) -> Vec<serde_json::Value> {
    let r = client.fetch("auditor", 1000, 0, wait_ms).await.unwrap();
    if let Some(last) = r.facts.last() {
        client.confirm("auditor", last.offset).await.unwrap();
    }
    r.facts
        .iter()
        .map(|f| serde_json::from_str(&f.fact.as_option().unwrap().object_json).unwrap())
        .collect()
}

fn refusal(results: &[Result<AppendFactResponse, FactRefusal>], i: usize) -> &FactRefusal {
    match &results[i] {
        Err(r) => r,
        Ok(a) => panic!("fact {i} expected refused, got {a:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fact_of_a_batch_gets_its_own_answer() {
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Opts::default()
    })
    .await;
    let client = zone.client();
    // Two facts stored before, one by one.
    let earlier = new_facts("earlier", 2);
    let mut earlier_offsets = Vec::new();
    for (e, f) in &earlier {
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        earlier_offsets.push(r.offset);
    }
    // The audit consumer starts empty (nothing refused yet).
    assert!(new_audit_records(&client, 200).await.is_empty());

    // 64 facts: more than the atomic minimum of the shipped configuration,
    // so the new ones are committed as one JetStream atomic batch.
    let mut batch = new_facts("mixed", 64);
    // 1: malformed (subject without a kind).
    batch[1].1.subject = "batchB1".into();
    // 2 and 40: a from_zone this application may not assert.
    for i in [2, 40] {
        batch[i].0.from_zone = "enterprise".into();
    }
    // 3: an identical retry of a fact stored before.
    batch[3] = earlier[0].clone();
    // 4: another fact under a stored key.
    batch[4] = (
        earlier[1].0.clone(),
        fact(
            &earlier[1].1.subject,
            "step_completed",
            r#"{"changed":true}"#,
        ),
    );
    // 20: a fact of another category.
    batch[20].1.subject = "document:SOP-12".into();
    // 50: the same fact as 5 of this request; 60: another fact under 6's key.
    batch[50] = batch[5].clone();
    batch[60] = (
        batch[6].0.clone(),
        fact(&batch[6].1.subject, "step_completed", r#"{"changed":true}"#),
    );
    let special = [1, 2, 3, 4, 20, 40, 50, 60];
    let good_at: Vec<usize> = (0..64).filter(|i| !special.contains(i)).collect();
    let before = zone.message_count("operational").await;
    let results = client.append_facts(batch.clone()).await.unwrap();
    assert_eq!(results.len(), 64, "one result per fact");

    // The good ones: stored, in request order.
    let good: Vec<u64> = good_at
        .iter()
        .map(|&i| match &results[i] {
            Ok(a) if !a.duplicate && a.category == "operational" => a.offset,
            other => panic!("fact {i} expected stored new, got {other:?}"),
        })
        .collect();
    assert!(
        good.windows(2).all(|w| w[0] < w[1]),
        "request order: {good:?}"
    );
    assert!(good[0] > earlier_offsets[1]);
    let document = results[20].as_ref().unwrap();
    assert_eq!(document.category, "documents", "{document:?}");
    assert!(!document.duplicate);
    // Identical retries: duplicates at the first offset.
    let dup = results[3].as_ref().unwrap();
    assert!(dup.duplicate && dup.offset == earlier_offsets[0], "{dup:?}");
    let dup = results[50].as_ref().unwrap();
    let fifth = results[5].as_ref().unwrap();
    assert!(dup.duplicate && dup.offset == fifth.offset, "{dup:?}");
    // Refusals, each precise.
    for (i, code, reason) in [
        (1, "invalid_argument", "bad_subject"),
        (2, "permission_denied", "from_zone_not_allowed"),
        (4, "already_exists", "conflicting_duplicate"),
        (40, "permission_denied", "from_zone_not_allowed"),
        (60, "already_exists", "conflicting_duplicate"),
    ] {
        let r = refusal(&results, i);
        assert_eq!(
            (r.code.as_str(), r.reason.as_str()),
            (code, reason),
            "fact {i}: {r:?}"
        );
        assert!(!r.message.is_empty(), "fact {i}: a message for a person");
    }
    assert_eq!(
        zone.message_count("operational").await,
        before + good.len() as u64,
        "the new facts once each, nothing for the others"
    );
    assert_eq!(zone.message_count("documents").await, 1);
    // What was stored is what was sent.
    let sent: Vec<(Envelope, Fact, u64)> = earlier
        .iter()
        .zip(&earlier_offsets)
        .map(|((e, f), o)| (e.clone(), f.clone(), *o))
        .chain(
            good_at
                .iter()
                .zip(&good)
                .map(|(&i, o)| (batch[i].0.clone(), batch[i].1.clone(), *o)),
        )
        .collect();
    let fetched = fetch_all(&client, "mes", sent.len()).await;
    assert_exactly_once_in_order(&fetched, &sent);

    // One audit record for the permission refusals: the first refused
    // fact's key, and how many were refused so. Nothing for the invalid or
    // conflicting facts (a caller's own mistakes, as for AppendFact).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    while records.is_empty() && Instant::now() < deadline {
        records.extend(new_audit_records(&client, 500).await);
    }
    records.extend(new_audit_records(&client, 1000).await);
    assert_eq!(records.len(), 1, "one audit record: {records:?}");
    let r = &records[0];
    assert_eq!(r["rpc"], "AppendFacts", "{r}");
    assert_eq!(r["principal"], "mes", "{r}");
    assert_eq!(r["decision"], "refused", "{r}");
    assert_eq!(r["reason"], "from_zone_not_allowed", "{r}");
    assert_eq!(
        r["key"],
        format!("enterprise/{}", batch[2].0.message_id),
        "{r}"
    );
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(
        detail.ends_with("(2 of the request's facts refused so)"),
        "{r}"
    );

    // One outcome line for the request, with its counts.
    let lines = zone
        .log_lines_with(1, &[("rpc", "AppendFacts"), ("outcome", "ok")])
        .await;
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    assert_eq!(
        lines[0]["fields"]["detail"],
        "stored 57, duplicate 2, bad_subject 1, conflicting_duplicate 2, from_zone_not_allowed 2",
        "{}",
        lines[0]
    );
    let text = zone.metrics_text().await;
    let failures = |reason: &str| {
        metric_value(
            &text,
            "bsfg_append_failures_total",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(failures("from_zone_not_allowed"), Some(2.0), "{text}");
    assert_eq!(failures("conflicting_duplicate"), Some(2.0), "{text}");
    assert_eq!(failures("bad_subject"), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_limits_is_refused_whole() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();

    // 1,001 facts: refused whole, nothing stored.
    let too_many = new_facts("many", 1001);
    assert_rejected(
        client.append_facts(too_many.clone()).await,
        "invalid_argument",
        "too_many_facts",
    );
    assert_eq!(zone.message_count("operational").await, 0);
    // 1,000 of them are one request.
    let limit: Vec<(Envelope, Fact)> = too_many[..1000].to_vec();
    let results = client.append_facts(limit).await.unwrap();
    let offsets: Vec<u64> = appended(&results).iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=1000).collect::<Vec<u64>>());
    assert_eq!(zone.message_count("operational").await, 1000);

    // Each fact within its own limit (150 KB of object_json, the limit is
    // 192 KiB), the request over 1 MiB: refused whole, nothing stored.
    let big = |prefix: &str, n: usize| -> Vec<(Envelope, Fact)> {
        (0..n)
            .map(|i| {
                let object = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(150_000));
                (
                    envelope(&mid(prefix)),
                    fact("batch:PlantA/B9", "step_completed", &object),
                )
            })
            .collect()
    };
    let over = big("large", 8);
    assert_rejected(
        client.append_facts(over.clone()).await,
        "invalid_argument",
        "request_too_large",
    );
    assert_eq!(zone.message_count("operational").await, 1000);
    // Each of them is a fact the node takes: six (900 KB) in one request.
    let under: Vec<(Envelope, Fact)> = over[..6].to_vec();
    let results = client.append_facts(under.clone()).await.unwrap();
    let offsets: Vec<u64> = appended(&results).iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1001..=1006).collect::<Vec<u64>>());
    assert_eq!(zone.message_count("operational").await, 1006);

    // A caller the zone does not know: the request refused whole.
    let stranger = zone.client_as("stranger.plant-a");
    assert_rejected(
        stranger.append_facts(new_facts("stranger", 3)).await,
        "permission_denied",
        "unknown_identity",
    );
    assert_eq!(zone.message_count("operational").await, 1006);

    // An empty request is answered with no results.
    assert!(client.append_facts(vec![]).await.unwrap().is_empty());
    assert_eq!(zone.message_count("operational").await, 1006);
}

/// Third-party clients: `buf curl` (Connect over mTLS, schema from the
/// .proto files, its own Go TLS stack) and a hand-written HTTP/1.1 JSON POST
/// send AppendFacts as JSON; each fact answered in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_clients_append_several_facts_as_json() {
    let zone = Zone::start(Opts::default()).await;
    let fact_json = |id: &str, subject: &str| {
        serde_json::json!({
            "envelope": {"messageId": id, "fromZone": "plant-a", "toZone": "plant-a", "producedAtUnixMs": "1700000000000"},
            "fact": {"subject": subject, "predicate": "step_completed", "objectJson": "{ \"step\": \"mixing\", \"t\": 2.0 }"}
        })
    };
    let body = serde_json::json!({"facts": [
        fact_json("curl-1", "batch:PlantA/B1"),
        fact_json("curl-2", "not a subject"),
        fact_json("curl-3", "batch:PlantA/B3"),
    ]});
    let call = |body: serde_json::Value| {
        let zone = &zone;
        async move {
            let output = buf_curl_as(zone, APP_CERT, "AppendFacts", &body).await;
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            assert!(
                output.status.success(),
                "buf curl AppendFacts failed: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            serde_json::from_str::<serde_json::Value>(&stdout)
                .unwrap_or_else(|e| panic!("non-JSON ({e}): {stdout}"))
        }
    };
    let r = call(body.clone()).await;
    let results = r["results"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(results.len(), 3, "{r}");
    assert_eq!(results[0]["appended"]["offset"], "1", "{r}");
    assert_eq!(results[0]["appended"]["category"], "operational", "{r}");
    assert_eq!(results[1]["refused"]["code"], "invalid_argument", "{r}");
    assert_eq!(results[1]["refused"]["reason"], "bad_subject", "{r}");
    assert_eq!(results[2]["appended"]["offset"], "2", "{r}");
    // Again: duplicates at the same offsets (JSON leaves out a false bool).
    let again = call(body).await;
    let results = again["results"].as_array().unwrap();
    assert_eq!(results[0]["appended"]["duplicate"], true, "{again}");
    assert_eq!(results[0]["appended"]["offset"], "1", "{again}");
    assert_eq!(results[2]["appended"]["duplicate"], true, "{again}");
    assert_eq!(results[2]["appended"]["offset"], "2", "{again}");
    assert_eq!(zone.message_count("operational").await, 2);
    let fetched = fetch_all(&zone.client(), "mes", 2).await;
    assert_eq!(fetched.len(), 2);
    for (f, id) in fetched.iter().zip(["curl-1", "curl-3"]) {
        assert_eq!(f.envelope.as_option().unwrap().message_id, id);
        assert_eq!(
            f.fact.as_option().unwrap().object_json,
            r#"{"step":"mixing","t":2}"#
        );
    }

    // Plain HTTP/1.1, Connect unary with a JSON body, no client library.
    let body = serde_json::json!({"facts": [
        {"envelope": {"message_id": "http-1", "from_zone": "plant-a", "to_zone": "plant-a", "produced_at_unix_ms": 1700000000001i64},
         "fact": {"subject": "asset:FILLER-07", "predicate": "state_changed", "object_json": "{\"state\":\"running\"}"}},
        {"envelope": {"message_id": "http-2", "from_zone": "plant-a", "to_zone": "plant-a", "produced_at_unix_ms": 1700000000002i64},
         "fact": {"subject": "asset:FILLER-07", "predicate": "state_changed", "object_json": "{\"state\":\"idle\"}"}}
    ]});
    let (status, response) = https_raw(
        zone.boundary_addr,
        &zone.tls_config(),
        "POST",
        "/bsfg.v1.BoundaryService/AppendFacts",
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
    .unwrap();
    let response: serde_json::Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["results"][0]["appended"]["offset"], "3",
        "{response}"
    );
    assert_eq!(
        response["results"][1]["appended"]["offset"], "4",
        "{response}"
    );
    assert_eq!(zone.message_count("operational").await, 4);

    // Over the limit: the whole request refused, as a Connect error.
    let many: Vec<serde_json::Value> = (0..1001)
        .map(|i| fact_json(&format!("curl-many-{i}"), "batch:PlantA/B4"))
        .collect();
    // (The body is larger than one argument may be: buf curl reads it from
    // a file.)
    let body_file = zone.dir().join("many.json");
    std::fs::write(&body_file, serde_json::json!({"facts": many}).to_string()).unwrap();
    let data = format!("@{}", body_file.display());
    let output = crate::interop::buf_curl_data(&zone, APP_CERT, "AppendFacts", &data).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused");
    assert!(
        stderr.contains("invalid_argument") && stderr.contains("too_many_facts"),
        "{stderr}"
    );
    assert_eq!(zone.message_count("operational").await, 4);
}

/// Eight clients at once, each sending a request of 200 facts drawn in a
/// seeded order from one pool of 400: every fact is answered stored, every
/// answer for one key names the same offset, exactly one of them is not a
/// duplicate, each fact is stored once, and the facts a request stored new
/// are stored in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_batches_store_each_fact_once() {
    let seed = fault_seed();
    eprintln!("append_facts overlap seed {seed} (replay: BSFG_FAULT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let zone = Zone::start(Opts::default()).await;
    let pool = new_facts("pool", 400);
    let requests: Vec<Vec<usize>> = (0..8)
        .map(|_| {
            // A seeded shuffle; the first 200.
            let mut order: Vec<usize> = (0..pool.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            order.truncate(200);
            order
        })
        .collect();
    let calls: Vec<_> = requests
        .iter()
        .map(|picks| {
            let client = zone.client();
            let batch: Vec<(Envelope, Fact)> = picks.iter().map(|&i| pool[i].clone()).collect();
            tokio::spawn(async move { client.append_facts(batch).await })
        })
        .collect();
    let mut answers: HashMap<usize, Vec<(u64, bool)>> = HashMap::new();
    for (picks, call) in requests.iter().zip(calls) {
        let results = call.await.unwrap().unwrap();
        let got = appended(&results);
        let new: Vec<u64> = got.iter().filter(|(_, d)| !d).map(|(o, _)| *o).collect();
        assert!(
            new.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: a request's new facts in its order: {new:?}"
        );
        for (&i, answer) in picks.iter().zip(got) {
            answers.entry(i).or_default().push(answer);
        }
    }
    for (i, got) in &answers {
        assert!(
            got.iter().all(|(o, _)| *o == got[0].0),
            "seed {seed}: pool fact {i} answered at different offsets: {got:?}"
        );
        assert_eq!(
            got.iter().filter(|(_, d)| !d).count(),
            1,
            "seed {seed}: pool fact {i} stored new exactly once: {got:?}"
        );
    }
    assert_eq!(
        zone.message_count("operational").await,
        answers.len() as u64,
        "seed {seed}: each fact sent stored once"
    );
    let mut sent: Vec<(Envelope, Fact, u64)> = answers
        .iter()
        .map(|(&i, got)| (pool[i].0.clone(), pool[i].1.clone(), got[0].0))
        .collect();
    sent.sort_by_key(|(_, _, o)| *o);
    let fetched = fetch_all(&zone.client(), "mes", sent.len()).await;
    assert_exactly_once_in_order(&fetched, &sent);
}

/// What one writer of the kill test got acknowledged, in its send order.
struct Written {
    facts: Vec<(Envelope, Fact, u64)>,
    /// Requests refused whole (unavailable, deadline) and facts refused in
    /// an answer, retried.
    refused_requests: usize,
    refused_facts: usize,
    /// Facts a retry found stored (their first answer was lost).
    duplicates: usize,
    /// How each refusal went, for the record.
    notes: Vec<String>,
}

/// Sends batches of 64 new facts until `stop`, each retried (the refused
/// facts, same message ids, in order) until every fact is acknowledged.
async fn write_batches(
    client: BsfgClient,
    writer: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
    node_killed: bool,
) -> Written {
    let mut rng = Rng::new(seed ^ (writer as u64 + 1).wrapping_mul(0x1000_0000_01B3));
    let mut written = Written {
        facts: Vec::new(),
        refused_requests: 0,
        refused_facts: 0,
        duplicates: 0,
        notes: Vec::new(),
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<(Envelope, Fact)> = (0..64)
            .map(|_| {
                n += 1;
                let pad = "p".repeat(rng.below(400) as usize);
                let object = format!(
                    r#"{{ "writer": {writer}, "n": {n}, "seed": {seed}, "pad": "{pad}" }}"#
                );
                (
                    envelope(&format!("w{writer}-{seed}-{n}")),
                    fact(
                        &format!("batch:PlantA/W{writer}"),
                        "step_completed",
                        &object,
                    ),
                )
            })
            .collect();
        let mut offsets: Vec<Option<u64>> = vec![None; batch.len()];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let pending: Vec<usize> = (0..batch.len()).filter(|&i| offsets[i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: writer {writer}'s batch not acknowledged in 120 s"
            );
            let request = pending.iter().map(|&i| batch[i].clone()).collect();
            match client.append_facts(request).await {
                Err(e) => {
                    let code = e.code.as_str();
                    // A node killed under a call breaks its connection
                    // (the client's transport error); nats-server killed
                    // under the node, the node answers.
                    assert!(
                        matches!(code, "unavailable" | "deadline_exceeded")
                            || (node_killed && matches!(code, "unknown" | "internal")),
                        "seed {seed}: writer {writer}: a request refused {code}: {e:?}"
                    );
                    written.refused_requests += 1;
                    written.notes.push(format!(
                        "writer {writer}: a request of {} refused: {code} {}",
                        pending.len(),
                        e.message.unwrap_or_default()
                    ));
                }
                Ok(results) => {
                    assert_eq!(results.len(), pending.len());
                    let mut refused_before: Option<&FactRefusal> = None;
                    for (&i, r) in pending.iter().zip(&results) {
                        match r {
                            Ok(a) => {
                                assert!(
                                    refused_before.is_none(),
                                    "seed {seed}: writer {writer}: fact {} stored after an \
                                     earlier fact of its request was refused ({:?}): the \
                                     request order would break on retry",
                                    batch[i].0.message_id,
                                    refused_before
                                );
                                offsets[i] = Some(a.offset);
                                written.duplicates += usize::from(a.duplicate);
                            }
                            Err(f) => {
                                assert!(
                                    f.code == "unavailable",
                                    "seed {seed}: writer {writer}: a fact refused {f:?}"
                                );
                                written.refused_facts += 1;
                                refused_before.get_or_insert(f);
                            }
                        }
                    }
                    if let Some(f) = refused_before {
                        let refused = results.iter().filter(|r| r.is_err()).count();
                        written.notes.push(format!(
                            "writer {writer}: {} of {} facts stored, then {refused} refused: {} {}",
                            results.len() - refused,
                            results.len(),
                            f.reason,
                            f.message
                        ));
                    }
                }
            }
            if offsets.iter().any(Option::is_none) {
                progress.interrupted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        progress.acked_batches.fetch_add(1, Ordering::Relaxed);
        written.facts.extend(
            batch
                .into_iter()
                .zip(offsets)
                .map(|((e, f), o)| (e, f, o.unwrap())),
        );
    }
    written
}

/// What the batch writers have done so far, for the kills' timing.
#[derive(Default)]
struct Progress {
    /// Batches acknowledged whole.
    acked_batches: AtomicUsize,
    /// Attempts in which a request or some of its facts were refused.
    interrupted: AtomicUsize,
}

/// Kills at most: a kill that lands between two commits cuts no request
/// (the next batch waits in the node's NATS client through the reconnect
/// and is stored after it), so the run kills again until one does.
const KILLS_MAX: usize = 8;

async fn wait_for_more(acked: &AtomicUsize, more: usize, seed: u64) {
    let target = acked.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no batches acknowledged in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// kill -9 of nats-server (at the shipped `sync_interval: always`) twice,
/// and again until a kill cuts a request (`KILLS_MAX`), while four writers
/// send AppendFacts batches of 64, each retrying its
/// refused facts with the same message ids until acknowledged: afterwards
/// every acknowledged fact is stored exactly once, byte for byte, at its
/// acknowledged offset, and each writer's facts in its send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_survive_kill9_of_nats_server_exactly_once_in_send_order() {
    kill_run(Killed::NatsServer).await;
}

/// The same with kill -9 of the node (`bsfg serve`), restarted on the same
/// ports: a request cut off may have been stored whole, in part (a prefix,
/// in request order) or not at all; its retry answers the stored facts as
/// duplicates and stores the rest after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_survive_kill9_of_the_node_exactly_once_in_send_order() {
    kill_run(Killed::Node).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Killed {
    NatsServer,
    Node,
}

async fn kill_run(killed: Killed) {
    let seed = fault_seed();
    eprintln!("append_facts kill ({killed:?}) seed {seed} (replay: BSFG_FAULT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut zone = Zone::start(Opts {
        out_of_process: killed == Killed::Node,
        ..Opts::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = zone.client();
            let node_killed = killed == Killed::Node;
            let (stop, progress) = (stop.clone(), progress.clone());
            tokio::spawn(write_batches(client, w, seed, stop, progress, node_killed))
        })
        .collect();
    let acked = &progress.acked_batches;
    let mut kills = 0;
    // Two kills, and more while none has cut a request.
    while kills < 2 || (progress.interrupted.load(Ordering::Relaxed) == 0 && kills < KILLS_MAX) {
        kills += 1;
        wait_for_more(acked, 4 + rng.below(8) as usize, seed).await;
        match killed {
            Killed::NatsServer => {
                zone.nats.kill9().await.unwrap();
                tokio::time::sleep(rng.millis(100, 1500)).await;
                zone.nats.restart().await.unwrap();
            }
            Killed::Node => {
                zone.kill9_node().await;
                tokio::time::sleep(rng.millis(100, 1500)).await;
                zone.restart_node(true).await;
            }
        }
    }
    wait_for_more(acked, 8, seed).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(Envelope, Fact, u64)> = Vec::new();
    let (mut refused_requests, mut refused_facts, mut duplicates) = (0, 0, 0);
    for (w, writer) in writers.into_iter().enumerate() {
        let written = writer.await.unwrap();
        let offsets: Vec<u64> = written.facts.iter().map(|(_, _, o)| *o).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: writer {w}'s facts stored in its send order: {offsets:?}"
        );
        // Each kind of refusal once, with how often it came.
        let mut kinds: Vec<(&String, usize)> = Vec::new();
        for note in &written.notes {
            match kinds.iter_mut().find(|(n, _)| *n == note) {
                Some((_, count)) => *count += 1,
                None => kinds.push((note, 1)),
            }
        }
        for (note, count) in kinds {
            eprintln!("seed {seed}: {note} (x{count})");
        }
        refused_requests += written.refused_requests;
        refused_facts += written.refused_facts;
        duplicates += written.duplicates;
        all.extend(written.facts);
    }
    eprintln!(
        "seed {seed}: {kills} kills; {} facts acknowledged; {refused_requests} requests and \
         {refused_facts} facts refused and retried; {duplicates} found stored by a retry",
        all.len()
    );
    assert!(
        refused_requests + refused_facts > 0,
        "seed {seed}: {kills} kills under load interrupted no request"
    );
    let mut by_id: HashMap<&str, u64> = HashMap::new();
    for (e, _, o) in &all {
        assert!(
            by_id.insert(&e.message_id, *o).is_none(),
            "seed {seed}: {} acknowledged twice",
            e.message_id
        );
    }
    all.sort_by_key(|(_, _, o)| *o);
    assert_eq!(
        zone.message_count("operational").await,
        all.len() as u64,
        "seed {seed}: nothing stored that was not acknowledged, nothing twice"
    );
    let fetched = fetch_all(&zone.client(), "mes", all.len()).await;
    assert_exactly_once_in_order(&fetched, &all);
}

/// The sum of every `bsfg_append_failures_total` sample (all reasons).
fn append_failures(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("bsfg_append_failures_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// AppendFacts requests in flight while nats-server is stopped (SIGSTOP)
/// are answered within the request timeout (plus scheduling slack), each
/// refused fact counted as its own AppendFact's refusal would be; once the
/// server resumes, retrying each request stores every fact exactly once,
/// in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_across_a_stalled_nats_server_are_answered_and_counted() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    client
        .append(envelope(&mid("warm")), batch_fact(0))
        .await
        .unwrap();
    let timeout = zone.config.nats.request_timeout;
    let batches: Vec<Vec<(Envelope, Fact)>> = (0..3).map(|_| new_facts("stalled", 100)).collect();
    let failures_before = append_failures(&zone.metrics_text().await);
    zone.nats.signal("STOP").unwrap();
    let started = Instant::now();
    let calls: Vec<_> = batches
        .iter()
        .map(|b| {
            let (client, b) = (client.clone(), b.clone());
            tokio::spawn(async move { client.append_facts(b).await })
        })
        .collect();
    let bound = timeout + Duration::from_millis(1500);
    let answers = tokio::time::timeout(bound, futures::future::join_all(calls)).await;
    let answered_in = started.elapsed();
    zone.nats.signal("CONT").unwrap();
    let answers = answers.unwrap_or_else(|_| {
        panic!("AppendFacts to a stalled nats-server unanswered after {bound:?}")
    });
    let mut refused_facts = 0;
    for answer in answers {
        match answer.unwrap() {
            Err(e) => {
                let reason = e.message.clone().unwrap_or_default();
                assert!(
                    e.code == connectrpc::ErrorCode::DeadlineExceeded
                        && reason.starts_with("request_timeout"),
                    "{e:?}"
                );
                refused_facts += 100;
            }
            Ok(results) => {
                for r in results {
                    let f = r.expect_err("nothing is acknowledged while nats-server is stopped");
                    assert_eq!(f.code, "unavailable", "{f:?}");
                    refused_facts += 1;
                }
            }
        }
    }
    eprintln!("3 AppendFacts of 100 to a stalled nats-server answered in {answered_in:?}");
    let failures = append_failures(&zone.metrics_text().await) - failures_before;
    assert_eq!(
        failures, refused_facts as f64,
        "each refused fact counted in bsfg_append_failures_total, as its own AppendFact's \
         refusal is (request_timeout included)"
    );

    // Resumed: each request retried until every fact is acknowledged.
    let mut sent = vec![];
    for batch in &batches {
        let deadline = Instant::now() + Duration::from_secs(30);
        let offsets = loop {
            match client.append_facts(batch.clone()).await {
                Ok(results) if results.iter().all(Result::is_ok) => {
                    break appended(&results);
                }
                other => {
                    assert!(Instant::now() < deadline, "retry still failing: {other:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let offsets: Vec<u64> = offsets.into_iter().map(|(o, _)| o).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "request order: {offsets:?}"
        );
        sent.extend(
            batch
                .iter()
                .zip(offsets)
                .map(|((e, f), o)| (e.clone(), f.clone(), o)),
        );
    }
    assert_eq!(
        zone.message_count("operational").await,
        301,
        "each fact stored once (plus the first)"
    );
    sent.sort_by_key(|(_, _, o)| *o);
    let fetched = fetch_all(&client, "mes", 301).await;
    assert_exactly_once_in_order(&fetched[1..], &sent);
}

/// The same facts, good and bad, sent as one AppendFacts request and one
/// by one as AppendFact: each answer the same (code, reason and message of
/// a refusal; offset of a stored fact, found as a duplicate by AppendFact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fact_is_answered_as_its_own_append_fact_would_be() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let object = b"batch record B1".to_vec();
    let digest = sha256(&object);
    put(&client, BUCKET, "batch/B1/record.txt", &object, &digest)
        .await
        .unwrap();
    let attached = |bucket: &str, digest: &str, size: u64| {
        let mut f = batch_fact(1);
        f.attachments.push(AttachmentRef {
            bucket: bucket.into(),
            key: "batch/B1/record.txt".into(),
            digest: digest.into(),
            size_bytes: size,
            ..Default::default()
        });
        f
    };
    let env = |change: &dyn Fn(&mut Envelope)| {
        let mut e = envelope(&mid("same"));
        change(&mut e);
        e
    };
    let with = |change: &dyn Fn(&mut Fact)| {
        let mut f = batch_fact(2);
        change(&mut f);
        f
    };
    let size = object.len() as u64;
    let cases: Vec<(Envelope, Fact)> = vec![
        (env(&|_| {}), batch_fact(0)),
        (env(&|e| e.message_id.clear()), batch_fact(1)),
        (env(&|e| e.from_zone = "Plant_A".into()), batch_fact(1)),
        (env(&|e| e.produced_at_unix_ms = 0), batch_fact(1)),
        (env(&|e| e.message_id = "m x".into()), batch_fact(1)),
        (env(&|e| e.message_id = "m".repeat(129)), batch_fact(1)),
        (env(&|e| e.to_zone = "plant-z".into()), batch_fact(1)),
        (env(&|e| e.from_zone = "enterprise".into()), batch_fact(1)),
        (env(&|_| {}), with(&|f| f.subject = "Batch:B1".into())),
        (
            env(&|_| {}),
            with(&|f| f.predicate = "stepCompleted".into()),
        ),
        (env(&|_| {}), with(&|f| f.object_json = "[1,2]".into())),
        (
            env(&|_| {}),
            with(&|f| f.object_json = r#"{"a":1,"a":2}"#.into()),
        ),
        (
            env(&|_| {}),
            with(&|f| f.object_json = format!("{{\"a\":\"{}\"}}", "x".repeat(200 * 1024))),
        ),
        (env(&|_| {}), attached(BUCKET, &digest, size)),
        (env(&|_| {}), attached(BUCKET, &sha256(b"other"), size)),
        (env(&|_| {}), attached(BUCKET, "md5:abc", size)),
        (env(&|_| {}), attached("nope", &digest, size)),
        (
            env(&|_| {}),
            with(&|f| f.subject = "audit:plant-a/mes".into()),
        ),
        (env(&|_| {}), batch_fact(3)),
    ];
    let results = client.append_facts(cases.clone()).await.unwrap();
    assert_eq!(results.len(), cases.len());
    let mut stored = 0;
    for (i, ((e, f), batched)) in cases.iter().zip(&results).enumerate() {
        let single = client.append(e.clone(), f.clone()).await;
        match (batched, single) {
            (Ok(b), Ok(s)) => {
                assert!(!b.duplicate, "case {i}: new in the request");
                assert!(s.duplicate, "case {i}: stored by the request");
                assert_eq!((b.offset, &b.category), (s.offset, &s.category), "case {i}");
                stored += 1;
            }
            (Err(b), Err(s)) => {
                assert_eq!(b.code, s.code.as_str(), "case {i}: {b:?} / {s:?}");
                assert_eq!(
                    format!("{}: {}", b.reason, b.message),
                    s.message.clone().unwrap_or_default(),
                    "case {i}"
                );
            }
            (b, s) => panic!("case {i}: AppendFacts answered {b:?}, AppendFact {s:?}"),
        }
    }
    assert_eq!(
        stored, 3,
        "the plain facts and the one with a good attachment"
    );
    let refused: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|f| f.reason.as_str()))
        .collect();
    eprintln!("refusals: {refused:?}");
    assert_eq!(refused.len(), cases.len() - 3);
    assert_eq!(zone.message_count("operational").await, 3);
}

/// A client given both nodes of a two-node zone, the standby first: an
/// AppendFacts moves on to the active node as an AppendFact does, and every
/// fact is stored there: the standby refuses the whole request
/// `unavailable`/`not_active`, as it refuses an AppendFact, so any client
/// finds the redirect where it looks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_two_nodes_appends_a_batch_on_the_active_one() {
    use crate::ha_nodes::{active_node, two_node_zone};
    let root = tempfile::tempdir().unwrap();
    let (_cluster, nodes) = two_node_zone(root.path()).await;
    let _children = [nodes[0].start().await, nodes[1].start().await];
    let active = active_node(&nodes, &[true, true]).await;
    let standby = 1 - active;
    let urls = [nodes[standby].url(), nodes[active].url()].join(",");
    // AppendFact: refused by the standby, moved on to the active node.
    let single = BsfgClient::connect(&urls).unwrap();
    let (e, f) = new_facts("ha-single", 1).remove(0);
    let stored = single.append(e, f).await.unwrap();
    assert!(!stored.duplicate);
    // The standby alone: the request refused whole, nothing stored.
    let to_standby = BsfgClient::connect(&nodes[standby].url()).unwrap();
    let e = to_standby
        .append_facts(new_facts("ha-standby", 3))
        .await
        .expect_err("a standby refuses the request");
    assert_eq!(e.code, connectrpc::ErrorCode::Unavailable, "{e:?}");
    let message = e.message.clone().unwrap_or_default();
    assert!(message.starts_with("not_active: "), "{message}");
    // AppendFacts by a new client, the standby first as well.
    let client = BsfgClient::connect(&urls).unwrap();
    let batch = new_facts("ha-batch", 5);
    let results = client.append_facts(batch.clone()).await.unwrap();
    let refusals: Vec<&FactRefusal> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        refusals.is_empty(),
        "every fact stored on the active node, none refused by the standby: {refusals:?}"
    );
    let offsets: Vec<u64> = appended(&results).iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (stored.offset + 1..=stored.offset + 5).collect::<Vec<u64>>()
    );
}

/// `bsfg append-file` with the zone's certificates: the lines' answers,
/// one JSON line each.
async fn append_file(
    zone: &Zone,
    file: &std::path::Path,
) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .arg("append-file")
        .arg("--url")
        .arg(zone.url())
        .arg("--ca")
        .arg(zone.pki.ca())
        .arg("--cert")
        .arg(zone.pki.cert(APP_CERT))
        .arg("--tls-key")
        .arg(zone.pki.key(APP_CERT))
        .arg("--file")
        .arg(file)
        .output()
        .await
        .expect("run bsfg append-file");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), answers, stderr)
}

/// `bsfg append-file` stores a file's facts in file order (1,200 lines, more
/// than one request), answers each line, reports a refused one and exits 1;
/// run again it stores nothing twice; a malformed line stops the run with
/// exit code 2 before anything of its request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_file_stores_a_file_in_order_once() {
    let zone = Zone::start(Opts::default()).await;
    zone.pki.client_config(APP_CERT).unwrap(); // issued on first use
    let line = |i: usize, subject: &str| {
        serde_json::json!({
            "envelope": {"messageId": format!("file-{i}"), "fromZone": "plant-a",
                         "toZone": "plant-a"},
            "fact": {"subject": subject, "predicate": "step_completed",
                     "objectJson": format!("{{\"i\": {i}}}")}
        })
        .to_string()
    };
    let lines: Vec<String> = (1..=1200)
        .map(|i| {
            line(
                i,
                if i == 700 {
                    "no colon"
                } else {
                    "batch:PlantA/B1"
                },
            )
        })
        .collect();
    let file = zone.dir().join("facts.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    for run in 0..2 {
        let (code, answers, stderr) = append_file(&zone, &file).await;
        assert_eq!(code, Some(1), "one fact refused: {stderr}");
        assert_eq!(answers.len(), 1200, "{stderr}");
        let mut expected_offset = 1;
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a["line"], i + 1, "{a}");
            if i + 1 == 700 {
                assert_eq!(a["reason"], "bad_subject", "{a}");
                continue;
            }
            assert_eq!(a["offset"], expected_offset, "file order: {a}");
            assert_eq!(a["duplicate"], run == 1, "{a}");
            expected_offset += 1;
        }
    }
    assert_eq!(zone.message_count("operational").await, 1199);
    // A malformed third line: nothing of its request sent.
    let bad = [line(2001, "batch:B"), line(2002, "batch:B"), "{nope".into()];
    let file = zone.dir().join("bad.jsonl");
    std::fs::write(&file, bad.join("\n")).unwrap();
    let (code, answers, stderr) = append_file(&zone, &file).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        answers.is_empty() && stderr.contains("line 3: not an AppendFact request"),
        "{stderr}"
    );
    assert_eq!(zone.message_count("operational").await, 1199);
}
