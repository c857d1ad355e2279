//! `bsfg-bench ab`: two node binaries, A and B, in the same run, on the
//! single-zone bench's AppendFact c64 closed loop (256 B facts).
//!
//! Each repetition runs both binaries, A then B in even repetitions and B
//! then A in odd ones, so that neither always runs first on a machine
//! whose load drifts. Every run starts from nothing: a fresh nats-server,
//! or with `--replicas 3` a fresh three-server cluster and R3 streams (its
//! own store, `sync_interval` from `--nats-sync`), and a fresh
//! `bsfg serve` of that binary with the single-zone bench's configuration
//! (the same file for both binaries; only fields both know). Facts are
//! addressed to the node's own zone. After a warm-up, the measured loop
//! gives rate and p50/p99; the node's CPU during it (from /proc) gives CPU
//! per append, and its VmHWM at the end its peak RSS. The report gives each
//! binary's medians, the ratio B/A of the medians, the median of the
//! per-repetition ratios, and every repetition.

use crate::child::{free_port, scopeguard, start_node};
use crate::crossing::{issue_certs, parse_tls};
use crate::node_config::node_config;
use crate::rpc::{ClientTls, append_closed_loop, rpc_client};
use crate::run_id;
use crate::stats::{Sample, median};
use crate::store::Store;
use bsfg_proto::bsfg::v1::BoundaryServiceClient;
use bsfg_testkit::procfs::{cpu_seconds, rss};
use connectrpc::Protocol;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct AbArgs {
    /// Node binary A (the reference, e.g. the build before a change).
    #[arg(long)]
    a: PathBuf,
    /// Node binary B (compared with A: ratios are B/A).
    #[arg(long)]
    b: PathBuf,
    /// Repetitions; each runs A and B once.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds of each measured AppendFact c64 loop.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of AppendFact c64 before each measured loop (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// JetStream `sync_interval` of each run's nats-server: `always` is
    /// what a zone node's embedded server uses; with `2m` (JetStream's
    /// default) the node's CPU rather than fsync limits the rate.
    #[arg(long, default_value = "always")]
    nats_sync: String,
    /// 1: one nats-server; 3: a three-server JetStream cluster on loopback,
    /// the node's streams with three replicas.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    replicas: u8,
    /// Node transport: plaintext-dev (the single-zone bench's), or mtls
    /// (site CA, node and app certificates generated per run).
    #[arg(long, default_value = "plaintext-dev")]
    tls: String,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
}

const CONCURRENCY: usize = 64;
const FACT_BYTES: usize = 256;

/// One binary's measured loop.
#[derive(Clone, Copy)]
struct Run {
    sample: Sample,
    /// Node CPU per answered append during the measured loop, µs.
    cpu_us: f64,
    /// Node VmHWM at the end of the run, MiB.
    peak_rss_mib: f64,
}

/// Starts a nats-server and a node of `bin` in `dir`, warms it up,
/// measures AppendFact c64, and stops both.
async fn one_run(
    a: &AbArgs,
    bin: &Path,
    dir: &Path,
    tag: &str,
    tls: Option<&ClientTls>,
) -> anyhow::Result<Run> {
    anyhow::ensure!(a.replicas != 2, "--replicas: 1 or 3");
    let replicas = usize::from(a.replicas);
    let store = Store::start((&a.nats_server, &a.nats_sync), dir, "bench", replicas).await?;
    let (port, ops) = (free_port()?, free_port()?);
    // The NATS port given here is replaced by the store's URLs.
    let config = node_config((port, ops, 0), 0, dir, tls.is_some())?;
    let config = store.configure(config, &a.nats_sync);
    let node = start_node(bin, &config, &dir.join("node.toml"), &dir.join("node.log")).await?;
    let client = rpc_client(port, Protocol::Connect, tls, BoundaryServiceClient::new).await?;
    if a.warmup > 0.0 {
        append_closed_loop(
            &client,
            CONCURRENCY,
            FACT_BYTES,
            a.warmup,
            format!("{tag}-warmup"),
        )
        .await;
    }
    let cpu_before = cpu_seconds(node.pid());
    let sample = append_closed_loop(
        &client,
        CONCURRENCY,
        FACT_BYTES,
        a.duration,
        tag.to_string(),
    )
    .await;
    let cpu = cpu_seconds(node.pid()) - cpu_before;
    let hwm_kib = rss(node.pid()).peak_kib;
    drop(client);
    drop(node);
    drop(store);
    Ok(Run {
        sample,
        cpu_us: cpu * 1e6 / (sample.rate * a.duration).max(1.0),
        peak_rss_mib: hwm_kib as f64 / 1024.0,
    })
}

pub async fn run(a: AbArgs) -> anyhow::Result<()> {
    let reps = a.reps.max(1);
    let mtls = parse_tls(&a.tls)?;
    for bin in [&a.a, &a.b] {
        anyhow::ensure!(bin.is_file(), "no node binary at {}", bin.display());
    }
    let root = std::env::temp_dir().join(format!("bsfg-bench-ab-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let _cleanup = scopeguard(root.clone());
    eprintln!("run dir {}", root.display());
    let started_at = crate::now_ms();
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [("A", &a.a), ("B", &a.b)]
        } else {
            [("B", &a.b), ("A", &a.a)]
        };
        for (label, bin) in order {
            let dir = root.join(format!("{label}-{rep}"));
            let tls = if mtls {
                let certs = dir.join("certs");
                issue_certs(&certs, &["bench"])?;
                Some(ClientTls {
                    ca: certs.join("ca.pem"),
                    cert: certs.join("app.bench.pem"),
                    key: certs.join("app.bench.key"),
                })
            } else {
                None
            };
            let run = one_run(
                &a,
                bin,
                &dir,
                &format!("{}-ab-{label}-{rep}", run_id()),
                tls.as_ref(),
            )
            .await?;
            let s = run.sample;
            eprintln!(
                "rep {rep} {label}: {:.0} facts/s p50 {:.2} p99 {:.2} ms, node CPU {:.1} µs/append, peak RSS {:.1} MiB, errors {}",
                s.rate, s.p50_ms, s.p99_ms, run.cpu_us, run.peak_rss_mib, s.errors
            );
            if std::env::var_os("BSFG_BENCH_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            if label == "A" {
                runs_a.push(run)
            } else {
                runs_b.push(run)
            }
        }
    }
    print!("{}", report(&a, started_at, &runs_a, &runs_b));
    Ok(())
}

/// The Markdown report: medians per binary with B/A, then every repetition.
fn report(a: &AbArgs, started_at: i64, runs_a: &[Run], runs_b: &[Run]) -> String {
    // Name, value of a run, decimals shown.
    type Metric = (&'static str, fn(&Run) -> f64, usize);
    let metrics: [Metric; 5] = [
        ("AppendFact c64 rate, facts/s", |r| r.sample.rate, 0),
        ("p50 ms", |r| r.sample.p50_ms, 2),
        ("p99 ms", |r| r.sample.p99_ms, 2),
        ("node CPU µs per append", |r| r.cpu_us, 1),
        ("node peak RSS (VmHWM) MiB", |r| r.peak_rss_mib, 1),
    ];
    let mut md = format!(
        "A/B at unix ms {started_at}: AppendFact c{CONCURRENCY}, {FACT_BYTES} B facts, {} × {} s (after {} s of warm-up) per binary, order alternating A B / B A; {} nats-server(s) (R{}), `sync_interval: {}`, nodes `[tls] mode = \"{}\"`; host: {} CPUs.\n\n",
        runs_a.len(),
        a.duration,
        a.warmup,
        a.replicas,
        a.replicas,
        a.nats_sync,
        a.tls,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let _ = write!(
        md,
        "* A = `{}`\n* B = `{}`\n\n",
        a.a.display(),
        a.b.display()
    );
    md.push_str("| Median of the repetitions | A | B | B/A | median of the per-repetition B/A |\n|---|---|---|---|---|\n");
    for (name, value, decimals) in metrics {
        let (ma, mb) = (
            median(runs_a.iter().map(value).collect()),
            median(runs_b.iter().map(value).collect()),
        );
        let paired = median(
            runs_a
                .iter()
                .zip(runs_b)
                .map(|(x, y)| value(y) / value(x))
                .collect(),
        );
        let _ = writeln!(
            md,
            "| {name} | {ma:.decimals$} | {mb:.decimals$} | {:.3} | {paired:.3} |",
            mb / ma
        );
    }
    let errors = |runs: &[Run]| runs.iter().map(|r| r.sample.errors).sum::<u64>();
    let _ = writeln!(
        md,
        "| errors (all repetitions) | {} | {} | | |\n",
        errors(runs_a),
        errors(runs_b)
    );
    md.push_str("| Rep | Order | Rate A | Rate B | B/A | p50 / p99 ms A | p50 / p99 ms B | CPU µs/append A | CPU µs/append B | Peak RSS MiB A | Peak RSS MiB B |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (rep, (x, y)) in runs_a.iter().zip(runs_b).enumerate() {
        let _ = writeln!(
            md,
            "| {rep} | {} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
            if rep % 2 == 0 { "A B" } else { "B A" },
            x.sample.rate,
            y.sample.rate,
            y.sample.rate / x.sample.rate,
            x.sample.p50_ms,
            x.sample.p99_ms,
            y.sample.p50_ms,
            y.sample.p99_ms,
            x.cpu_us,
            y.cpu_us,
            x.peak_rss_mib,
            y.peak_rss_mib
        );
    }
    md
}
