//! Phase (d): the two-hop lag, plant-a append to enterprise append, of
//! facts offered in an open loop at a fixed rate (and at a lower one).

use super::cli::CrossArgs;
use super::load::{envelope, fact, tag};
use super::zones::{Zone, count, cpu_per_fact, cpu_snapshot, wait_count};
use crate::object_json;
use crate::stats::pct_ms;
use async_nats::jetstream;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::StoredFact;
use buffa::Message as _;
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One lag run: appends that succeeded, appends offered, seconds spent
/// offering them, and the lag's p50, p99 and maximum (ms).
pub(super) type LagRun = (u64, u64, f64, f64, f64, f64);

/// The lag at `--lag-rate` with each process's CPU per fact meanwhile, and
/// at `--lag-low-rate` (unless 0).
pub(super) async fn lag_runs(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    timeout: Duration,
) -> anyhow::Result<(LagRun, String, Option<LagRun>)> {
    let src = &zones["plant-a"].client;
    let cpu_before = cpu_snapshot(zones);
    let lag = lag_run(
        src,
        &zones["enterprise"].js,
        a.lag_rate,
        a.lag_secs,
        timeout,
    )
    .await?;
    let lag_cpu = cpu_per_fact(zones, &cpu_before, lag.0, "load generator");
    eprintln!(
        "CPU per fact during the lag run at {} facts/s: {lag_cpu}",
        a.lag_rate
    );
    let lag_low = if a.lag_low_rate > 0.0 {
        Some(
            lag_run(
                src,
                &zones["enterprise"].js,
                a.lag_low_rate,
                a.lag_secs,
                timeout,
            )
            .await?,
        )
    } else {
        None
    };
    Ok((lag, lag_cpu, lag_low))
}

async fn lag_run(
    src: &BsfgClient,
    ent: &jetstream::Context,
    rate: f64,
    secs: f64,
    timeout: Duration,
) -> anyhow::Result<LagRun> {
    let base_seq = ent
        .get_stream("facts_operational")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let base = count(ent).await?;
    let total = (rate * secs) as u64;
    let (ok, offered_secs) = offer(src, rate, total).await?;
    wait_count(ent, base + ok, timeout).await?;
    let (mut lags_us, mut first_hop_us) = read_lags(ent, base_seq, ok).await?;
    lags_us.sort_unstable();
    first_hop_us.sort_unstable();
    let (p50, p99, max) = (
        pct_ms(&lags_us, 50.0),
        pct_ms(&lags_us, 99.0),
        pct_ms(&lags_us, 100.0),
    );
    eprintln!(
        "lag two hops at {} facts/s offered: {ok} ok, p50 {p50} ms p99 {p99} ms max {max} ms (first hop plant-a → idmz: p50 {} ms p99 {} ms)",
        rate,
        pct_ms(&first_hop_us, 50.0),
        pct_ms(&first_hop_us, 99.0)
    );
    Ok((ok, total, offered_secs, p50, p99, max))
}

/// Appends `total` two-hop facts at plant-a, one every 1/`rate` s (at most
/// 4096 in flight); returns how many succeeded and the seconds the
/// schedule took.
async fn offer(src: &BsfgClient, rate: f64, total: u64) -> anyhow::Result<(u64, f64)> {
    let payload = Arc::new(object_json(256));
    let t0 = tokio::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4096));
    let lagtag = tag("lag");
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let permit = sem.clone().acquire_owned().await?;
        let (client, payload, lagtag) = (src.clone(), payload.clone(), lagtag.clone());
        handles.push(tokio::spawn(async move {
            let r = client
                .append(
                    envelope(&lagtag, i, "enterprise"),
                    fact("hop2", i, &payload),
                )
                .await;
            drop(permit);
            r.is_ok()
        }));
    }
    let offered_secs = t0.elapsed().as_secs_f64();
    let mut ok = 0u64;
    for h in handles {
        ok += u64::from(h.await?);
    }
    Ok((ok, offered_secs))
}

/// Reads the `ok` arrivals after `base_seq` back from enterprise's stream:
/// each one's lag (enterprise append − plant-a append) and first hop
/// (idmz append − plant-a append), in µs.
async fn read_lags(
    ent: &jetstream::Context,
    base_seq: u64,
    ok: u64,
) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    // Read the arrivals back and compute enterprise append − plant-a append.
    let mut lags_us: Vec<u32> = Vec::new();
    let mut first_hop_us: Vec<u32> = Vec::new();
    let consumer = ent
        .get_stream("facts_operational")
        .await?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: base_seq + 1,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while (lags_us.len() as u64) < ok {
        let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? else {
            break;
        };
        let m = m?;
        let sf = StoredFact::decode_from_slice(&m.payload)?;
        let origin = sf
            .provenance
            .hops
            .first()
            .map(|h| h.appended_at_unix_ms)
            .unwrap_or(sf.appended_at_unix_ms);
        let relay = sf
            .provenance
            .hops
            .get(1)
            .map(|h| h.appended_at_unix_ms)
            .unwrap_or(origin);
        lags_us.push(((sf.appended_at_unix_ms - origin).max(0) * 1000) as u32);
        first_hop_us.push(((relay - origin).max(0) * 1000) as u32);
    }
    Ok((lags_us, first_hop_us))
}
