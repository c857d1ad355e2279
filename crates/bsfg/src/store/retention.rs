//! Retention and capacity accounting, per category.
//!
//! JetStream's own `max_age` would delete facts a consumer has not confirmed,
//! so the node truncates instead: it purges only below the lowest frontier of
//! the category's consumers, by age (older than `max_age`) and by fill
//! (above `retain_fill_percent`). Facts past their age that are still
//! unconfirmed stay, and raise `bsfg_retention_blocked` instead.
//!
//! Ages are the store's: a fact's stored time against the store's now
//! (plus the forward steps of its clock), see [`super::clock`]; this node's
//! wall clock plays no part.

use super::clock::StoreClock;
use super::facts::Category;
use super::{Consumers, FactLog};
use crate::metrics::{Metrics, labels};
use bsfg_domain::retention::{LogState, truncation};
use std::sync::Arc;
use std::time::Duration;

/// One retention pass over every category. Returns facts purged.
pub async fn run_once(
    client: &async_nats::Client,
    facts: &FactLog,
    consumers: &Consumers,
    clock: &StoreClock,
    metrics: &Metrics,
) -> anyhow::Result<u64> {
    let mut purged_total = 0;
    let mut store_now = None;
    for category in facts.categories() {
        // One reading of the store's clock per pass.
        let now = match store_now {
            Some(now) => now,
            None => *store_now.insert(clock.now(client, &category.stream_name()).await?),
        };
        // Facts stored before a forward step of the store's clock look older
        // than they are by that much.
        let now_judged = now - time::Duration::milliseconds(clock.forward_steps_ms());
        purged_total += retain(client, category, consumers, now_judged, metrics).await?;
    }
    Ok(purged_total)
}

/// One category: what age and fill allow is purged, then its gauges are
/// set. Returns facts purged.
async fn retain(
    client: &async_nats::Client,
    category: &Category,
    consumers: &Consumers,
    now_judged: time::OffsetDateTime,
    metrics: &Metrics,
) -> anyhow::Result<u64> {
    let state = category.report_state().await?;
    let name = category.config.name.as_str();
    // Everything at or below this offset is confirmed by all consumers.
    let confirmed_through = consumers
        .lowest_frontier(name)
        .unwrap_or(state.last_sequence);
    let first_young = first_young(client, category, &state, now_judged).await?;
    let log = LogState {
        first_offset: state.first_sequence,
        last_offset: state.last_sequence,
        facts: state.messages,
        bytes: state.bytes,
    };
    let retain_bytes =
        category.config.capacity_bytes * u64::from(category.config.retain_fill_percent) / 100;
    let decision = truncation(log, first_young, confirmed_through, retain_bytes);
    if decision.blocked {
        tracing::warn!(
            category = name,
            wanted_below = decision.wanted_below,
            confirmed_through,
            "retention is holding facts that a consumer has not confirmed"
        );
    }
    let mut purged = 0;
    if decision.purge_below > state.first_sequence {
        // The purge below relies on it: no unconfirmed fact goes.
        decision.assert_invariants(log, confirmed_through);
        let response = category
            .stream
            .purge()
            .sequence(decision.purge_below)
            .await?;
        purged = response.purged;
        category.report_state().await?;
        tracing::info!(
            category = name,
            purged,
            below = decision.purge_below,
            "retention truncated confirmed facts"
        );
    }
    let age_seconds =
        oldest_unconfirmed_age_seconds(category, &state, confirmed_through, now_judged).await;
    set_gauges(category, metrics, age_seconds, decision.blocked);
    Ok(purged)
}

/// The first offset younger than the category's `max_age` (the log's end
/// when every fact is older).
async fn first_young(
    client: &async_nats::Client,
    category: &Category,
    state: &async_nats::jetstream::stream::State,
    now_judged: time::OffsetDateTime,
) -> anyhow::Result<u64> {
    let max_age = time::Duration::try_from(category.config.max_age).unwrap_or(time::Duration::MAX);
    let cutoff = now_judged - max_age;
    if state.messages > 0 && state.first_timestamp < cutoff {
        first_sequence_at_or_after(client, &category.stream_name(), cutoff, state.last_sequence)
            .await
    } else {
        Ok(state.first_sequence)
    }
}

/// How long the oldest unconfirmed fact has been stored (0 when every fact
/// is confirmed, or it cannot be read).
async fn oldest_unconfirmed_age_seconds(
    category: &Category,
    state: &async_nats::jetstream::stream::State,
    confirmed_through: u64,
    now_judged: time::OffsetDateTime,
) -> f64 {
    if confirmed_through >= state.last_sequence {
        return 0.0;
    }
    match category.stream.direct_get(confirmed_through + 1).await {
        Ok(m) => (now_judged - m.time).as_seconds_f64().max(0.0),
        Err(_) => 0.0,
    }
}

/// The category's fill, its oldest unconfirmed fact's age, and the
/// retention alarm, which fires before facts reach their age, not only
/// after.
fn set_gauges(category: &Category, metrics: &Metrics, age_seconds: f64, blocked: bool) {
    let lbl = labels(&[("category", category.config.name.as_str())]);
    metrics
        .store_buffer_fill_percent
        .get_or_create(&lbl)
        .set(category.fill_percent());
    metrics
        .oldest_unconfirmed_age_seconds
        .get_or_create(&lbl)
        .set(age_seconds);
    let near_age_limit = age_seconds >= 0.9 * category.config.max_age.as_secs_f64();
    metrics
        .retention_blocked
        .get_or_create(&lbl)
        .set(i64::from(blocked || near_age_limit));
}

/// The first sequence whose fact was stored at or after `cutoff`.
pub(crate) async fn first_sequence_at_or_after(
    client: &async_nats::Client,
    stream_name: &str,
    cutoff: time::OffsetDateTime,
    last_sequence: u64,
) -> anyhow::Result<u64> {
    // Direct get by start time (async-nats has no builder method for it).
    let body = serde_json::json!({ "start_time": cutoff.format(&time::format_description::well_known::Rfc3339)? });
    let reply = client
        .request(
            format!("$JS.API.DIRECT.GET.{stream_name}"),
            serde_json::to_vec(&body)?.into(),
        )
        .await?;
    let sequence = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Sequence"))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    // No sequence (404): nothing that young, every fact is older than max_age.
    Ok(sequence.unwrap_or(last_sequence + 1))
}

/// Runs retention forever at the configured interval.
pub async fn run(
    client: async_nats::Client,
    facts: Arc<FactLog>,
    consumers: Arc<Consumers>,
    clock: Arc<StoreClock>,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = run_once(&client, &facts, &consumers, &clock, &metrics).await {
            tracing::warn!(error = %e, "retention pass failed; will retry");
        }
    }
}
