//! Phases 2 and 3: the bare echo RPC (c1 here; c64 right before each
//! AppendFact c64 256 B repetition, with the bare append) and the AppendFact
//! closed loops, by concurrency and fact size; then the AppendFacts closed
//! loop (several 256 B facts per request).

use super::setup::Bench;
use crate::drive::closed_loop;
use crate::echo_proto::bench::v1::EchoServiceClient;
use crate::rpc::{append_batch_closed_loop, append_closed_loop, echo_once};
use crate::run_id;
use crate::stats::Sample;
use async_nats::jetstream::{self, stream};
use bsfg_testkit::procfs::cpu_seconds;
use connectrpc::client::SharedHttp2Connection;

/// The AppendFact closed loops and the c64 echo loops paired with them.
#[derive(Default)]
pub(super) struct AppendRuns {
    /// (concurrency, object_json bytes, repetitions) by configuration.
    pub(super) results: Vec<(usize, usize, Vec<Sample>)>,
    /// Node and nats-server CPU seconds by configuration (the closed loops
    /// only): c1 and c64 cost very differently per append, and the phase
    /// total mixes them. (concurrency, size, node µs, nats-server µs) per
    /// append.
    pub(super) cpu_by_config: Vec<(usize, usize, f64, f64)>,
    /// What a fact costs in JetStream's storage (record, subject, headers),
    /// by payload size: the capacity a category's bytes buy.
    pub(super) stored_bytes_per_fact: Vec<(usize, f64)>,
    /// Echo c64, each repetition right before its AppendFact c64 one.
    pub(super) echo_samples: Vec<Sample>,
    /// The echo server's CPU seconds during echo c64.
    pub(super) echo_cpu: f64,
    /// The bare append c64, right after each echo c64 repetition.
    pub(super) bare_samples: Vec<Sample>,
    /// Requests answered by echo c64, all repetitions.
    pub(super) echo_total: f64,
    /// Node CPU seconds during the whole phase.
    pub(super) append_cpu: f64,
    /// nats-server CPU seconds during the whole phase.
    pub(super) append_nats_cpu: f64,
    /// Facts appended in the whole phase.
    pub(super) append_total: f64,
}

/// The AppendFacts closed loop's repetitions (256 B facts).
pub(super) struct BatchRuns {
    /// (requests in flight, facts per request).
    pub(super) shape: (usize, usize),
    /// facts/s and per-request latency, by repetition.
    pub(super) samples: Vec<Sample>,
    /// Node and nats-server CPU per fact (µs), all repetitions.
    pub(super) node_cpu_us: f64,
    pub(super) nats_cpu_us: f64,
}

pub(super) async fn batch_runs(
    b: &Bench,
    shape: (usize, usize),
    secs: f64,
    reps: usize,
) -> BatchRuns {
    let (node_before, nats_before) = (cpu_seconds(b.node.pid()), cpu_seconds(b.nats.pid()));
    let mut samples = Vec::new();
    for rep in 0..reps {
        let tag = format!("{}-b{}x{}-{rep}", run_id(), shape.0, shape.1);
        let s = append_batch_closed_loop(&b.bsfg, shape, 256, secs, tag).await;
        eprintln!(
            "append_facts {}x{} 256B rep {rep}: {:.0} facts/s p50 {:.2} p99 {:.2} ms, errors {}",
            shape.0, shape.1, s.rate, s.p50_ms, s.p99_ms, s.errors
        );
        samples.push(s);
    }
    let facts: f64 = samples.iter().map(|x| x.rate * secs).sum::<f64>().max(1.0);
    BatchRuns {
        shape,
        node_cpu_us: (cpu_seconds(b.node.pid()) - node_before) * 1e6 / facts,
        nats_cpu_us: (cpu_seconds(b.nats.pid()) - nats_before) * 1e6 / facts,
        samples,
    }
}

pub(super) async fn echo_c1_runs(b: &Bench, secs: f64, reps: usize) -> Vec<Sample> {
    let mut echo_c1 = Vec::new();
    for rep in 0..reps {
        let c = b.echo_client.clone();
        let s = closed_loop(1, secs, move |_, _| echo_once(&c)).await;
        eprintln!("echo c1 rep {rep}: {:.0} req/s", s.rate);
        echo_c1.push(s);
    }
    echo_c1
}

pub(super) async fn append_runs(b: &Bench, secs: f64, reps: usize) -> anyhow::Result<AppendRuns> {
    let mut runs = AppendRuns::default();
    let cpu_before = cpu_seconds(b.node.pid());
    let nats_cpu_before = cpu_seconds(b.nats.pid());
    for &(conc, size) in &[(1usize, 256usize), (64, 256), (1, 4096), (64, 4096)] {
        append_config(b, &mut runs, conc, size, secs, reps).await?;
    }
    runs.echo_total = runs.echo_samples.iter().map(|x| x.rate * secs).sum();
    runs.append_cpu = cpu_seconds(b.node.pid()) - cpu_before;
    runs.append_nats_cpu = cpu_seconds(b.nats.pid()) - nats_cpu_before;
    runs.append_total = runs
        .results
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|x| x.rate * secs))
        .sum();
    Ok(runs)
}

/// One configuration's repetitions, added to `runs`.
async fn append_config(
    b: &Bench,
    runs: &mut AppendRuns,
    conc: usize,
    size: usize,
    secs: f64,
    reps: usize,
) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    let (mut config_node_cpu, mut config_nats_cpu) = (0.0, 0.0);
    let state_before = stored_state(&b.js).await?;
    for rep in 0..reps {
        if (conc, size) == (64, 256) {
            let (s, cpu) = echo_c64("echo", &b.echo_client, b.echo.pid(), rep, secs).await;
            runs.echo_samples.push(s);
            runs.echo_cpu += cpu;
            runs.bare_samples.push(
                echo_c64("bare append", &b.bare_client, b.bare.pid(), rep, secs)
                    .await
                    .0,
            );
        }
        let tag = format!("{}-a{conc}-{size}-{rep}", run_id());
        let (node_before, nats_before) = (cpu_seconds(b.node.pid()), cpu_seconds(b.nats.pid()));
        let s = append_closed_loop(&b.bsfg, conc, size, secs, tag).await;
        config_node_cpu += cpu_seconds(b.node.pid()) - node_before;
        config_nats_cpu += cpu_seconds(b.nats.pid()) - nats_before;
        eprintln!(
            "append c{conc} {size}B rep {rep}: {:.0} facts/s p50 {:.2} p99 {:.2} ms",
            s.rate, s.p50_ms, s.p99_ms
        );
        samples.push(s);
    }
    let appended: f64 = samples.iter().map(|x| x.rate * secs).sum();
    if conc == 64 {
        let state_after = stored_state(&b.js).await?;
        let stored = state_after
            .messages
            .saturating_sub(state_before.messages)
            .max(1);
        runs.stored_bytes_per_fact.push((
            size,
            state_after.bytes.saturating_sub(state_before.bytes) as f64 / stored as f64,
        ));
    }
    runs.cpu_by_config.push((
        conc,
        size,
        config_node_cpu * 1e6 / appended.max(1.0),
        config_nats_cpu * 1e6 / appended.max(1.0),
    ));
    runs.results.push((conc, size, samples));
    Ok(())
}

/// The node's operational stream's state (messages and bytes stored).
async fn stored_state(js: &jetstream::Context) -> anyhow::Result<stream::State> {
    anyhow::Ok(
        js.get_stream("facts_operational")
            .await?
            .info()
            .await?
            .state
            .clone(),
    )
}

/// One c64 closed loop against an echo server: its sample and the
/// server's CPU seconds meanwhile.
async fn echo_c64(
    what: &'static str,
    client: &EchoServiceClient<SharedHttp2Connection>,
    pid: u32,
    rep: usize,
    secs: f64,
) -> (Sample, f64) {
    let c = client.clone();
    let cpu_before = cpu_seconds(pid);
    let s = closed_loop(64, secs, move |_, _| echo_once(&c)).await;
    eprintln!(
        "{what} c64 rep {rep}: {:.0} req/s p99 {:.2} ms",
        s.rate, s.p99_ms
    );
    (s, cpu_seconds(pid) - cpu_before)
}
