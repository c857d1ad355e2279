//! Phases 6 and 7 of the site demo: idmz ⇄ enterprise cut while the plants
//! keep appending, then restored, the backlog replayed and drained.

use super::site::{DemoSite, PARTITION, Proxies};
use super::{envelope_for, fact_of, status};
use bsfg::client::BsfgClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Pause between two appends of one producer while the link is cut.
const APPEND_EVERY: Duration = Duration::from_millis(2);
/// Concurrent producers per plant while the link is cut.
const PRODUCERS_PER_PLANT: usize = 3;

/// Acknowledged appends so far, per plant.
pub(super) type Counters = BTreeMap<&'static str, Arc<AtomicU64>>;

/// Phase 6: cuts the link, lets the plants append for [`PARTITION`] while
/// a table shows what piles up where, then shows `bsfg status`. Returns the
/// message ids appended, per plant.
pub(super) async fn cut_and_append(
    site: &DemoSite,
    proxies: &Proxies,
    run_id: i64,
) -> anyhow::Result<BTreeMap<&'static str, Vec<String>>> {
    proxies.cut();
    println!(
        "  {} link cut (both fault proxies drop every connection and refuse new ones)",
        site.t()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Counters = ["plant-a", "plant-b"]
        .into_iter()
        .map(|z| (z, Arc::new(AtomicU64::new(0))))
        .collect();
    let producers = spawn_producers(site, &stop, &counters, run_id);
    let cut_at = Instant::now();
    status::print_partition_header();
    while cut_at.elapsed() < PARTITION {
        tokio::time::sleep(Duration::from_secs(1)).await;
        status::print_partition_row(site, &counters).await?;
    }
    stop.store(true, Ordering::SeqCst);
    let mut lot_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (plant, p) in ["plant-a", "plant-b"]
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, PRODUCERS_PER_PLANT))
        .zip(producers)
    {
        lot_ids.entry(plant).or_default().extend(p.await??);
    }
    let appended: usize = lot_ids.values().map(Vec::len).sum();
    println!(
        "  every one of the {appended} appends at the plants was acknowledged by its own zone while enterprise was unreachable."
    );
    wait_for_idmz(site, appended).await?;
    status::print_partition_status(site).await?;
    Ok(lot_ids)
}

/// [`PRODUCERS_PER_PLANT`] producers at each plant, appending until `stop`.
fn spawn_producers(
    site: &DemoSite,
    stop: &Arc<AtomicBool>,
    counters: &Counters,
    run_id: i64,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Vec<String>>>> {
    let mut producers = Vec::new();
    for (plant, worker) in ["plant-a", "plant-b"]
        .into_iter()
        .flat_map(|p| (0..PRODUCERS_PER_PLANT).map(move |w| (p, w)))
    {
        let app = site.app(plant).clone();
        let stop = stop.clone();
        let count = counters[plant].clone();
        producers.push(tokio::spawn(produce(
            app, plant, worker, stop, count, run_id,
        )));
    }
    producers
}

/// One producer: appends readings for enterprise until `stop`; returns the
/// message ids its zone acknowledged.
async fn produce(
    app: BsfgClient,
    plant: &'static str,
    worker: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    run_id: i64,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("{plant}-w{worker}-lot-{i:05}-{run_id}");
        let subject = if plant == "plant-a" {
            "equipment:PlantA/Mixer1"
        } else {
            "equipment:PlantB/Press2"
        };
        let r = app
            .append(
                envelope_for(&id, plant, "enterprise"),
                fact_of(
                    subject,
                    "reading_recorded",
                    &format!(r#"{{"seq":{i},"temp_c":{}}}"#, 20 + i % 7),
                ),
            )
            .await;
        match r {
            Ok(_) => {
                ids.push(id);
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{plant}: append refused while the link was cut: {}: {}",
                    e.code.as_str(),
                    e.message.unwrap_or_default()
                ));
            }
        }
        tokio::time::sleep(APPEND_EVERY).await;
    }
    Ok(ids)
}

/// Lets idmz finish pulling the last few from the plants (at most 10 s).
async fn wait_for_idmz(site: &DemoSite, appended: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idmz = site.app("idmz").status().await?;
        let ok = ["plant-a", "plant-b"].iter().all(|p| {
            idmz.links
                .iter()
                .any(|l| &l.peer == p && l.backlog == 0 && l.mode == "normal")
        });
        if (ok && site.queued_at_idmz_for_enterprise().await? as usize >= appended)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Phase 7: restores the link and follows enterprise's link to idmz until
/// it is normal with nothing queued.
pub(super) async fn restore_and_drain(site: &DemoSite, proxies: &Proxies) -> anyhow::Result<()> {
    proxies.restore();
    let restored_at = Instant::now();
    println!("  {} link restored", site.t());
    println!(
        "  (backlog reported by idmz: what idmz still had for enterprise after the batch it just served;"
    );
    println!(
        "   queued at idmz: what enterprise has not confirmed yet, including batches in flight)"
    );
    let modes_seen = drain_backlog(site).await?;
    println!(
        "  drained in {:.1} s; modes seen after restore: {}",
        restored_at.elapsed().as_secs_f64(),
        modes_seen.join(" → ")
    );
    Ok(())
}

/// Prints each change of enterprise's link to idmz until the backlog is
/// drained; returns the modes seen.
async fn drain_backlog(site: &DemoSite) -> anyhow::Result<Vec<String>> {
    let mut last = String::new();
    let mut modes_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let link = site.link("enterprise", "idmz").await?;
        let queued = site.queued_at_idmz_for_enterprise().await?;
        if modes_seen.last() != Some(&link.mode) {
            modes_seen.push(link.mode.clone());
        }
        let line = format!(
            "enterprise ← idmz: {:<14} backlog reported by idmz {:>5}, queued at idmz {:>5}, replicated {:>5}",
            link.mode, link.backlog, queued, link.facts_replicated
        );
        if line != last {
            println!("  {} {line}", site.t());
            last = line;
        }
        if link.mode == "normal" && queued == 0 && link.backlog == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the backlog did not drain within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    Ok(modes_seen)
}
