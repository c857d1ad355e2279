//! Phase (e): a backlog held at idmz while its link to enterprise is cut,
//! then drained; every node's peak memory during the drain alone.

use super::cli::CrossArgs;
use super::load::{append_many, tag};
use super::zones::{Zone, count, reset_peak_rss, wait_count};
use bsfg_testkit::faultproxy::FaultProxy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The drain's rate and the pre-fill's (facts/s), `None` if skipped.
pub(super) async fn backlog_run(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    p2: &FaultProxy,
    timeout: Duration,
) -> anyhow::Result<Option<(f64, f64)>> {
    if a.backlog_facts == 0 || a.only_lag {
        return Ok(None);
    }
    p2.cut();
    let ent = &zones["enterprise"].js;
    let base = count(ent).await?;
    let fill = append_many(
        &zones["plant-a"].client,
        a.concurrency,
        a.backlog_facts,
        &tag("bl"),
        "hop2",
        "enterprise",
        256,
    )
    .await?;
    // idmz receives them while its link to enterprise is cut.
    // Every node's VmHWM shows the peak of the drain alone (the
    // pre-fill's 64 concurrent appends at plant-a excluded).
    reset_peak_rss(zones);
    let t = Instant::now();
    p2.restore();
    let done = wait_count(ent, base + a.backlog_facts, timeout).await?;
    let rate = a.backlog_facts as f64 / (done - t).as_secs_f64();
    eprintln!(
        "backlog drain idmz→enterprise {} facts: {rate:.0} facts/s (pre-fill {fill:.0}/s)",
        a.backlog_facts
    );
    Ok(Some((rate, fill)))
}
