//! A FetchFacts the client repeats on the next node (failover) after an
//! attempt that was served but whose answer never came: the repeat asks
//! for `restart_from_frontier`, so it delivers again what the lost answer
//! held, and no later confirm covers facts the caller never saw.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_testkit::faultproxy::FaultProxy;
use std::time::Duration;

/// One-way delay of the proxy in front of the node: its answers arrive
/// after the client's call deadline, its requests well before.
const PROXY_DELAY: Duration = Duration::from_millis(1000);
/// The client's call deadline.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_repeated_after_a_lost_answer_delivers_what_that_answer_held() {
    let zone = Zone::start(Opts {
        plaintext_dev: true,
        ..Default::default()
    })
    .await;
    let ids: Vec<String> = (0..5).map(|_| mid("lost-answer")).collect();
    for (i, id) in ids.iter().enumerate() {
        zone.client()
            .append(envelope(id), batch_fact(i))
            .await
            .unwrap();
    }
    // The first URL reaches the node through the slow proxy, the second
    // directly: the first attempt is served, its answer lost to the
    // deadline, and the call moves on to the second.
    let proxy = FaultProxy::start(zone.boundary_addr).await.unwrap();
    proxy.set_delay(PROXY_DELAY);
    let urls = format!("http://{},{}", proxy.addr, zone.url());
    let client = BsfgClient::connect(&urls)
        .unwrap()
        .with_call_timeout(CALL_TIMEOUT);
    let answer = client.fetch("mes", 100, 0, 0).await.unwrap();
    assert!(
        proxy.bytes().0 > 0,
        "the first attempt went through the proxy"
    );
    let got: Vec<String> = answer
        .facts
        .iter()
        .map(|f| f.envelope.message_id.clone())
        .collect();
    assert_eq!(got, ids, "the repeat delivers what the lost answer held");
}
