//! The load drivers: a closed loop of back-to-back calls and an open loop
//! offering calls on a fixed schedule.

use crate::stats::{Sample, pct_ms};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs `concurrency` workers calling `call(worker, seq)` back to back for
/// `secs`; returns completed calls/s and latency percentiles.
pub(crate) async fn closed_loop<F, Fut>(concurrency: usize, secs: f64, call: F) -> Sample
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (call, stop, errors) = (call.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = call(w, seq).await;
                seq += 1;
                if ok {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Sample {
        rate: all.len() as f64 / elapsed,
        p50_ms: pct_ms(&all, 50.0),
        p99_ms: pct_ms(&all, 99.0),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Offers `call(i)` at `rate`/s on a fixed schedule for `secs`; latency is
/// measured from each request's scheduled send time (no coordinated omission).
/// The same driver offers appends, bare echo RPCs and raw JetStream
/// publishes, so the three tails are comparable.
pub(crate) async fn open_loop<F, Fut>(rate: f64, secs: f64, tag: String, call: F) -> Sample
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    // BENCH_TIMELINE=<path>: write each request's send time and latency to
    // <path>.<tag> (to see when a tail happens, not only how long it is).
    let timeline_path = std::env::var("BENCH_TIMELINE")
        .ok()
        .map(|path| format!("{path}.{tag}"));
    let (sample, timeline) = open_loop_timeline(rate, secs, call).await;
    if let Some(path) = timeline_path {
        let text: String = timeline
            .iter()
            .map(|(at, us)| format!("{at} {us}\n"))
            .collect();
        let _ = std::fs::write(path, text);
    }
    sample
}

/// `open_loop`, also returning every answered request's scheduled send
/// time (ms from the start) and latency (µs), in completion order.
pub(crate) async fn open_loop_timeline<F, Fut>(
    rate: f64,
    secs: f64,
    call: F,
) -> (Sample, Vec<(u32, u32)>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = (rate * secs) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<(u32, u32)>>();
    let handle = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(20);
    // A dedicated OS thread keeps the schedule with sub-millisecond sleeps
    // (tokio timers have 1 ms granularity) and spawns each call on time.
    let scheduler = std::thread::spawn(move || {
        for i in 0..total {
            let scheduled = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let (tx, call) = (tx.clone(), call(i));
            handle.spawn(async move {
                let ok = call.await;
                let _ = tx.send(
                    ok.then(|| scheduled.elapsed().as_micros().min(u32::MAX as u128) as u32)
                        .map(|l| (l, (scheduled - start).as_millis() as u32)),
                );
            });
        }
    });
    let mut lat = Vec::with_capacity(total as usize);
    let mut timeline = Vec::new();
    let mut errors = 0;
    for _ in 0..total {
        match rx.recv().await {
            Some(Some((us, at))) => {
                lat.push(us);
                timeline.push((at, us));
            }
            Some(None) => errors += 1,
            None => break,
        }
    }
    scheduler.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    (
        Sample {
            rate: lat.len() as f64 / elapsed,
            p50_ms: pct_ms(&lat, 50.0),
            p99_ms: pct_ms(&lat, 99.0),
            errors,
        },
        timeline,
    )
}
