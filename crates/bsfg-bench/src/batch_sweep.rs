//! `bsfg-bench batches`: one nats-server, one stream, the node's two ways of
//! storing a batch it chose itself, batch size by batch size: pipelined
//! publishes (every message a request, all sent before any acknowledgement
//! is awaited, as the node's append round does) against one JetStream
//! atomic batch (ADR-50: every message staged, one commit, one
//! acknowledgement). Where atomic batches start to pay is the node's
//! `[commit] atomic_batch_facts_min`.
//!
//! Each configuration runs `--in-flight` batches at once on one connection
//! (group commit runs two, the replicator's appender one), each batch of
//! 256 B messages with a unique `Nats-Msg-Id` under one of 8 subjects,
//! into a fresh stream configured like a category's (`allow_atomic`, a
//! duplicate window). Reported: messages/s, nats-server CPU per message and
//! per batch, medians of `--reps`, for every `--nats-sync` given.

use crate::child::{free_port, nats_server, scopeguard};
use crate::stats::median;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bsfg_testkit::procfs::cpu_seconds;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct BatchSweepArgs {
    /// Seconds per configuration and repetition.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Batch sizes, messages (nats-server allows at most 1000 per atomic
    /// batch).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32,64,256,1000")]
    sizes: Vec<usize>,
    /// Batches in flight at once, one list entry per configuration.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    in_flight: Vec<usize>,
    /// JetStream `sync_interval` settings, one server each.
    #[arg(long, value_delimiter = ',', default_value = "always,2m")]
    nats_sync: Vec<String>,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pipelined,
    Atomic,
}

/// One configuration's medians.
struct Row {
    sync: String,
    in_flight: usize,
    size: usize,
    /// (msgs/s, server µs per message) per mode, Pipelined then Atomic.
    modes: [(f64, f64, Vec<f64>); 2],
}

pub async fn run(a: BatchSweepArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.sizes.iter().all(|s| (1..=1000).contains(s)),
        "--sizes must be 1 to 1000 (nats-server's atomic batch limit)"
    );
    let mut rows = Vec::new();
    for sync in &a.nats_sync {
        let dir =
            std::env::temp_dir().join(format!("bsfg-bench-batches-{}-{sync}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let _cleanup = scopeguard(dir.clone());
        let port = free_port()?;
        let nats = nats_server(&a.nats_server, &dir, "batches", port, sync)
            .start()
            .await?;
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await?;
        let js = jetstream::new(client.clone());
        for &in_flight in &a.in_flight {
            for &size in &a.sizes {
                let modes = [Mode::Pipelined, Mode::Atomic].map(|_| (0.0, 0.0, Vec::new()));
                let mut row = Row {
                    sync: sync.clone(),
                    in_flight,
                    size,
                    modes,
                };
                measure(&a, &js, nats.pid(), &mut row).await?;
                rows.push(row);
            }
        }
    }
    println!("{}", table(&rows)?);
    Ok(())
}

/// Both modes of one configuration, alternating within each repetition.
async fn measure(
    a: &BatchSweepArgs,
    js: &jetstream::Context,
    server: u32,
    row: &mut Row,
) -> anyhow::Result<()> {
    let mut samples: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    for rep in 0..a.reps.max(1) {
        let order = if rep % 2 == 0 {
            [Mode::Pipelined, Mode::Atomic]
        } else {
            [Mode::Atomic, Mode::Pipelined]
        };
        for mode in order {
            let name = "sweep";
            fresh_stream(js, name).await?;
            let cpu_before = cpu_seconds(server);
            let run = format!("{}-{}-{}-{rep}-{mode:?}", row.sync, row.in_flight, row.size);
            let (count, secs) = drive(js, mode, row.size, row.in_flight, a.duration, &run).await?;
            let cpu = cpu_seconds(server) - cpu_before;
            let (rate, us) = (count as f64 / secs, cpu * 1e6 / count as f64);
            eprintln!(
                "sync {} in flight {} size {} {mode:?} rep {rep}: {rate:.0} msg/s, \
                 nats-server {us:.1} µs/msg",
                row.sync, row.in_flight, row.size
            );
            let at = usize::from(mode == Mode::Atomic);
            samples[at].0.push(rate);
            samples[at].1.push(us);
            js.delete_stream(name).await?;
        }
    }
    for (at, (rates, cpus)) in samples.into_iter().enumerate() {
        row.modes[at] = (median(rates.clone()), median(cpus), rates);
    }
    Ok(())
}

/// Deletes `name` if it exists and creates it empty, like a category's
/// stream in the respects that matter here.
async fn fresh_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec!["facts.c.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        deny_delete: true,
        discard: stream::DiscardPolicy::New,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// `in_flight` tasks on one connection, each storing batches of `size` in
/// `mode` until `secs` have passed. Returns messages stored and seconds.
async fn drive(
    js: &jetstream::Context,
    mode: Mode,
    size: usize,
    in_flight: usize,
    secs: f64,
    run: &str,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for task in 0..in_flight.max(1) {
        let (js, run) = (js.clone(), format!("{run}-{task}"));
        tasks.push(tokio::spawn(async move {
            let mut stored = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let messages: Vec<(String, HeaderMap)> = (0..size)
                    .map(|i| message(&run, n * size as u64 + i as u64))
                    .collect();
                let batch_id = format!("{run}-{n}");
                match mode {
                    Mode::Pipelined => pipelined(&js, messages).await?,
                    Mode::Atomic => atomic(&js, messages, &batch_id).await?,
                }
                stored += size as u64;
                n += 1;
            }
            anyhow::Ok(stored)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    Ok((stored, started.elapsed().as_secs_f64()))
}

fn message(run: &str, i: u64) -> (String, HeaderMap) {
    let token = bsfg_domain::identity::key_token(run, &i.to_string());
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", token.as_str());
    (format!("facts.c.k{}", i % 8), headers)
}

fn payload() -> bytes::Bytes {
    bytes::Bytes::from_static(&[b'x'; 256])
}

/// Every message published before any acknowledgement is awaited; each
/// must be stored.
async fn pipelined(
    js: &jetstream::Context,
    messages: Vec<(String, HeaderMap)>,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(messages.len());
    for (subject, headers) in messages {
        acks.push(js.publish_with_headers(subject, headers, payload()).await?);
    }
    for ack in acks {
        let ack = ack.await?;
        anyhow::ensure!(!ack.duplicate, "a unique message was reported a duplicate");
    }
    Ok(())
}

/// One atomic batch: every message but the last without a reply, the last
/// (`Nats-Batch-Commit: 1`) a request whose acknowledgement must count the
/// whole batch.
async fn atomic(
    js: &jetstream::Context,
    messages: Vec<(String, HeaderMap)>,
    batch_id: &str,
) -> anyhow::Result<()> {
    atomic_of(js, messages, batch_id, payload).await
}

/// [`atomic`] with each message's payload from `payload`.
pub(crate) async fn atomic_of(
    js: &jetstream::Context,
    messages: Vec<(String, HeaderMap)>,
    batch_id: &str,
    payload: impl Fn() -> bytes::Bytes,
) -> anyhow::Result<()> {
    let client = js.client();
    let size = messages.len();
    let mut reply = None;
    for (seq, (subject, mut headers)) in (1..).zip(messages) {
        headers.insert("Nats-Batch-Id", batch_id);
        headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
        if seq < size {
            client
                .publish_with_headers(subject, headers, payload())
                .await?;
        } else {
            headers.insert("Nats-Batch-Commit", "1");
            reply = Some(
                client
                    .request_with_headers(subject, headers, payload())
                    .await?,
            );
        }
    }
    let reply = reply.expect("a batch has at least one message");
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    anyhow::ensure!(ack.get("error").is_none(), "batch not stored: {ack}");
    anyhow::ensure!(
        ack["count"].as_u64() == Some(size as u64),
        "the commit acknowledges the whole batch: {ack}"
    );
    Ok(())
}

fn table(rows: &[Row]) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "| sync_interval | batches in flight | batch size | pipelined msgs/s (reps) | \
         atomic msgs/s (reps) | atomic / pipelined | nats-server µs/msg pipelined | atomic | \
         atomic µs per batch |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for r in rows {
        let [(p_rate, p_cpu, p_reps), (a_rate, a_cpu, a_reps)] = &r.modes;
        let reps = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        writeln!(
            md,
            "| {} | {} | {} | {p_rate:.0} ({}) | {a_rate:.0} ({}) | {:.2}× | {p_cpu:.1} | \
             {a_cpu:.1} | {:.0} |",
            r.sync,
            r.in_flight,
            r.size,
            reps(p_reps),
            reps(a_reps),
            a_rate / p_rate,
            a_cpu * r.size as f64,
        )?;
    }
    Ok(md)
}
