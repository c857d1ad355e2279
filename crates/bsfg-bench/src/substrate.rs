//! `bsfg-bench substrate`: what one nats-server can do with the storage
//! layouts the node has used, with no node in the way. The node stores
//! facts under one subject per kind with `Nats-Msg-Id` as their only header
//! (the first variant); the other variants also carry the content header
//! that facts of the older format have, so their results stay comparable.
//! The per-fact-subject variants are the layout the key index replaced
//! (docs/key-index.md), kept so the reason for the key index stays
//! measurable.
//!
//! Every variant publishes 256 B payloads, pipelined (a window of
//! in-flight acknowledgements) from one client, into a fresh stream, and
//! reports messages/s and nats-server CPU per message. The variants add the
//! node's storage choices one at a time, so the cost of each is visible:
//! fixed subjects → one subject per fact → the former idempotency guard →
//! the guard without `Nats-Msg-Id`.

use crate::child::{free_port, nats_server, scopeguard};
use crate::drive::open_loop_timeline;
use crate::publish::{publish_acked, raw_publish};
use crate::stats::median;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bsfg_testkit::procfs::cpu_seconds;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct SubstrateArgs {
    /// Seconds per variant and repetition.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// In-flight acknowledgements (for atomic batches: messages in flight,
    /// rounded down to whole batches, at least one).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages per atomic batch (nats-server allows at most 1000).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Fast-ingest batches: a flow acknowledgement every this many messages.
    #[arg(long, default_value_t = 64)]
    flow: usize,
    /// JetStream `sync_interval`: `always` (the default) is what a zone
    /// node's embedded server ships with; `2m` is JetStream's own default.
    #[arg(long, default_value = "always")]
    nats_sync: String,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
    /// Markdown file the results are printed to (appended to stdout only
    /// when empty).
    #[arg(long, default_value = "")]
    out: String,
    /// Instead of the throughput variants: pre-fill a fresh stream, then
    /// publish on a fixed open-loop schedule across nats-server's periodic
    /// stream-state write, for 64 fixed subjects and for the former layout,
    /// and report when requests stalled and when `index.db` was rewritten.
    #[arg(long)]
    stalls: bool,
    /// `--stalls`: messages pre-filled before the open loop.
    #[arg(long, default_value_t = 800_000)]
    prefill: u64,
    /// `--stalls`: open-loop rate, messages/s.
    #[arg(long, default_value_t = 4000.0)]
    rate: f64,
    /// `--stalls`: seconds of open loop (nats-server first writes the state
    /// file 120–150 s after the stream is created).
    #[arg(long, default_value_t = 160.0)]
    probe_secs: f64,
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    /// 64 fixed subjects, `Nats-Msg-Id` (the single-zone raw baseline).
    FixedSubjects,
    /// One subject per fact (`facts.c.k.<token>`), `Nats-Msg-Id` and the
    /// content header: the former layout without its guard.
    SubjectPerFact,
    /// The former layout's exact headers: plus the expected-last-subject-sequence
    /// guard over `facts.c.*.<token>`.
    NodeGuarded,
    /// The guard without `Nats-Msg-Id`.
    GuardedNoMsgId,
    /// The node's current layout (one subject per kind, `Nats-Msg-Id`, the
    /// content header) sent as JetStream atomic batches (ADR-50) of
    /// `--batch` messages: only the commit is a request, so nats-server
    /// sends one acknowledgement per batch instead of one per message.
    AtomicBatch,
    /// The same messages as JetStream fast-ingest batches (ADR-50, 2.14+):
    /// every message is stored as it arrives, nats-server sends a flow
    /// acknowledgement every `--flow` messages and one acknowledgement for
    /// the commit; one batch of `--batch` messages per stream at a time, so
    /// the batch's stream sequences are contiguous.
    FastBatch,
}

const VARIANTS: [Variant; 6] = [
    Variant::FixedSubjects,
    Variant::SubjectPerFact,
    Variant::NodeGuarded,
    Variant::GuardedNoMsgId,
    Variant::AtomicBatch,
    Variant::FastBatch,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::FixedSubjects => "64 fixed subjects, Nats-Msg-Id",
            Variant::SubjectPerFact => "one subject per fact, Nats-Msg-Id + content header",
            Variant::NodeGuarded => {
                "one subject per fact + guard (the layout before the key index)"
            }
            Variant::GuardedNoMsgId => "one subject per fact + guard, without Nats-Msg-Id",
            Variant::AtomicBatch => {
                "64 fixed subjects, Nats-Msg-Id + content header, atomic batches (one ack per batch)"
            }
            Variant::FastBatch => {
                "64 fixed subjects, Nats-Msg-Id + content header, fast-ingest batches (one batch at a time)"
            }
        }
    }

    fn message(self, run: &str, i: u64) -> (String, HeaderMap) {
        let token = bsfg_domain::identity::key_token(run, &i.to_string());
        let mut headers = HeaderMap::new();
        let subject = match self {
            Variant::FixedSubjects | Variant::AtomicBatch | Variant::FastBatch => {
                format!("facts.c.k.{}", i % 64)
            }
            _ => format!("facts.c.k.{token}"),
        };
        if !matches!(self, Variant::GuardedNoMsgId) {
            headers.insert("Nats-Msg-Id", token.as_str());
        }
        if !matches!(self, Variant::FixedSubjects) {
            headers.insert(
                "Bsfg-Content",
                "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
            );
        }
        if matches!(self, Variant::NodeGuarded | Variant::GuardedNoMsgId) {
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                format!("facts.c.*.{token}").as_str(),
            );
        }
        (subject, headers)
    }
}

pub async fn run(a: SubstrateArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("bsfg-bench-substrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = scopeguard(dir.clone());
    let port = free_port()?;
    let nats = nats_server(&a.nats_server, &dir, "substrate", port, &a.nats_sync)
        .start()
        .await?;
    let js = jetstream::new(async_nats::connect(format!("nats://127.0.0.1:{port}")).await?);
    if a.stalls {
        let md = stall_probe(&a, &js, &dir).await?;
        println!("{md}");
        if !a.out.is_empty() {
            std::fs::write(&a.out, &md)?;
        }
        return Ok(());
    }

    let mut md = String::new();
    writeln!(
        md,
        "| Variant | msgs/s (median; reps) | nats-server CPU µs/msg (median) |"
    )?;
    writeln!(md, "|---|---|---|")?;
    for variant in VARIANTS {
        let (mut rates, mut cpus) = (Vec::new(), Vec::new());
        for rep in 0..a.reps.max(1) {
            // A fresh stream per repetition: per-subject state starts empty.
            let name = format!("sub{rep}");
            fresh_stream(&js, &name).await?;
            let cpu_before = cpu_seconds(nats.pid());
            let run = format!("{rep}-{variant:?}");
            let (count, secs) = match variant {
                Variant::AtomicBatch => {
                    publish_atomic(&js, &name, a.batch, a.window, a.duration, &run).await?
                }
                Variant::FastBatch => {
                    publish_fast(&js, &name, a.batch, a.flow, a.duration, &run).await?
                }
                _ => publish(&js, variant, a.window, a.duration, u64::MAX, &run).await?,
            };
            let cpu = cpu_seconds(nats.pid()) - cpu_before;
            let rate = count as f64 / secs;
            eprintln!(
                "{variant:?} rep {rep}: {rate:.0} msg/s, nats-server {:.1} µs/msg",
                cpu * 1e6 / count as f64
            );
            rates.push(rate);
            cpus.push(cpu * 1e6 / count as f64);
            js.delete_stream(&name).await?;
        }
        let reps: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        writeln!(
            md,
            "| {} | {:.0} ({}) | {:.1} |",
            variant.label(),
            median(rates),
            reps.join(" / "),
            median(cpus)
        )?;
    }
    println!("{md}");
    if !a.out.is_empty() {
        std::fs::write(&a.out, &md)?;
    }
    Ok(())
}

/// Deletes `name` if it exists and creates it empty.
async fn fresh_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec!["facts.c.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        allow_atomic_publish: true,
        allow_batch_publish: true,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Publishes `AtomicBatch` messages in batches of `batch`: every message
/// but the last without a reply subject, the last (`Nats-Batch-Commit`) as
/// a request whose acknowledgement must cover the whole batch; up to
/// `window / batch` batches in flight. Returns messages and seconds.
async fn publish_atomic(
    js: &jetstream::Context,
    stream: &str,
    batch: usize,
    window: usize,
    secs: f64,
    run: &str,
) -> anyhow::Result<(u64, f64)> {
    use futures::StreamExt as _;
    anyhow::ensure!(
        (1..=1000).contains(&batch),
        "--batch must be 1 to 1000 (nats-server's limit)"
    );
    let client = js.client();
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let in_flight_max = (window / batch).max(1);
    let started = Instant::now();
    let (mut sent, mut done, mut n) = (0u64, 0u64, 0u64);
    let mut commits = futures::stream::FuturesUnordered::new();
    while started.elapsed().as_secs_f64() < secs || !commits.is_empty() {
        if started.elapsed().as_secs_f64() < secs && commits.len() < in_flight_max {
            let id = format!("{run}-{n}");
            n += 1;
            for seq in 1..=batch {
                let (subject, mut headers) = Variant::AtomicBatch.message(run, sent);
                sent += 1;
                headers.insert("Nats-Batch-Id", id.as_str());
                headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
                if seq < batch {
                    client
                        .publish_with_headers(subject, headers, payload.clone())
                        .await?;
                } else {
                    headers.insert("Nats-Batch-Commit", "1");
                    let client = client.clone();
                    let payload = payload.clone();
                    commits.push(async move {
                        client.request_with_headers(subject, headers, payload).await
                    });
                }
            }
            continue;
        }
        let Some(reply) = commits.next().await else {
            continue;
        };
        let ack: serde_json::Value = serde_json::from_slice(&reply?.payload)?;
        anyhow::ensure!(
            ack.get("error").is_none() && ack["stream"] == stream,
            "batch not stored: {ack}"
        );
        anyhow::ensure!(
            ack["count"].as_u64() == Some(batch as u64),
            "the commit acknowledges the whole batch: {ack}"
        );
        done += batch as u64;
    }
    Ok((done, started.elapsed().as_secs_f64()))
}

/// Publishes `FastBatch` messages in fast-ingest batches of `batch`, one
/// batch at a time: every message's reply subject carries the batch id,
/// its position and the operation; the last one commits. The commit's
/// acknowledgement must count the whole batch, and its sequence must be
/// the previous commit's plus the batch size (contiguous offsets, which is
/// what a node would need to answer every append with its offset).
async fn publish_fast(
    js: &jetstream::Context,
    stream: &str,
    batch: usize,
    flow: usize,
    secs: f64,
    run: &str,
) -> anyhow::Result<(u64, f64)> {
    use futures::StreamExt as _;
    let client = js.client();
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    let (mut sent, mut done, mut n, mut last_seq) = (0u64, 0u64, 0u64, 0u64);
    let flow_text = flow.max(1).to_string();
    while started.elapsed().as_secs_f64() < secs {
        let id = format!("{run}-{n}");
        n += 1;
        // nats-server 2.15 reads a fast batch's id, flow, gap mode, position
        // and operation (0 start, 1 append, 2 commit) from the reply subject.
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(format!("{inbox}.>")).await?;
        for seq in 1..=batch {
            let (subject, headers) = Variant::FastBatch.message(run, sent);
            sent += 1;
            let op = if seq == batch {
                2
            } else if seq == 1 {
                0
            } else {
                1
            };
            let reply = format!("{inbox}.{id}.{flow_text}.fail.{seq}.{op}.$FI");
            client
                .publish_with_reply_and_headers(subject, reply, headers, payload.clone())
                .await?;
        }
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("reply subscription ended"))?;
            let ack: serde_json::Value = serde_json::from_slice(&reply.payload)?;
            anyhow::ensure!(ack.get("error").is_none(), "fast batch refused: {ack}");
            if ack.get("batch").is_none() {
                continue; // a flow acknowledgement
            }
            anyhow::ensure!(
                ack["stream"] == stream && ack["count"].as_u64() == Some(batch as u64),
                "the commit acknowledges the whole batch: {ack}"
            );
            let seq = ack["seq"].as_u64().unwrap_or(0);
            anyhow::ensure!(
                last_seq == 0 || seq == last_seq + batch as u64,
                "batch sequences are contiguous: {last_seq} then {seq}"
            );
            last_seq = seq;
            break;
        }
        done += batch as u64;
    }
    Ok((done, started.elapsed().as_secs_f64()))
}

/// Publishes `variant`'s messages pipelined (see `raw_publish`); every one
/// must be acknowledged. Returns messages and seconds.
async fn publish(
    js: &jetstream::Context,
    variant: Variant,
    window: usize,
    secs: f64,
    count_max: u64,
    run: &str,
) -> anyhow::Result<(u64, f64)> {
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let published = raw_publish(js, window, secs, count_max, |i| {
        let (subject, headers) = variant.message(run, i);
        (subject, headers, payload.clone())
    })
    .await?;
    anyhow::ensure!(
        published.errors == 0,
        "{} publishes were not acknowledged",
        published.errors
    );
    Ok((published.done, published.secs))
}

/// `--stalls` (see the flag). Why: the node's half-load tail showed stalls
/// of up to hundreds of ms on two-minute marks, and its exact publishes
/// stall without the node too. nats-server rewrites a stream's state file,
/// one record per subject, every 2–2.5 min under the stream's lock; this
/// probe puts request stalls and those rewrites on one clock.
async fn stall_probe(
    a: &SubstrateArgs,
    js: &jetstream::Context,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "| Layout | pre-filled | open loop | p50 ms | p99 ms | max ms | seconds with a request > 50 ms (s after stream creation) | index.db rewritten at (s) | index.db size |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for (n, variant) in [Variant::FixedSubjects, Variant::NodeGuarded]
        .into_iter()
        .enumerate()
    {
        stall_probe_layout(a, js, dir, n, variant, &mut md).await?;
    }
    Ok(md)
}

/// One layout of `--stalls`: a fresh stream, pre-filled, then probed at an
/// open-loop rate while its state file is watched; adds its row to `md`.
async fn stall_probe_layout(
    a: &SubstrateArgs,
    js: &jetstream::Context,
    dir: &std::path::Path,
    n: usize,
    variant: Variant,
    md: &mut String,
) -> anyhow::Result<()> {
    let name = format!("stall{n}");
    fresh_stream(js, &name).await?;
    let created = Instant::now();
    // Every change of the state file's modification time, on the same clock.
    let state_file = dir.join(format!(
        "js-substrate/jetstream/$G/streams/{name}/msgs/index.db"
    ));
    let (stop, watcher) = watch_state_file(state_file, created);
    let (prefilled, prefill_secs) = publish(
        js,
        variant,
        a.window,
        f64::INFINITY,
        a.prefill,
        &format!("prefill-{n}"),
    )
    .await?;
    eprintln!("{variant:?}: pre-filled {prefilled} in {prefill_secs:.1} s");
    let loop_started = created.elapsed().as_secs_f64();
    let (j, run) = (js.clone(), format!("probe-{n}"));
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let (sample, timeline) = open_loop_timeline(a.rate, a.probe_secs, move |i| {
        let (subject, headers) = variant.message(&run, i);
        publish_acked(&j, subject, headers, payload.clone())
    })
    .await;
    let _ = stop.send(());
    let (writes, state_bytes) = watcher.await?;
    let max_us = timeline.iter().map(|(_, us)| *us).max().unwrap_or(0);
    let stalled = stalled_seconds(&timeline, loop_started);
    let writes: Vec<String> = writes.iter().map(|w| format!("{w:.0}")).collect();
    writeln!(
        md,
        "| {} | {prefilled} | {:.0}/s × {:.0} s from {loop_started:.0} s | {:.2} | {:.2} | {:.0} | {} | {} | {:.1} MiB |",
        variant.label(),
        a.rate,
        a.probe_secs,
        sample.p50_ms,
        sample.p99_ms,
        f64::from(max_us) / 1e3,
        listed_or_none(&stalled),
        listed_or_none(&writes),
        state_bytes as f64 / 1048576.0
    )?;
    eprintln!(
        "{variant:?}: p99 {:.2} ms, max {:.0} ms",
        sample.p99_ms,
        f64::from(max_us) / 1e3
    );
    js.delete_stream(&name).await?;
    Ok(())
}

/// Watches a stream's state file every 100 ms until told to stop; the task
/// returns the seconds since `created` at which its modification time
/// changed, and its final size.
fn watch_state_file(
    state_file: PathBuf,
    created: Instant,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(Vec<f64>, u64)>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let (mut last, mut writes) = (None, Vec::new());
        loop {
            let modified = std::fs::metadata(&state_file)
                .and_then(|m| m.modified())
                .ok();
            if modified.is_some() && modified != last {
                writes.push(created.elapsed().as_secs_f64());
                last = modified;
            }
            tokio::select! {
                _ = &mut stopped => return (writes, std::fs::metadata(&state_file).map(|m| m.len()).unwrap_or(0)),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    (stop, watcher)
}

/// The whole seconds (after stream creation) in which a request of the
/// open loop started at `loop_started` took over 50 ms, ascending, once each.
fn stalled_seconds(timeline: &[(u32, u32)], loop_started: f64) -> Vec<String> {
    let mut stalled: Vec<u64> = timeline
        .iter()
        .filter(|(_, us)| *us > 50_000)
        .map(|(at, _)| (loop_started + f64::from(*at) / 1e3) as u64)
        .collect();
    stalled.sort_unstable();
    stalled.dedup();
    stalled.iter().map(|s| s.to_string()).collect()
}

/// The items comma-separated, or "none".
fn listed_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
