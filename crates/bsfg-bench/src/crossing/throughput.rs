//! Phases (a) and (c): BSFG catch-up of a backlog held at plant-a while its
//! link is cut (one and two hops, loopback and behind the delay), and the
//! steady state with the links up.

use super::Row;
use super::cli::CrossArgs;
use super::load::{append_batched, append_many, tag};
use super::zones::{Zone, count, cpu_per_fact, cpu_snapshot, wait_count};
use async_nats::jetstream;
use bsfg_testkit::faultproxy::FaultProxy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The destination zone's stream of facts crossing `hops` hops.
fn dest<'z>(zones: &'z BTreeMap<&str, Zone>, hops: u8) -> &'z jetstream::Context {
    &zones[if hops == 1 { "idmz" } else { "enterprise" }].js
}

/// The kind and destination zone of facts crossing `hops` hops.
fn kind_to(hops: u8) -> (&'static str, &'static str) {
    let kind = if hops == 1 { "hop1" } else { "hop2" };
    let to = if hops == 1 { "idmz" } else { "enterprise" };
    (kind, to)
}

/// (a)+(c): every catch-up, one row each; returns the one-hop 256 B rates
/// (loopback, behind the delay).
pub(super) async fn catch_up(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    (p1, p2): (&FaultProxy, &FaultProxy),
    delay: Duration,
    timeout: Duration,
    rows: &mut Vec<Row>,
) -> anyhow::Result<(f64, f64)> {
    let mut catchup_1hop_256_loop = 0.0;
    let mut catchup_1hop_256_wan = 0.0;
    let catch_up_runs = [
        (1u8, 256usize, Duration::ZERO),
        (1, 4096, Duration::ZERO),
        (2, 256, Duration::ZERO),
        (2, 4096, Duration::ZERO),
        (1, 256, delay),
        (2, 256, delay),
    ];
    for (hops, size, d) in catch_up_runs.into_iter().filter(|_| !a.only_lag) {
        p1.set_delay(d);
        p2.set_delay(d);
        p1.cut();
        let (rate, row) = catch_up_run(a, zones, p1, hops, size, d, timeout).await?;
        if hops == 1 && size == 256 {
            if d.is_zero() {
                catchup_1hop_256_loop = rate;
            } else {
                catchup_1hop_256_wan = rate;
            }
        }
        rows.push(row);
    }
    p1.set_delay(Duration::ZERO);
    p2.set_delay(Duration::ZERO);
    Ok((catchup_1hop_256_loop, catchup_1hop_256_wan))
}

/// One catch-up, `p1` cut: the backlog appended, then `p1` restored and
/// the arrivals awaited.
async fn catch_up_run(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    p1: &FaultProxy,
    hops: u8,
    size: usize,
    d: Duration,
    timeout: Duration,
) -> anyhow::Result<(f64, Row)> {
    let (src, n) = (&zones["plant-a"].client, a.facts);
    let (kind, to) = kind_to(hops);
    let base = count(dest(zones, hops)).await?;
    let fill = append_many(src, a.concurrency, n, &tag("cu"), kind, to, size).await?;
    let t = Instant::now();
    let cpu_before = cpu_snapshot(zones);
    p1.restore();
    let done = wait_count(dest(zones, hops), base + n, timeout).await?;
    let rate = n as f64 / (done - t).as_secs_f64();
    let rtt = 2 * d.as_millis();
    let cpu = cpu_per_fact(zones, &cpu_before, n, "arrival poller");
    eprintln!(
        "catch-up {hops} hop(s) {size} B RTT {rtt} ms: {rate:.0} facts/s (pre-fill {fill:.0}/s); CPU per fact: {cpu}"
    );
    let row = Row {
        name: format!(
            "BSFG catch-up, {hops} hop(s), {n} × {size} B backlog, {}",
            if d.is_zero() {
                "loopback".to_string()
            } else {
                format!("RTT {rtt} ms per link")
            }
        ),
        rate,
        detail: format!(
            "pre-fill by AppendFact c{}: {fill:.0} facts/s; CPU per fact during the catch-up: {cpu}",
            a.concurrency
        ),
    };
    Ok((rate, row))
}

/// (a) steady state: appends at plant-a with the links up, one row each.
pub(super) async fn steady_state(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    timeout: Duration,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let (src, n) = (&zones["plant-a"].client, a.facts);
    for (hops, size) in [(1u8, 256usize), (1, 4096), (2, 256), (2, 4096)]
        .into_iter()
        .filter(|_| !a.only_lag)
    {
        let (kind, to) = kind_to(hops);
        let base = count(dest(zones, hops)).await?;
        let t = Instant::now();
        let offered = match a.append_batch {
            0 => append_many(src, a.concurrency, n, &tag("ss"), kind, to, size).await?,
            batch => {
                let shape = (a.concurrency, batch);
                append_batched(src, shape, n, &tag("ss"), (kind, to), size).await?
            }
        };
        let done = wait_count(dest(zones, hops), base + n, timeout).await?;
        let rate = n as f64 / (done - t).as_secs_f64();
        eprintln!(
            "steady {hops} hop(s) {size} B: {rate:.0} facts/s delivered (appended at {offered:.0}/s)"
        );
        rows.push(Row {
            name: format!(
                "BSFG steady state, {hops} hop(s), {size} B, {n} facts appended {} while links are up",
                load_shape(a)
            ),
            rate,
            detail: format!("source append rate {offered:.0} facts/s; rate = facts / (first append → last arrival)"),
        });
    }
    Ok(())
}

/// How the steady-state load is appended: AppendFact c64, or AppendFacts
/// c4 × 64 (requests in flight × facts per request).
fn load_shape(a: &CrossArgs) -> String {
    match a.append_batch {
        0 => format!("by AppendFact c{}", a.concurrency),
        batch => format!("by AppendFacts c{} × {batch}", a.concurrency),
    }
}
