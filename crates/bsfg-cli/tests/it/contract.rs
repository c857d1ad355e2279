//! The boundary contract, rule by rule, against a real node and nats-server.

use crate::harness::*;
use bsfg_proto::bsfg::v1::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_is_idempotent_and_conflicts_are_refused() {
    // Out of process: the node's own log (stderr) is checked at the end.
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Opts::default()
    })
    .await;
    let client = zone.client();
    let env = envelope(&mid("idem"));
    let f = batch_fact(1);
    let first = client.append(env.clone(), f.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(first.offset >= 1);
    assert_eq!(first.category, "operational");
    assert_eq!(zone.message_count("operational").await, 1);

    let retry = client.append(env.clone(), f.clone()).await.unwrap();
    assert_eq!(retry.offset, first.offset);
    assert!(retry.duplicate);
    assert_eq!(zone.message_count("operational").await, 1);

    // Same content written differently (whitespace, 5400.0 vs 5400) is the same fact.
    let mut same = f.clone();
    same.object_json = r#"{"duration_s":5400,"n":1,"step":"granulation"}"#.into();
    let retry = client.append(env.clone(), same).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.offset, first.offset);

    let mut different = f.clone();
    different.object_json = r#"{"step":"drying"}"#.into();
    assert_rejected(
        client.append(env.clone(), different).await,
        "already_exists",
        "conflicting_duplicate",
    );
    // Same key, kind routed to another category: still a conflict, nothing stored.
    let audit = fact("document:PlantA/x1", "step_completed", r#"{"a":1}"#);
    assert_rejected(
        client.append(env.clone(), audit).await,
        "already_exists",
        "conflicting_duplicate",
    );
    assert_eq!(zone.message_count("operational").await, 1);
    assert_eq!(zone.message_count("documents").await, 0);

    // A different message_id is a new fact.
    let second = client
        .append(envelope(&mid("idem")), f.clone())
        .await
        .unwrap();
    assert!(!second.duplicate);
    assert!(second.offset > first.offset);
    assert_eq!(zone.message_count("operational").await, 2);

    // Every outcome is a JSON log line naming the RPC, the key and the outcome.
    let key = format!("{}/{}", env.from_zone, env.message_id);
    let ok = zone
        .log_lines_with(
            3,
            &[("rpc", "AppendFact"), ("key", &key), ("outcome", "ok")],
        )
        .await;
    assert_eq!(
        ok.len(),
        3,
        "the first append and its two identical retries answered: {ok:?}"
    );
    assert!(
        ok.iter()
            .all(|l| l["level"] == "INFO" && l["fields"]["elapsed_us"].is_u64()),
        "{ok:?}"
    );
    let duplicates = zone
        .log_lines_with(
            2,
            &[
                ("rpc", "AppendFact"),
                ("key", &key),
                ("outcome", "duplicate"),
            ],
        )
        .await;
    assert_eq!(duplicates.len(), 2, "{duplicates:?}");
    assert!(
        duplicates
            .iter()
            .all(|l| l["fields"]["offset"] == first.offset),
        "a duplicate names the original offset: {duplicates:?}"
    );
    let rejected = zone
        .log_lines_with(
            2,
            &[
                ("rpc", "AppendFact"),
                ("key", &key),
                ("outcome", "rejected"),
                ("reason", "conflicting_duplicate"),
            ],
        )
        .await;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        rejected.iter().all(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&env.message_id))),
        "{rejected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_appends_store_one_fact() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let env = envelope(&mid("conc"));
    let f = batch_fact(7);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, env, f) = (client.clone(), env.clone(), f.clone());
            tokio::spawn(async move { client.append(env, f).await.unwrap() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let offset = results[0].offset;
    assert!(results.iter().all(|r| r.offset == offset), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| !r.duplicate).count(),
        1,
        "exactly one original: {results:?}"
    );
    assert_eq!(zone.message_count("operational").await, 1);
}

/// Concurrent appends of one key whose kinds route to two categories land in
/// the same group-commit batch: exactly one is stored, in one category; every
/// other call is a duplicate of it or a conflicting duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_one_key_across_categories_store_one_fact() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    for round in 0..8 {
        let env = envelope(&mid("cross"));
        let operational = batch_fact(round);
        let audit = fact("document:PlantA/x1", "step_completed", r#"{"a":1}"#);
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (client, env) = (client.clone(), env.clone());
                let f = if i % 2 == 0 {
                    operational.clone()
                } else {
                    audit.clone()
                };
                tokio::spawn(async move { (i % 2, client.append(env, f).await) })
            })
            .collect();
        let mut originals = Vec::new();
        let mut kinds_accepted = std::collections::BTreeSet::new();
        for t in tasks {
            match t.await.unwrap() {
                (kind, Ok(r)) => {
                    kinds_accepted.insert(kind);
                    if !r.duplicate {
                        originals.push(r);
                    }
                }
                (_, Err(e)) => {
                    assert_rejected::<()>(Err(e), "already_exists", "conflicting_duplicate")
                }
            }
        }
        assert_eq!(
            originals.len(),
            1,
            "round {round}: exactly one original: {originals:?}"
        );
        assert_eq!(
            kinds_accepted.len(),
            1,
            "round {round}: only the stored content is answered as a duplicate"
        );
    }
    let stored = zone.message_count("operational").await + zone.message_count("documents").await;
    assert_eq!(stored, 8, "one fact per key across both categories");
}

/// The key index is read back when the node starts: after a restart a key
/// stored in one category is still refused in another, and a new key is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stored_in_one_category_is_refused_in_another_after_restart() {
    let mut zone = Zone::start(Opts::default()).await;
    let env = envelope(&mid("filter"));
    let first = zone
        .client()
        .append(env.clone(), batch_fact(1))
        .await
        .unwrap();
    zone.restart_node(false).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(&zone.metrics_text().await, "bsfg_key_index_ready", &[]) != Some(1.0) {
        assert!(Instant::now() < deadline, "key index not ready within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = zone.client();
    client
        .append(
            envelope(&mid("filter-new")),
            fact("document:PlantA/x1", "step_completed", r#"{"a":1}"#),
        )
        .await
        .unwrap();

    let refused = client
        .append(
            env.clone(),
            fact("document:PlantA/x2", "step_completed", r#"{"a":2}"#),
        )
        .await;
    assert_rejected(refused, "already_exists", "conflicting_duplicate");
    assert_eq!(
        zone.message_count("documents").await,
        1,
        "the key stored in operational is not stored again in documents"
    );
    let again = client.append(env, batch_fact(1)).await.unwrap();
    assert!(again.duplicate && again.offset == first.offset, "{again:?}");
    // The index writer's cost is visible: the fact appended after the
    // restart is committed to the file and counted within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = zone.metrics_text().await;
        let recorded = metric_value(&text, "bsfg_key_index_recorded_facts_total", &[]);
        let seconds = metric_value(&text, "bsfg_key_index_write_seconds_total", &[]);
        // Its size too: the key stored before the restart is in the file
        // (a clean stop merges the buffer), the one after it is buffered in
        // memory; the file holds at least its header and first buckets (1 MiB).
        let entries = metric_value(&text, "bsfg_key_index_entries", &[]);
        let buffered = metric_value(&text, "bsfg_key_index_buffered_facts", &[]);
        let file_bytes = metric_value(&text, "bsfg_key_index_file_bytes", &[]);
        if recorded == Some(1.0)
            && seconds.is_some_and(|s| s > 0.0)
            && metric_value(&text, "bsfg_key_index_staged_facts", &[]) == Some(0.0)
            && entries == Some(1.0)
            && buffered == Some(1.0)
            && file_bytes.is_some_and(|b| b >= f64::from(1u32 << 20))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key index metrics: recorded {recorded:?}, seconds {seconds:?}, entries {entries:?}, buffered {buffered:?}, file bytes {file_bytes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Concurrent appends are group-committed (atomic batches): every answered
/// offset must hold exactly the fact it was given for, retries mixed into a
/// batch are answered as duplicates, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_committed_offsets_point_at_their_own_facts() {
    use buffa::Message as _;
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let envelopes: Vec<_> = (0..96).map(|_| envelope(&mid("gc"))).collect();
    let mut answers = Vec::new();
    for round in 0..2 {
        // Round 1 re-sends the first half (retries) alongside new facts.
        let chosen: Vec<_> = if round == 0 {
            envelopes[..48].to_vec()
        } else {
            envelopes.clone()
        };
        let tasks: Vec<_> = chosen
            .into_iter()
            .enumerate()
            .map(|(i, env)| {
                let client = client.clone();
                tokio::spawn(async move {
                    let r = client
                        .append(env.clone(), batch_fact(i % 48))
                        .await
                        .unwrap();
                    (env.message_id, r)
                })
            })
            .collect();
        for t in tasks {
            answers.push((round, t.await.unwrap()));
        }
    }
    let js = zone.jetstream().await;
    let stream = js.get_stream("facts_operational").await.unwrap();
    let mut originals = std::collections::BTreeMap::new();
    for (round, (message_id, r)) in &answers {
        let stored = stream.direct_get(r.offset).await.unwrap();
        let fact = StoredFact::decode_from_slice(&stored.payload).unwrap();
        assert_eq!(
            &fact.envelope.message_id, message_id,
            "offset {} answered for {message_id} holds another fact",
            r.offset
        );
        if !r.duplicate {
            assert!(
                originals.insert(message_id.clone(), r.offset).is_none(),
                "{message_id} stored twice"
            );
        }
        if *round == 1 && originals.get(message_id).is_some_and(|o| *o != r.offset) {
            panic!(
                "{message_id}: retry answered offset {} instead of {:?}",
                r.offset,
                originals.get(message_id)
            );
        }
    }
    assert_eq!(originals.len(), 96, "every fact stored once");
    assert_eq!(zone.message_count("operational").await, 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_is_ordered_and_bounded_and_confirm_rules_hold() {
    let mut opts = Opts::default();
    let mut batches_only = consumer("batches", "operational");
    batches_only.kinds = vec!["batch".into()];
    opts.consumers.push(batches_only);
    let zone = Zone::start(opts).await;
    let client = zone.client();
    let mut sent = Vec::new();
    for n in 0..10 {
        let (e, f) = (envelope(&mid("ord")), batch_fact(n));
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        sent.push((e, f, r.offset));
    }
    let first = client.fetch("mes", 4, 0, 0).await.unwrap();
    assert_eq!(first.facts.len(), 4, "bounded by limit");
    assert_eq!(first.frontier, 0);
    assert_exactly_once_in_order(&first.facts, &sent[..4]);
    let rest = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&rest.facts, &sent[4..]);

    // Confirm advances the frontier; a retried confirm is harmless.
    assert_eq!(client.confirm("mes", sent[2].2).await.unwrap(), sent[2].2);
    assert_eq!(client.confirm("mes", sent[1].2).await.unwrap(), sent[2].2);
    let again = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_eq!(again.frontier, sent[2].2);
    // Confirm past what was delivered is refused.
    assert_rejected(
        client.confirm("mes", 1000).await,
        "failed_precondition",
        "not_delivered",
    );
    assert_eq!(client.confirm("mes", sent[9].2).await.unwrap(), sent[9].2);

    // Unknown consumer.
    assert_rejected(
        client.fetch("nobody", 1, 0, 0).await,
        "not_found",
        "unknown_consumer",
    );
    assert_rejected(
        client.confirm("nobody", 1).await,
        "not_found",
        "unknown_consumer",
    );

    // An offset that belongs to another consumer (filtered out) is refused.
    let asset = client
        .append(
            envelope(&mid("ord")),
            fact("asset:FILLER-07", "state_changed", r#"{"s":"run"}"#),
        )
        .await
        .unwrap();
    let batch = client
        .append(envelope(&mid("ord")), batch_fact(99))
        .await
        .unwrap();
    let got = fetch_all(&client, "batches", 11).await;
    let offsets: Vec<u64> = got.iter().map(|f| f.offset).collect();
    assert!(
        offsets.contains(&batch.offset) && !offsets.contains(&asset.offset),
        "{offsets:?}"
    );
    assert_rejected(
        client.confirm("batches", asset.offset).await,
        "invalid_argument",
        "not_delivered_to_consumer",
    );
    // An offset the auditor was never delivered.
    client
        .append(
            envelope(&mid("ord")),
            fact("document:x1", "signed", r#"{"by":"qa"}"#),
        )
        .await
        .unwrap();
    assert_rejected(
        client.confirm("auditor", 1).await,
        "failed_precondition",
        "not_delivered",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_facts_come_again_after_restart_and_after_redelivery_timeout() {
    let mut opts = Opts::default();
    opts.consumers[0].redeliver_after = Duration::from_secs(1);
    let mut zone = Zone::start(opts).await;
    let client = zone.client();
    let mut sent = Vec::new();
    for n in 0..3 {
        let (e, f) = (envelope(&mid("redeliver")), batch_fact(n));
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        sent.push((e, f, r.offset));
    }
    let got = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&got.facts, &sent);
    // Not yet due: nothing.
    let none = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert!(
        none.facts.is_empty(),
        "no redelivery before the timeout: {:?}",
        none.facts.len()
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = client.fetch("mes", 100, 0, 1000).await.unwrap();
    assert_exactly_once_in_order(&again.facts, &sent);

    // Confirm the first; restart; the other two come again at once, frontier kept.
    let created = consumer_created(&zone, "mes").await;
    assert_eq!(client.confirm("mes", sent[0].2).await.unwrap(), sent[0].2);
    zone.restart_node(false).await;
    let client = zone.client();
    let after = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_eq!(after.frontier, sent[0].2, "frontier survives a restart");
    assert_exactly_once_in_order(&after.facts, &sent[1..]);
    // A peer restarting from the frontier gets the unconfirmed ones again.
    let request = FetchFactsRequest {
        consumer_name: "mes".into(),
        limit: 100,
        restart_from_frontier: true,
        ..Default::default()
    };
    let restarted = client.fetch_request(request).await.unwrap();
    assert_eq!(restarted.frontier, sent[0].2);
    assert_exactly_once_in_order(&restarted.facts, &sent[1..]);
    assert_eq!(client.confirm("mes", sent[2].2).await.unwrap(), sent[2].2);
    zone.restart_node(false).await;
    let client = zone.client();
    let after = client.fetch("mes", 100, 0, 300).await.unwrap();
    assert!(
        after.facts.is_empty(),
        "confirmed facts are not delivered again"
    );
    assert_eq!(after.frontier, sent[2].2);
    // Replay from the second fact: frontier moves back, the rest comes again.
    let frontier = client
        .reset_consumer("mes", reset_consumer_request::Position::Offset(sent[1].2))
        .await
        .unwrap();
    assert_eq!(
        frontier,
        sent[1].2 - 1,
        "a replay moves the frontier to just before its start"
    );
    let replayed = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&replayed.facts, &sent[1..]);
    // None of this deleted the JetStream consumer: a crash at any moment
    // finds the durable frontier in place.
    assert_eq!(
        consumer_created(&zone, "mes").await,
        created,
        "restarts, restart-from-frontier and replay keep the one JetStream consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_read_ahead_for_a_consumer_that_is_behind_are_served_once_in_order() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let mut sent = Vec::new();
    for n in 0..40 {
        let (e, f) = (envelope(&mid("ahead")), batch_fact(n));
        let r = client.append(e.clone(), f.clone()).await.unwrap();
        sent.push((e, f, r.offset));
    }
    let js = zone.jetstream().await;
    let stream = js.get_stream("facts_operational").await.unwrap();
    // JetStream counts facts read ahead as delivered; the node does not
    // until it serves them.
    let read_ahead_to = |delivered: usize| {
        let stream = stream.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let info = stream.consumer_info("mes").await.unwrap();
                if info.num_ack_pending == delivered {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "expected {delivered} facts delivered by JetStream (served + read ahead): {info:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A consumer that is behind: the node pulls the next batch while the
    // caller handles this one.
    let first = client.fetch("mes", 10, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&first.facts, &sent[..10]);
    read_ahead_to(20).await;
    assert_rejected(
        client.confirm("mes", sent[15].2).await,
        "failed_precondition",
        "not_delivered",
    );
    // A smaller fetch takes part of the read-ahead, a larger one the rest
    // plus what follows it.
    let small = client.fetch("mes", 3, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&small.facts, &sent[10..13]);
    let large = client.fetch("mes", 15, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&large.facts, &sent[13..28]);
    assert_eq!(client.confirm("mes", sent[19].2).await.unwrap(), sent[19].2);
    // Served and unconfirmed: 20..28; read ahead: the remaining 12.
    read_ahead_to(20).await;

    // A restart from the frontier drops the read-ahead and delivers
    // everything unconfirmed again, exactly once.
    let served = client.fetch("mes", 5, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&served.facts, &sent[28..33]);
    let request = FetchFactsRequest {
        consumer_name: "mes".into(),
        limit: 5,
        restart_from_frontier: true,
        ..Default::default()
    };
    let restarted = client.fetch_request(request).await.unwrap();
    assert_exactly_once_in_order(&restarted.facts, &sent[20..25]);
    let rest = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&rest.facts, &sent[25..]);

    // So does a replay while facts are read ahead.
    client
        .reset_consumer("mes", reset_consumer_request::Position::Offset(sent[0].2))
        .await
        .unwrap();
    let head = client.fetch("mes", 10, 0, 0).await.unwrap();
    assert_exactly_once_in_order(&head.facts, &sent[..10]);
    read_ahead_to(20).await;
    let frontier = client
        .reset_consumer("mes", reset_consumer_request::Position::Offset(sent[4].2))
        .await
        .unwrap();
    assert_eq!(frontier, sent[4].2 - 1);
    let replayed = fetch_all(&client, "mes", 36).await;
    assert_exactly_once_in_order(&replayed, &sent[4..]);
    assert_eq!(client.confirm("mes", sent[39].2).await.unwrap(), sent[39].2);
}

/// When the JetStream consumer behind a BSFG consumer was created.
async fn consumer_created(zone: &Zone, name: &str) -> time::OffsetDateTime {
    let stream = zone
        .jetstream()
        .await
        .get_stream("facts_operational")
        .await
        .unwrap();
    stream.consumer_info(name).await.unwrap().created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_each_consumer_is_still_owed() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let pending = |s: &GetStatusResponse| {
        s.consumers
            .iter()
            .find(|c| c.name == "mes")
            .map(|c| (c.pending, c.unconfirmed, c.frontier))
            .unwrap()
    };
    assert_eq!(pending(&client.status().await.unwrap()), (0, 0, 0));
    let mut offsets = Vec::new();
    for n in 0..5 {
        offsets.push(
            client
                .append(envelope(&mid("owed")), batch_fact(n))
                .await
                .unwrap()
                .offset,
        );
    }
    // Nothing fetched yet: all five are owed (what a cut-off puller's
    // backlog looks like on the serving side).
    assert_eq!(pending(&client.status().await.unwrap()), (5, 0, 0));
    let got = client.fetch("mes", 3, 0, 0).await.unwrap();
    assert_eq!(got.facts.len(), 3);
    // Delivered is not confirmed: still owed.
    assert_eq!(pending(&client.status().await.unwrap()), (5, 3, 0));
    client.confirm("mes", offsets[2]).await.unwrap();
    assert_eq!(pending(&client.status().await.unwrap()), (2, 0, offsets[2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_promptly_after_an_append() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let poller = client.clone();
    let waiting = tokio::spawn(async move {
        let r = poller.fetch("mes", 10, 0, 5000).await.unwrap();
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll waits while nothing is there"
    );
    let appended_at = Instant::now();
    let r = client
        .append(envelope(&mid("poll")), batch_fact(1))
        .await
        .unwrap();
    let (fetched, returned_at) = waiting.await.unwrap();
    let latency = returned_at.duration_since(appended_at);
    assert_eq!(fetched.facts.len(), 1);
    assert_eq!(fetched.facts[0].offset, r.offset);
    assert!(
        latency < Duration::from_secs(1),
        "long-poll answered {latency:?} after the append"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_json_is_stored_canonical() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let f = fact(
        "batch:B1",
        "step_completed",
        r#"{ "z": 1.0, "a": {"y": [1.50, "x"], "b": true}, "m": 1e2 }"#,
    );
    client.append(envelope(&mid("canon")), f).await.unwrap();
    let got = client.fetch("mes", 1, 0, 1000).await.unwrap();
    assert_eq!(
        got.facts[0].fact.as_option().unwrap().object_json,
        r#"{"a":{"b":true,"y":[1.5,"x"]},"m":100,"z":1}"#
    );
}

/// A stored object that lost a chunk is never served as if whole: the
/// stream ends with data_loss instead of short or wrong bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_object_refuses_to_serve_a_damaged_object() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let js = zone.jetstream().await;
    let mut stream = js.get_stream(format!("OBJ_{BUCKET}")).await.unwrap();
    let before = stream.info().await.unwrap().state.last_sequence;
    let bytes = pseudo_random_bytes(1024 * 1024 + 7, 9);
    put(
        &client,
        BUCKET,
        "batch/B9/record.bin",
        &bytes,
        &sha256(&bytes),
    )
    .await
    .unwrap();
    let (_, back) = get(&client, BUCKET, "batch/B9/record.bin", 0)
        .await
        .unwrap();
    assert!(back == bytes);
    // The upload's chunks follow `before`; remove the third.
    assert!(stream.delete_message(before + 3).await.unwrap());
    let err = get(&client, BUCKET, "batch/B9/record.bin", 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_loss"), "{err}");
    let err = get(&client, BUCKET, "batch/B9/record.bin", 600_000)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_loss"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_resume_and_refuse_bad_uploads() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let bytes = pseudo_random_bytes(3 * 1024 * 1024 + 12345, 1);
    let digest = sha256(&bytes);
    let put_r = put(&client, BUCKET, "batch/B1/record.bin", &bytes, &digest)
        .await
        .unwrap();
    assert_eq!(put_r.digest, digest);
    assert_eq!(put_r.size_bytes, bytes.len() as u64);
    let (info, back) = get(&client, BUCKET, "batch/B1/record.bin", 0)
        .await
        .unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(info.size_bytes, bytes.len() as u64);
    assert!(back == bytes, "round trip byte for byte");
    let start = 1_000_001;
    let (_, tail) = get(&client, BUCKET, "batch/B1/record.bin", start)
        .await
        .unwrap();
    assert!(
        tail == bytes[start as usize..],
        "resume returns exactly the tail"
    );
    let (_, empty) = get(&client, BUCKET, "batch/B1/record.bin", bytes.len() as u64)
        .await
        .unwrap();
    assert!(empty.is_empty());
    // Chunk and read-window boundaries (128 KiB chunks, 8 per window).
    for start in [131_072u64, 131_071, 1_048_576, 2_097_153] {
        let (_, tail) = get(&client, BUCKET, "batch/B1/record.bin", start)
            .await
            .unwrap();
        assert!(
            tail == bytes[start as usize..],
            "resume from {start} returns exactly the tail"
        );
    }

    // Expected digest mismatch: refused, and nothing is left behind.
    let before = zone.list_bucket(BUCKET).await;
    let chunks_before = zone.bucket_stream_messages(BUCKET).await;
    let wrong = sha256(b"something else");
    assert_rejected(
        put(
            &client,
            BUCKET,
            "batch/B1/bad.bin",
            &bytes[..300_000],
            &wrong,
        )
        .await,
        "invalid_argument",
        "digest_mismatch",
    );
    assert_eq!(
        zone.list_bucket(BUCKET).await,
        before,
        "no object or key left"
    );
    assert!(
        !zone
            .list_bucket(BUCKET)
            .await
            .contains_key("batch/B1/bad.bin")
    );
    // Deleting the blob purges its chunks, leaving only a delete marker.
    assert!(
        zone.bucket_stream_messages(BUCKET).await <= chunks_before + 1,
        "chunks of the rejected upload were removed"
    );
    let r = get(&client, BUCKET, "batch/B1/bad.bin", 0).await;
    assert!(r.unwrap_err().to_string().contains("object_not_found"));
    // A mismatching overwrite of an existing key leaves the old version intact.
    assert_rejected(
        put(&client, BUCKET, "batch/B1/record.bin", b"new", &wrong).await,
        "invalid_argument",
        "digest_mismatch",
    );
    let (_, back) = get(&client, BUCKET, "batch/B1/record.bin", 0)
        .await
        .unwrap();
    assert!(back == bytes);

    // Overwriting an unreferenced key works.
    put(&client, BUCKET, "scratch/a.txt", b"version one", "")
        .await
        .unwrap();
    put(&client, BUCKET, "scratch/a.txt", b"version two!", "")
        .await
        .unwrap();
    let (info, back) = get(&client, BUCKET, "scratch/a.txt", 0).await.unwrap();
    assert_eq!(back, b"version two!");
    assert_eq!(info.digest, sha256(b"version two!"));

    // Once a fact references the object it is immutable.
    let mut f = batch_fact(1);
    f.attachments.push(AttachmentRef {
        bucket: BUCKET.into(),
        key: "batch/B1/record.bin".into(),
        digest: digest.clone(),
        size_bytes: bytes.len() as u64,
        media_type: "application/octet-stream".into(),
        file_name: "record.bin".into(),
        ..Default::default()
    });
    client.append(envelope(&mid("att")), f).await.unwrap();
    assert_rejected(
        put(&client, BUCKET, "batch/B1/record.bin", b"replacement", "").await,
        "failed_precondition",
        "object_immutable",
    );
    let (_, back) = get(&client, BUCKET, "batch/B1/record.bin", 0)
        .await
        .unwrap();
    assert!(back == bytes, "referenced object unchanged");
}

/// PutObject's media type is kept with the object and GetObject returns
/// it (it used to answer "" whatever was declared); a malformed one is
/// refused before any byte is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_keep_their_media_type() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    let put_as = |key: &'static str, media_type: &'static str, bytes: &'static [u8]| {
        let client = client.clone();
        async move {
            let header = PutObjectHeader {
                bucket: BUCKET.into(),
                key: key.into(),
                media_type: media_type.into(),
                ..Default::default()
            };
            client
                .put_object(
                    header,
                    futures::stream::iter(vec![bytes.to_vec()]),
                    Duration::from_secs(60),
                )
                .await
        }
    };
    put_as("batch/B1/record.pdf", "application/pdf", b"%PDF-1.7")
        .await
        .unwrap();
    let (info, back) = get(&client, BUCKET, "batch/B1/record.pdf", 0)
        .await
        .unwrap();
    assert_eq!(
        (info.media_type.as_str(), back.as_slice()),
        ("application/pdf", &b"%PDF-1.7"[..])
    );
    // Also when read from an offset, and with parameters.
    assert_eq!(
        get(&client, BUCKET, "batch/B1/record.pdf", 4)
            .await
            .unwrap()
            .0
            .media_type,
        "application/pdf"
    );
    put_as("batch/B1/notes.txt", "text/plain; charset=utf-8", b"notes")
        .await
        .unwrap();
    assert_eq!(
        get(&client, BUCKET, "batch/B1/notes.txt", 0)
            .await
            .unwrap()
            .0
            .media_type,
        "text/plain; charset=utf-8"
    );
    // A new version carries its own (or none).
    put_as("batch/B1/notes.txt", "text/markdown", b"# notes")
        .await
        .unwrap();
    assert_eq!(
        get(&client, BUCKET, "batch/B1/notes.txt", 0)
            .await
            .unwrap()
            .0
            .media_type,
        "text/markdown"
    );
    put_as("batch/B1/notes.txt", "", b"notes").await.unwrap();
    assert_eq!(
        get(&client, BUCKET, "batch/B1/notes.txt", 0)
            .await
            .unwrap()
            .0
            .media_type,
        ""
    );

    let before = zone.list_bucket(BUCKET).await;
    for bad in ["pdf", "application/pdf\n", "text/plain; charset"] {
        assert_rejected(
            put_as("batch/B1/bad.bin", bad, b"x").await,
            "invalid_argument",
            "bad_media_type",
        );
    }
    let long: &'static str = Box::leak(format!("application/{}", "x".repeat(300)).into_boxed_str());
    assert_rejected(
        put_as("batch/B1/bad.bin", long, b"x").await,
        "invalid_argument",
        "bad_media_type",
    );
    assert_eq!(
        zone.list_bucket(BUCKET).await,
        before,
        "nothing stored by a refused upload"
    );
}

/// A zone whose bucket of 2 MiB holds `first.bin`, 1 MiB (returned).
async fn half_full_bucket() -> (Zone, bsfg::client::BsfgClient, Vec<u8>) {
    let mut opts = Opts::default();
    opts.buckets[0].capacity_bytes = 2 * 1024 * 1024;
    let zone = Zone::start(opts).await;
    let client = zone.client();
    let first = pseudo_random_bytes(1024 * 1024, 1);
    put(&client, BUCKET, "first.bin", &first, &sha256(&first))
        .await
        .unwrap();
    (zone, client, first)
}

/// An upload into a bucket at its capacity is refused as a full bucket
/// (resource_exhausted), not as an unavailable store, with nothing of it
/// left in the bucket: the bucket's earlier objects stay readable, and an
/// upload that fits in the room left is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_into_a_full_bucket_is_refused_as_bucket_full() {
    let (zone, client, first) = half_full_bucket().await;
    let messages_before = zone.bucket_stream_messages(BUCKET).await;
    // Neither declaring its size nor its digest: found too large while
    // streaming.
    let second = pseudo_random_bytes(1536 * 1024, 2);
    let refused = put(&client, BUCKET, "second.bin", &second, "").await;
    assert_rejected(refused, "resource_exhausted", "bucket_full");
    assert!(
        zone.bucket_stream_messages(BUCKET).await <= messages_before + 1,
        "no chunk of the refused upload stays (at most its blob's delete marker)"
    );
    let (_, read) = get(&client, BUCKET, "first.bin", 0).await.unwrap();
    assert!(read == first, "the earlier object is intact");
    let fits = pseudo_random_bytes(768 * 1024, 3);
    put(&client, BUCKET, "fits.bin", &fits, &sha256(&fits))
        .await
        .expect("the room the refused upload would have taken is free");
    assert_eq!(
        zone.orphan_chunk_subjects(BUCKET).await,
        Vec::<String>::new()
    );
}

/// Uploads running at once that together do not fit their bucket: those
/// refused are refused as a full bucket, those stored read back whole, and
/// no chunk stays that no object names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_at_once_into_an_almost_full_bucket_leave_nothing_behind() {
    const UPLOADS: u64 = 4;
    let (zone, client, _) = half_full_bucket().await;
    // Each fits the room left alone; any two together do not.
    let uploads = (0..UPLOADS).map(|i| {
        let (client, bytes) = (client.clone(), pseudo_random_bytes(640 * 1024, 10 + i));
        tokio::spawn(async move {
            let key = format!("side-by-side-{i}.bin");
            let result = put(&client, BUCKET, &key, &bytes, "").await;
            (key, bytes, result)
        })
    });
    let mut stored = 0;
    for upload in uploads.collect::<Vec<_>>() {
        let (key, bytes, result) = upload.await.unwrap();
        match result {
            Ok(_) => {
                stored += 1;
                let (_, read) = get(&client, BUCKET, &key, 0).await.unwrap();
                assert!(read == bytes, "{key} reads back whole");
            }
            Err(e) => assert_rejected(Err::<(), _>(e), "resource_exhausted", "bucket_full"),
        }
    }
    assert!(stored <= 1, "the room held one of them, {stored} stored");
    assert_eq!(
        zone.orphan_chunk_subjects(BUCKET).await,
        Vec::<String>::new()
    );
}
