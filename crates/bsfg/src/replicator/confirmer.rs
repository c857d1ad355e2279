//! The confirmer: confirms to the peer, cumulatively, what is durable
//! here; and the per-link gauges published every second.

use super::link::Link;
use super::{Context, Replicator};
use crate::client::BsfgClient;
use crate::metrics::{Metrics, labels};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Confirms the newest durable offset to the peer. Confirms are cumulative,
/// so targets that arrive while one is in flight collapse into the newest;
/// a failed confirm is retried with backoff (if none succeeds, the peer
/// redelivers and the appends answer as duplicates).
pub(super) async fn confirmer(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut targets: tokio::sync::watch::Receiver<u64>,
) {
    let c = link.config.clone();
    let mut backoff = link.backoff(4);
    let mut confirmed = 0;
    loop {
        let target = *targets.borrow_and_update();
        if target <= confirmed {
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        }
        match client.confirm(&c.consumer, target).await {
            Ok(frontier) => {
                confirmed = target;
                backoff.reset();
                let mut s = link.status.lock().unwrap();
                s.remote_frontier = frontier;
                s.last_confirm_at = Some(Instant::now());
                cx.metrics
                    .frontier_offset
                    .get_or_create(&labels(&[(
                        "consumer",
                        &format!("{}@{}", c.consumer, c.peer),
                    )]))
                    .set(frontier as i64);
            }
            Err(e) => {
                link.status.lock().unwrap().last_error =
                    format!("confirm: {}", e.message.unwrap_or_default());
                backoff.wait().await;
            }
        }
    }
}

/// Publishes per-link age of the last confirmation (a link is healthy only
/// if confirmations keep coming) and the lag, every second: the lag keeps
/// growing while a link is cut, when no fetch or append updates it.
pub async fn publish_confirm_age(replicator: Arc<Replicator>, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        for link in &replicator.links {
            link.refresh_lag(Some(&metrics));
            let age = link
                .status()
                .last_confirm_at
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(f64::INFINITY);
            metrics
                .last_confirm_age_seconds
                .get_or_create(&labels(&[("link", &link.name)]))
                .set(age);
        }
    }
}
