//! Clocks that disagree: a node whose wall clock is stepped an hour from its
//! store's and its peers' (libfaketime on the `bsfg serve` process; its
//! monotonic clock and the nats-servers keep the machine's time). Skipped,
//! with the reason printed, where libfaketime is not installed.

use crate::crossing::{Site, SiteOpts};
use crate::harness::*;
use bsfg_proto::bsfg::v1::reset_consumer_request::Position;
use std::time::{Duration, Instant};

const HOUR_S: f64 = 3600.0;

/// Waits until the node exports a skew against `against`; returns it.
async fn skew_exported(metrics: impl AsyncFn() -> String, against: &str) -> f64 {
    let label = format!("against=\"{against}\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(skew) = metric_value(&metrics().await, "bsfg_clock_skew_seconds", &[&label]) {
            return skew;
        }
        assert!(
            Instant::now() < deadline,
            "no clock skew against {against} exported"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the node an hour ahead of its nats-server and `max_age` 30 min,
/// retention keeps every young fact (confirmed or not: a replay returns
/// them), raises no retention alarm, and the node says its clock is off
/// (metric, status, WARN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_an_hour_ahead_of_its_store_purges_nothing_young_and_says_so() {
    let Some(node_env) = faketime("+1h") else {
        return;
    };
    let mut operational = category("operational", &[], true);
    operational.max_age = Duration::from_secs(30 * 60);
    let zone = Zone::start(Opts {
        categories: vec![
            operational,
            category("audit", &["audit"], false),
            category("documents", &["document"], false),
        ],
        retention_interval: Duration::from_millis(500),
        out_of_process: true,
        node_env,
        ..Opts::default()
    })
    .await;
    let client = zone.client();
    for n in 0..15 {
        client
            .append(envelope(&mid("young")), batch_fact(n))
            .await
            .unwrap();
    }
    let fetched = client.fetch("mes", 10, 0, 0).await.unwrap();
    assert_eq!(fetched.facts.len(), 10);
    client
        .confirm("mes", fetched.last_delivered_offset)
        .await
        .unwrap();

    let skew = skew_exported(async || zone.metrics_text().await, "store").await;
    assert!(
        (skew + HOUR_S).abs() < 60.0,
        "the store is an hour behind: {skew}"
    );
    // Several retention passes after the skew was seen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        zone.message_count("operational").await,
        15,
        "no young fact purged, confirmed or not; log: {}",
        zone.log_text()
    );
    let metrics = zone.metrics_text().await;
    let category = "category=\"operational\"";
    assert_eq!(
        metric_value(&metrics, "bsfg_retention_blocked", &[category]),
        Some(0.0),
        "no alarm for facts seconds old"
    );
    let age = metric_value(&metrics, "bsfg_oldest_unconfirmed_age_seconds", &[category]).unwrap();
    assert!(
        age < 60.0,
        "the oldest unconfirmed fact is seconds old: {age}"
    );

    let status = client.status().await.unwrap();
    assert!(
        (status.store_clock_skew_seconds + HOUR_S).abs() < 60.0,
        "{status:?}"
    );
    assert_eq!(status.clock_skew_max_seconds, 10.0);
    let table = bsfg_cli::status_table::render_status(&status);
    assert!(table.contains("clock: the store's clock is -36"), "{table}");
    assert!(
        zone.log_text().contains("disagrees with its store"),
        "{}",
        zone.log_text()
    );
    client
        .reset_consumer("mes", Position::Offset(1))
        .await
        .unwrap();
    let replayed = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert_eq!(replayed.facts.len(), 15, "a replay returns every fact");
}

/// The receiving zone an hour ahead of its peers: its links see the peer's
/// clock an hour behind (status, metric), and the lag of facts that arrive
/// in seconds stays seconds, in the gauge and its high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_an_hour_ahead_of_its_peer_reports_the_skew_and_a_true_lag() {
    let Some(env) = faketime("+1h") else { return };
    let site = Site::start_with(SiteOpts {
        out_of_process: true,
        node_env: Some(("idmz", env)),
        ..Default::default()
    })
    .await;
    let ids: Vec<String> = (0..5).map(|_| mid("skewed")).collect();
    for (n, id) in ids.iter().enumerate() {
        site.append("plant-a", "enterprise", id, batch_fact(n))
            .await;
    }
    site.wait_for("enterprise", &ids, Duration::from_secs(30))
        .await;
    let idmz = &site.zones["idmz"];
    let skew = skew_exported(async || idmz.metrics_text().await, "plant-a").await;
    assert!(
        (skew + HOUR_S).abs() < 60.0,
        "plant-a is an hour behind idmz: {skew}"
    );
    let link = idmz
        .app
        .status()
        .await
        .unwrap()
        .links
        .into_iter()
        .find(|l| l.peer == "plant-a")
        .unwrap();
    assert!(
        (link.peer_clock_skew_seconds + HOUR_S).abs() < 60.0,
        "{link:?}"
    );
    assert!(
        link.lag_seconds_high_watermark < 60.0,
        "facts that crossed in seconds: {link:?}"
    );
    let metrics = idmz.metrics_text().await;
    let watermark = metric_value(
        &metrics,
        "bsfg_replication_lag_high_watermark",
        &["link=\"plant-a\""],
    )
    .unwrap();
    assert!(watermark < 60.0, "{watermark}");
    assert!(
        idmz.log_text().contains("the peer's clock disagrees"),
        "{}",
        idmz.log_text()
    );
}
