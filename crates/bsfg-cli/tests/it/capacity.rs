//! Capacity: a full category refuses appends (never evicts unconfirmed
//! facts), and accepts again once consumers confirm and retention truncates.

use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_category_refuses_then_recovers_after_confirm_and_retention() {
    let mut opts = Opts::default();
    opts.categories[0].capacity_bytes = 256 * 1024;
    opts.categories[0].fill_threshold_percent = 80;
    opts.categories[0].retain_fill_percent = 50;
    opts.retention_interval = Duration::from_millis(200);
    let zone = Zone::start(opts).await;
    let client = zone.client();
    let payload = "x".repeat(2000);
    let make = |i: usize| {
        fact(
            &format!("batch:B{i}"),
            "sample_recorded",
            &format!(r#"{{"i":{i},"pad":"{payload}"}}"#),
        )
    };

    let mut sent = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let e = envelope(&mid("cap"));
        let f = make(i);
        match client.append(e.clone(), f.clone()).await {
            Ok(r) => {
                assert!(!r.duplicate);
                sent.push((e, f, r.offset));
            }
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let err = refusal.expect("appends must be refused before 400 x 2 KiB fit in 256 KiB");
    assert_eq!(err.code.as_str(), "resource_exhausted", "{err:?}");
    assert!(
        err.message
            .clone()
            .unwrap_or_default()
            .starts_with("category_full"),
        "{err:?}"
    );
    assert!(
        sent.len() > 50,
        "the threshold is 80% of 256 KiB, refused after only {} facts",
        sent.len()
    );
    let count_when_full = zone.message_count("operational").await;
    assert_eq!(count_when_full, sent.len() as u64);

    // Still full after retention passes: nothing is confirmed, nothing may
    // go. The fill the node refused at is an estimate that errs toward full
    // (bytes appended while a stream report was in flight count twice until
    // the next report), so right at the threshold the next exact report may
    // admit one more fact; never more than two.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut admitted_after_report = 0;
    loop {
        let (e, f) = (envelope(&mid("cap")), make(9000 + admitted_after_report));
        match client.append(e.clone(), f.clone()).await {
            Ok(r) => {
                admitted_after_report += 1;
                assert!(
                    admitted_after_report <= 2,
                    "a full category admitted {admitted_after_report} facts after a retention pass"
                );
                sent.push((e, f, r.offset));
            }
            Err(err) => {
                assert_eq!(
                    (
                        err.code.as_str(),
                        err.message
                            .clone()
                            .unwrap_or_default()
                            .starts_with("category_full")
                    ),
                    ("resource_exhausted", true),
                    "{err:?}"
                );
                break;
            }
        }
    }
    let count_when_full = count_when_full + admitted_after_report as u64;
    assert_eq!(
        zone.message_count("operational").await,
        count_when_full,
        "no unconfirmed fact evicted"
    );
    // A retry of a stored fact is still answered while full.
    let r = client
        .append(sent[3].0.clone(), sent[3].1.clone())
        .await
        .unwrap();
    assert!(r.duplicate);
    assert_eq!(r.offset, sent[3].2);

    // Every acknowledged fact is there, exactly once, in order.
    let fetched = fetch_all(&client, "mes", sent.len()).await;
    assert_exactly_once_in_order(&fetched, &sent);
    let last = sent.last().unwrap().2;
    assert_eq!(client.confirm("mes", last).await.unwrap(), last);

    // Retention truncates the confirmed prefix; appends are accepted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let accepted = loop {
        match client
            .append(envelope(&mid("cap-after")), make(10_000))
            .await
        {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code.as_str(), "resource_exhausted", "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still refused 10 s after everything was confirmed: {e:?}"),
        }
    };
    assert!(accepted.offset > last);
    assert!(
        zone.message_count("operational").await < count_when_full,
        "retention truncated confirmed facts"
    );
    let next = client.fetch("mes", 10, 0, 1000).await.unwrap();
    assert_eq!(next.facts.len(), 1);
    assert_eq!(next.facts[0].offset, accepted.offset);
}
