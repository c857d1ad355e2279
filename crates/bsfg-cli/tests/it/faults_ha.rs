//! The seeded fault run of `faults.rs` with one zone on several machines:
//! `plant-b` stores its facts in a three-server JetStream cluster and runs
//! two nodes (`crossing_ha`; idmz's links and plant-b's producers name
//! both, each link through a fault proxy per node). Under continuous load
//! plant-b ⇄ enterprise, the seeded schedule mixes into partitions, kills
//! and freezes of idmz and enterprise: `kill -9` of plant-b's active node
//! (restarted once the other took over), a freeze (SIGSTOP) of its active
//! node for longer than the lease (then SIGCONT), and `kill -9` of one of
//! its nats-servers (restarted). Then the same checker.
//!
//! Replay a failing run with `BSFG_FAULT_SEED=<seed>` (the seed is printed).

use crate::crossing::*;
use crate::faults::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The zone of two nodes.
const HA_ZONE: &str = "plant-b";
/// Where the load goes to and comes from.
const OTHER_END: &str = "enterprise";
/// Zones of the seeded node and nats-server faults besides the HA ones.
const SITE_ZONES: [&str; 2] = ["idmz", "enterprise"];
/// Links (receiver, peer) the load crosses.
const SITE_LINKS: [(&str, &str); 4] = [
    ("idmz", "plant-b"),
    ("plant-b", "idmz"),
    ("enterprise", "idmz"),
    ("idmz", "enterprise"),
];
/// Seeded faults of `faults::pick` in each schedule, besides the HA ones.
const SITE_FAULTS: usize = 5;

/// One step of the schedule.
#[derive(Debug, Clone, Copy)]
enum Step {
    Site(Fault),
    KillActive,
    FreezeActive,
    KillServer,
}

impl Step {
    fn kind(self) -> &'static str {
        match self {
            Step::Site(f) => f.kind(),
            Step::KillActive => "kill -9 HA active node",
            Step::FreezeActive => "freeze HA active node",
            Step::KillServer => "kill -9 HA nats-server",
        }
    }
}

/// The three HA faults and `SITE_FAULTS` others, in a seeded order.
fn schedule(rng: &mut Rng) -> Vec<Step> {
    let mut steps = vec![Step::KillActive, Step::FreezeActive, Step::KillServer];
    for _ in 0..SITE_FAULTS {
        steps.push(Step::Site(pick(rng, &SITE_ZONES, &SITE_LINKS)));
    }
    for i in (1..steps.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        steps.swap(i, j);
    }
    steps
}

/// Only one node of both running: `[i == 0, i == 1]`.
fn only(i: usize) -> [bool; 2] {
    [i == 0, i == 1]
}

async fn apply_step(site: &mut Site, step: Step, rng: &mut Rng) {
    let z = match step {
        Step::Site(fault) => return apply(site, fault, rng).await,
        _ => site.zone_mut(HA_ZONE),
    };
    match step {
        Step::Site(_) => unreachable!("applied above"),
        Step::KillActive => {
            let active = z.active_node([true, true]).await;
            z.kill9_node_at(active).await;
            let killed_at = Instant::now();
            let other = z.active_node(only(1 - active)).await;
            eprintln!(
                "fault: kill -9 {HA_ZONE} node {active} (active); node {other} took over \
                 in {:?}; restarting the killed node",
                killed_at.elapsed()
            );
            z.spawn_node(active).await;
        }
        Step::FreezeActive => {
            let hold = rng.millis(3000, 8000);
            let active = z.active_node([true, true]).await;
            z.signal_node_at(active, "STOP");
            let frozen_at = Instant::now();
            let other = z.active_node(only(1 - active)).await;
            let took_over = frozen_at.elapsed();
            tokio::time::sleep(hold.saturating_sub(took_over)).await;
            z.signal_node_at(active, "CONT");
            eprintln!(
                "fault: froze {HA_ZONE} node {active} (active) for {:?}; node {other} took \
                 over in {took_over:?}",
                frozen_at.elapsed()
            );
        }
        Step::KillServer => {
            let (i, down) = (rng.below(3) as usize, rng.millis(1000, 8000));
            eprintln!("fault: kill -9 {HA_ZONE} nats-server {i}, down {down:?}");
            z.server_mut(i).kill9().await.unwrap();
            tokio::time::sleep(down).await;
            z.server_mut(i).restart().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_zone_under_load_and_faults_loses_and_duplicates_nothing() {
    let seed = fault_seed();
    let started = Instant::now();
    let shape = run_shape(started);
    eprintln!(
        "HA fault injection seed {seed} (replay: BSFG_FAULT_SEED={seed}); {HA_ZONE} on three \
         nats-servers with two nodes; {} faults a schedule",
        SITE_FAULTS + 3
    );
    let mut rng = Rng::new(seed);
    let mut site = Site::start_with(SiteOpts {
        proxies: true,
        out_of_process: true,
        tweak: Some(fast_redelivery),
        ha_zone: Some(HA_ZONE),
        ..Default::default()
    })
    .await;
    // The load runs until the schedule is done (a soak: until its end).
    let stop = Arc::new(AtomicBool::new(false));
    let produce_to = |from: &'static str, to: &'static str| {
        let load = (usize::MAX, shape.until, stop.clone());
        produce(site.app(from).clone(), (from, to), load, shape.pace, seed)
    };
    let up = tokio::spawn(produce_to(HA_ZONE, OTHER_END));
    let down = tokio::spawn(produce_to(OTHER_END, HA_ZONE));
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut steps = Vec::new();
    while !(up.is_finished() && down.is_finished()) {
        if steps.is_empty() {
            if faults.values().sum::<usize>() >= shape.faults_max {
                break;
            }
            steps = schedule(&mut rng);
        }
        tokio::time::sleep(rng.millis(300, 1500)).await;
        let step = steps.remove(0);
        apply_step(&mut site, step, &mut rng).await;
        *faults.entry(step.kind()).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let (up_acked, up_unacked) = up.await.unwrap();
    let (down_acked, down_unacked) = down.await.unwrap();
    let load = Load {
        up: (OTHER_END, up_acked, up_unacked),
        down: (HA_ZONE, down_acked, down_unacked),
    };
    check(&site, seed, (started, shape.drain), &faults, load).await;
}
