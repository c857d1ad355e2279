//! The `ha` run's Markdown: one table per item, with its target.

use super::HaArgs;
use super::append::{CONCURRENCY, FACT_BYTES, Measured, PAIR_LANES, SetupRuns, Writer};
use super::catch_up::CatchUp;
use super::failover::Failover;
use crate::now_ms;
use crate::stats::{median, pct_ms};
use std::fmt::Write as _;

/// AppendFact (and AppendFacts) on R3 against raw publish on R3: at least
/// this ratio.
const APPEND_RATIO_MIN: f64 = 1.0;
/// Failover p99 at most this (ms).
const FAILOVER_P99_MAX_MS: f64 = 5000.0;

/// What the run measured, and when.
pub(super) struct Results {
    started_at: i64,
    finished_at: i64,
    load_start: String,
    load_end: String,
    pub(super) append: Vec<SetupRuns>,
    pub(super) catch_up: Vec<CatchUp>,
    pub(super) failover: Option<Failover>,
}

impl Results {
    pub(super) fn started() -> Self {
        Self {
            started_at: now_ms(),
            finished_at: 0,
            load_start: load_average(),
            load_end: String::new(),
            append: Vec::new(),
            catch_up: Vec::new(),
            failover: None,
        }
    }

    pub(super) fn finish(&mut self) {
        self.finished_at = now_ms();
        self.load_end = load_average();
    }
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_string()
}

fn pass(ok: bool) -> &'static str {
    if ok { "pass" } else { "FAIL" }
}

pub(super) fn markdown(a: &HaArgs, r: &Results) -> String {
    let mut md = format!(
        "`ha` at unix ms {}–{} (1-minute load average {} at the start, {} at the end); \
         every nats-server `sync_interval: {}`; host: {} CPUs.\n\n",
        r.started_at,
        r.finished_at,
        r.load_start,
        r.load_end,
        a.nats_sync,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if !r.append.is_empty() {
        append_table(&mut md, a, &r.append);
    }
    if !r.catch_up.is_empty() {
        catch_up_table(&mut md, a, &r.catch_up);
    }
    if let Some(f) = &r.failover {
        failover_table(&mut md, f);
    }
    md
}

/// Median of each process's CPU per fact over the loops: "node 30;
/// nats-server 40 + 38 + 37; clients 9", the first process named `server`
/// (None: not shown, it idles in a raw loop).
fn cpu_line(runs: &[Measured], server: Option<&str>) -> String {
    let processes = runs.first().map_or(0, |m| m.cpu_us.len());
    let per: Vec<f64> = (0..processes)
        .map(|i| median(runs.iter().map(|m| m.cpu_us[i]).collect()))
        .collect();
    let servers: Vec<String> = per.iter().skip(1).map(|v| format!("{v:.0}")).collect();
    let servers = format!("nats-server {}", servers.join(" + "));
    let clients = median(runs.iter().map(|m| m.clients_us).collect());
    match (server, per.first()) {
        (Some(name), Some(cpu)) => format!("{name} {cpu:.0}; {servers}; clients {clients:.0}"),
        _ => format!("{servers}; clients {clients:.0}"),
    }
}

/// A writer's row: rate (each repetition), p50, p99, CPU.
fn writer_row(md: &mut String, store: &str, writer: &str, runs: &[Measured], cpu: Option<&str>) {
    let rates: Vec<String> = runs
        .iter()
        .map(|m| format!("{:.0}", m.sample.rate))
        .collect();
    let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
    let _ = writeln!(
        md,
        "| {store} | {writer} | {:.0} ({}) | {:.2} | {:.2} | {} |",
        med(|m| m.sample.rate),
        rates.join(" / "),
        med(|m| m.sample.p50_ms),
        med(|m| m.sample.p99_ms),
        cpu_line(runs, cpu),
    );
}

/// Each writer's name in the tables and the name of the process serving
/// its RPCs (None: a raw writer, no RPC).
fn writer_names(a: &HaArgs, writer: Writer) -> (String, Option<&'static str>) {
    match writer {
        Writer::Bsfg => (format!("BSFG AppendFact c{CONCURRENCY}"), Some("node")),
        Writer::Batch => (
            format!("BSFG AppendFacts {} × {}", a.batch_requests, a.batch_facts),
            Some("node"),
        ),
        Writer::Raw => ("raw publish".into(), None),
        Writer::RawNarrow => (format!("raw publish, window {CONCURRENCY}"), None),
        Writer::Layout => ("raw publish, node's records".into(), None),
        Writer::AtomicNarrow => (format!("atomic batches of {CONCURRENCY}"), None),
        Writer::AtomicWide => (
            format!("atomic batches of {}", a.batch_requests * a.batch_facts),
            None,
        ),
        Writer::AtomicPair => (
            format!(
                "{PAIR_LANES} atomic batches of {} at once (no fence)",
                CONCURRENCY / PAIR_LANES
            ),
            None,
        ),
        Writer::Echo => (format!("echo c{CONCURRENCY}"), Some("echo")),
        Writer::Bare => (format!("bare append c{CONCURRENCY}"), Some("bare")),
    }
}

const TABLE_WRITERS: [Writer; 10] = [
    Writer::Bsfg,
    Writer::Batch,
    Writer::Raw,
    Writer::Layout,
    Writer::RawNarrow,
    Writer::AtomicWide,
    Writer::AtomicNarrow,
    Writer::AtomicPair,
    Writer::Echo,
    Writer::Bare,
];

fn append_table(md: &mut String, a: &HaArgs, setups: &[SetupRuns]) {
    let _ = writeln!(
        md,
        "AppendFact c{CONCURRENCY} ({FACT_BYTES} B facts), AppendFacts ({} requests × {} \
         facts in flight), raw pipelined publish (window {}, unique `Nats-Msg-Id`) of \
         {FACT_BYTES} B and of the node's records (its subjects, headers and records, to a \
         stream configured as its categories), echo c{CONCURRENCY} and the bare append \
         c{CONCURRENCY} (echo storing each request first); {} × {} s after {} s of warm-up \
         each, order rotating; medians (each repetition); AppendFacts latency per request:\n",
        a.batch_requests,
        a.batch_facts,
        a.window,
        a.reps.max(1),
        a.duration,
        a.warmup
    );
    md.push_str("| Store | Writer | facts/s | p50 ms | p99 ms | CPU µs per fact |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for s in setups {
        let store = format!("R{}", s.replicas);
        for writer in TABLE_WRITERS {
            let (name, server) = writer_names(a, writer);
            writer_row(md, &store, &name, s.of(writer), server);
        }
    }
    ratio_table(md, a, setups);
}

/// How a ratio is read.
#[derive(Clone, Copy)]
enum Reading {
    /// Against the target (on R3).
    Target,
    /// BSFG against the substrate with as many facts in flight.
    EqualInFlight,
    /// A bound on any writer with `CONCURRENCY` facts in flight.
    Ceiling,
    /// The same bound for a writer with no one-batch fence.
    Unfenced,
    /// BSFG against the substrate making the same atomic commits.
    SameCommits,
    /// The substrate's atomic commits against its pipelined publishes.
    SubstrateCommits,
}

/// The ratios read: BSFG's writers against the raw publishers (the targets,
/// on R3; AppendFact c64 also at equal facts in flight), and the ceilings
/// of any writer with 64 facts in flight (raw publish at window 64, the
/// bare append, echo) against raw publish; and the peak RSS.
fn ratio_table(md: &mut String, a: &HaArgs, setups: &[SetupRuns]) {
    const RATIOS: [(Writer, Writer, Reading); 12] = [
        (Writer::Bsfg, Writer::Raw, Reading::Target),
        (Writer::Batch, Writer::Raw, Reading::Target),
        (Writer::Batch, Writer::Layout, Reading::Target),
        (Writer::Batch, Writer::AtomicWide, Reading::SameCommits),
        (Writer::AtomicWide, Writer::Raw, Reading::SubstrateCommits),
        (Writer::Bsfg, Writer::RawNarrow, Reading::EqualInFlight),
        (Writer::Bsfg, Writer::AtomicNarrow, Reading::SameCommits),
        (Writer::AtomicNarrow, Writer::Raw, Reading::Ceiling),
        (Writer::AtomicPair, Writer::Raw, Reading::Unfenced),
        (Writer::RawNarrow, Writer::Raw, Reading::Ceiling),
        (Writer::Bare, Writer::Raw, Reading::Ceiling),
        (Writer::Echo, Writer::Raw, Reading::Ceiling),
    ];
    md.push_str("\n| | ratio of the medians (median of per-repetition ratios) ");
    md.push_str("| peak RSS MiB: node; nats-servers | target |\n|---|---|---|---|\n");
    for s in setups {
        let rss: Vec<String> = s.peak_rss_mib.iter().map(|v| format!("{v:.0}")).collect();
        let rss = format!(
            "{}; {}",
            rss.first().map_or("?", String::as_str),
            rss.get(1..).unwrap_or_default().join(" / "),
        );
        for (writer, against, reading) in RATIOS {
            let (ratio, paired) = ratios(s.of(writer), s.of(against));
            let target = match (reading, s.replicas > 1) {
                (Reading::Target, true) => {
                    format!("≥ {APPEND_RATIO_MIN}×: {}", pass(ratio >= APPEND_RATIO_MIN))
                }
                (Reading::Target, false) => "reference".to_string(),
                (Reading::EqualInFlight, _) => "at equal facts in flight".to_string(),
                (Reading::Ceiling, _) => format!("ceiling for c{CONCURRENCY}"),
                (Reading::Unfenced, _) => format!("ceiling for c{CONCURRENCY}, unfenced"),
                (Reading::SameCommits, _) => "against the same commits, no node".to_string(),
                (Reading::SubstrateCommits, _) => "atomic batches against pipelined".to_string(),
            };
            let _ = writeln!(
                md,
                "| R{} {} / {} | {ratio:.2} ({paired:.2}) | {rss} | {target} |",
                s.replicas,
                writer_names(a, writer).0,
                writer_names(a, against).0,
            );
        }
    }
    md.push('\n');
}

/// `runs` against `raw`: the ratio of the medians and the median of the
/// per-repetition ratios.
fn ratios(runs: &[Measured], raw: &[Measured]) -> (f64, f64) {
    let rate = |runs: &[Measured]| median(runs.iter().map(|m| m.sample.rate).collect());
    let paired = median(
        runs.iter()
            .zip(raw)
            .map(|(b, r)| b.sample.rate / r.sample.rate)
            .collect(),
    );
    (rate(runs) / rate(raw), paired)
}

fn catch_up_table(md: &mut String, a: &HaArgs, runs: &[CatchUp]) {
    let of = |replicas: usize, f: fn(&CatchUp) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|c| c.replicas == replicas)
            .map(f)
            .collect()
    };
    let each = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (r3, r1) = (of(3, |c| c.rate), of(1, |c| c.rate));
    let (m3, m1) = (median(r3.clone()), median(r1.clone()));
    let paired = median(r3.iter().zip(&r1).map(|(x, y)| x / y).collect());
    let _ = writeln!(
        md,
        "One-hop catch-up of {} × {FACT_BYTES} B facts held at an upstream zone on one server \
         (pre-filled c{CONCURRENCY}), order alternating; medians (each run):\n\n\
         | Downstream zone | catch-up facts/s | pre-fill facts/s |\n|---|---|---|\n\
         | R3 (three-server cluster) | {m3:.0} ({}) | {:.0} |\n\
         | R1 (one server) | {m1:.0} ({}) | {:.0} |\n\
         | R3/R1 of the medians (median of per-repetition ratios) | {:.2} ({paired:.2}) | |\n",
        a.backlog_facts,
        each(&r3),
        median(of(3, |c| c.fill_rate)),
        each(&r1),
        median(of(1, |c| c.fill_rate)),
        m3 / m1
    );
}

fn failover_table(md: &mut String, f: &Failover) {
    let mut us: Vec<u32> = f.takeovers_ms.iter().map(|ms| (ms * 1e3) as u32).collect();
    us.sort_unstable();
    let p99 = pct_ms(&us, 99.0);
    let each: Vec<String> = us
        .iter()
        .map(|v| format!("{:.2}", *v as f64 / 1e6))
        .collect();
    let _ = writeln!(
        md,
        "Failover, two nodes on R3, `lease_ttl` 2 s, {} kills (`kill -9`) of the active node, \
         kill → next acknowledged append:\n\n\
         | p50 s | p99 s | each, sorted (s) | facts acknowledged | refusals returned \
         | target p99 ≤ {} s |\n\
         |---|---|---|---|---|---|\n\
         | {:.2} | {:.2} | {} | {} | {} | {} |\n",
        us.len(),
        FAILOVER_P99_MAX_MS / 1e3,
        pct_ms(&us, 50.0) / 1e3,
        p99 / 1e3,
        each.join(", "),
        f.acked,
        f.refusals,
        pass(p99 <= FAILOVER_P99_MAX_MS)
    );
}
