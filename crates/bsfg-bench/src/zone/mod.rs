//! The single-zone run (no subcommand): a real zone node against raw
//! JetStream and the bare RPC stack, one phase after the other on the same
//! processes, then the report.

mod append;
mod drain;
mod latency;
mod raw;
mod report;
mod resources;
mod setup;

use crate::child::scopeguard;
use crate::cli::Args;
use crate::now_ms;
use crate::report::write_results;
use anyhow::bail;
use connectrpc::Protocol;

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let secs = args.duration;
    let reps = args.reps.max(1);
    let protocol = match args.protocol.as_str() {
        "grpc" => Protocol::Grpc,
        "connect" => Protocol::Connect,
        p => bail!("unknown protocol {p}"),
    };
    let dir = std::env::temp_dir().join(format!("bsfg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = scopeguard(dir.clone());
    let bench = setup::start(&args, &dir, reps, protocol).await?;

    let mut r = report::Report { md: String::new() };
    let started_at = now_ms();
    eprintln!("run dir {}", dir.display());

    // 1. raw JetStream publish
    let raw = raw::publish_runs(&bench, args.window, secs, reps).await?;
    // 2. echo (c64 runs right before each AppendFact c64 256 B repetition,
    // in 3, so that both sides of the headline ratio see the same load
    // from other tenants of this machine)
    let echo_c1 = append::echo_c1_runs(&bench, secs, reps).await;
    // 3. AppendFact
    let append = append::append_runs(&bench, secs, reps).await?;
    // 3b. AppendFacts
    let shape = (args.batch_requests, args.batch_facts);
    let batch = append::batch_runs(&bench, shape, secs, reps).await;
    // 5. p99 at half the max AppendFact rate (open loop)
    let open = latency::open_loop_runs(&bench, &append, secs, reps).await?;
    // 4. drain
    let drain = drain::drain_runs(&bench, args.drain_facts, args.window, reps).await?;
    let resources = resources::measure(&bench, &dir).await?;

    let measured = report::Measured {
        args: &args,
        secs,
        reps,
        protocol,
        started_at,
        raw,
        echo_c1,
        append,
        batch,
        open,
        drain,
        resources,
    };
    report::write(&mut r, &measured);
    write_results(&args.out, &r.md)?;
    eprintln!("results written to {}", args.out.display());
    bench.stop();
    Ok(())
}
