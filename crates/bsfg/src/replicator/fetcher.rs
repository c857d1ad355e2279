//! The fetcher: long-polls the peer's `FetchFacts` and hands each batch to
//! the screener, up to `batches_ahead_max` of them in flight; records the peer
//! side's mode, the backlog and the lag.

use super::Context;
use super::link::{Link, LinkMode};
use crate::client::BsfgClient;
use bsfg_proto::bsfg::v1::__buffa::view::FetchFactsResponseView;
use bsfg_proto::bsfg::v1::FetchFactsRequest;
use buffa::view::OwnedView;
use connectrpc::ConnectError;
use std::sync::Arc;
use std::time::Instant;

/// A FetchFacts answer as received.
pub(super) type Batch = OwnedView<FetchFactsResponseView<'static>>;

/// How often a standby node's link looks whether its node became the
/// zone's writer.
const STANDBY_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits while this node is not its zone's writer (a standby of a zone of
/// several, `[ha]`): only the writer pulls from the zone's peers, so two
/// nodes never share a peer's consumer. Returns whether it waited.
async fn wait_while_standby(cx: &Context) -> bool {
    let mut waited = false;
    while !cx.store.facts.gate().is_open() {
        waited = true;
        tokio::time::sleep(STANDBY_POLL_INTERVAL).await;
    }
    waited
}

/// Long-polls the peer, one fetch after another, and passes each answer
/// that delivered something to the screener; a failed fetch is retried
/// with backoff, from the peer's frontier.
pub(super) async fn fetcher(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    batches: tokio::sync::mpsc::Sender<Batch>,
) {
    let c = &link.config;
    let mut backoff = link.backoff(1);
    // Confirms are cumulative: facts delivered before this fetcher started,
    // or in a response lost with a failed call, were never appended here
    // and must be delivered again before a later confirm could cover them.
    let mut restart_from_frontier = true;
    loop {
        if wait_while_standby(&cx).await {
            // Another node of this zone may have pulled meanwhile.
            restart_from_frontier = true;
        }
        let request = FetchFactsRequest {
            consumer_name: c.consumer.clone(),
            limit: c.batch_facts_max,
            max_bytes: c.batch_bytes_max,
            wait_ms: u32::try_from(c.wait.as_millis()).unwrap_or(u32::MAX),
            restart_from_frontier,
            ..Default::default()
        };
        {
            // A poll counts as "caught up while in time" only right after an
            // answer: one sent after a failure (a cut link being retried) has
            // not reached the peer yet, and the lag keeps growing meanwhile.
            let mut f = link.freshness.lock().unwrap();
            if f.drained && !restart_from_frontier {
                f.polling_since_ms = Some(crate::store::now_unix_ms());
            }
        }
        let fetched = client.fetch_view(request).await;
        link.freshness.lock().unwrap().polling_since_ms = None;
        match fetched {
            Ok(batch) => {
                restart_from_frontier = false;
                backoff.reset();
                let caught_up = record_answer(&link, &cx, &batch);
                if caught_up {
                    continue;
                }
                let linger = lingers_after(&batch, c.batch_facts_max);
                if batches.send(batch).await.is_err() {
                    return;
                }
                if linger {
                    tokio::time::sleep(c.linger).await;
                }
            }
            Err(e) => {
                restart_from_frontier = true;
                record_failure(&link, &cx, &e);
                backoff.wait().await;
            }
        }
    }
}

/// Whether the next fetch should linger after `batch`: it drained the
/// peer (no backlog left) with fewer than half the facts a fetch may take,
/// so facts are arriving one by one and the next fetch would bring one
/// again. A peer with a backlog is fetched from at once.
fn lingers_after(batch: &Batch, batch_facts_max: u32) -> bool {
    let answer = batch.reborrow();
    answer.backlog == 0 && (answer.facts.len() as u64) < u64::from(batch_facts_max / 2)
}

/// Records what an answer shows: the lag's inputs (its facts' times), the
/// peer side's mode and the backlog. Returns whether the link was caught up
/// (no facts, nothing delivered past the frontier: nothing to pass on).
fn record_answer(link: &Link, cx: &Context, batch: &Batch) -> bool {
    let c = &link.config;
    let answer = batch.reborrow();
    let caught_up = answer.last_delivered_offset <= answer.frontier && answer.facts.is_empty();
    {
        // The facts' times are the peer's clock: on ours, less the skew.
        let skew_ms = link.record_peer_clock(answer.answered_at_unix_ms, cx);
        let now = crate::store::now_unix_ms();
        let times: Vec<i64> = answer
            .facts
            .iter()
            .filter_map(|f| {
                f.provenance
                    .as_option()
                    .and_then(|p| p.hops.last())
                    .map(|h| h.appended_at_unix_ms - skew_ms)
            })
            .collect();
        let mut f = link.freshness.lock().unwrap();
        f.answered_ms = now;
        f.drained = answer.backlog == 0;
        f.newest_fetched_ms = times.iter().copied().max().or(f.newest_fetched_ms);
        if !caught_up {
            f.in_pipeline
                .push_back(times.first().copied().unwrap_or(now));
        }
    }
    let mode = if answer.backlog > u64::from(c.batch_facts_max) {
        LinkMode::Reconciliation
    } else {
        LinkMode::Normal
    };
    link.set_mode(mode, &cx.metrics);
    {
        let mut s = link.status.lock().unwrap();
        s.backlog = answer.backlog;
        s.backlog_reported_at = Some(Instant::now());
        if s.local_stall.is_none() {
            s.last_error.clear();
        }
    }
    link.refresh_lag(Some(&cx.metrics));
    caught_up
}

/// Records a failed fetch: the peer counts as unreachable.
fn record_failure(link: &Link, cx: &Context, e: &ConnectError) {
    let c = &link.config;
    link.set_mode(LinkMode::Autonomous, &cx.metrics);
    link.status.lock().unwrap().last_error = format!(
        "{}: {}",
        e.code.as_str(),
        e.message.clone().unwrap_or_default()
    );
    tracing::debug!(link = %c.peer, error = ?e, "fetch failed; backing off");
    link.refresh_lag(Some(&cx.metrics));
}

#[cfg(test)]
mod tests {
    use super::*;
    use bsfg_proto::bsfg::v1::{FetchFactsResponse, StoredFact};
    use buffa::Message as _;

    fn answer(facts: usize, backlog: u64) -> Batch {
        let response = FetchFactsResponse {
            facts: (1..=facts as u64)
                .map(|offset| StoredFact {
                    offset,
                    ..Default::default()
                })
                .collect(),
            backlog,
            ..Default::default()
        };
        Batch::decode(response.encode_to_vec().into()).unwrap()
    }

    #[test]
    fn only_a_small_batch_that_drained_the_peer_lingers() {
        assert!(lingers_after(&answer(1, 0), 1000));
        assert!(lingers_after(&answer(499, 0), 1000));
        assert!(
            !lingers_after(&answer(500, 0), 1000),
            "half a batch or more"
        );
        assert!(!lingers_after(&answer(1, 7), 1000), "the peer has more");
    }
}
