//! bsfg-bench: measures a real BSFG zone node against its two lower bounds,
//! raw JetStream and the bare RPC stack, in one run.
//!
//! Processes: the bench starts its own nats-server (free loopback port,
//! temporary store, `jetstream { domain: bench }`), a release `bsfg serve`
//! node pointed at it, and two echo-server processes (this binary,
//! `echo-server` subcommand): the bare RPC stack, and a bare append (an echo
//! that stores each request in JetStream before it answers). Clients run in
//! this process on a multi-threaded tokio runtime. Every configuration runs
//! for a fixed duration (or a fixed count for drains), `--reps` times; the
//! report gives medians.

mod ab;
mod child;
mod cli;
mod crossing;
mod drive;
mod echo_server;
mod key_index;
mod metrics;
mod node_config;
mod publish;
mod report;
mod rpc;
mod stats;
mod substrate;

mod echo_proto {
    #![allow(missing_docs, clippy::all)]
    connectrpc::include_generated!();
}

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bsfg_proto::bsfg::v1::{
    BoundaryServiceClient, ConfirmReceiptRequest, FetchFactsRequest, StoredFact,
};
use buffa::Message as _;
use child::{
    cpu_seconds, free_port, rss_kib, scopeguard, spawn_logged, start_nats_server, wait_tcp,
};
use clap::Parser;
use cli::{Args, Cmd};
use connectrpc::Protocol;
use connectrpc::client::SharedHttp2Connection;
use drive::{closed_loop, open_loop};
use echo_proto::bench::v1::EchoServiceClient;
use futures::StreamExt;
use metrics::{histogram_buckets, histogram_quantile_between, scrape_metrics, wait_for_key_index};
use node_config::{PLAINTEXT_TLS, node_config};
use publish::{
    LAYOUT_COPY, create_layout_copy_stream, create_plain_stream, node_layout_message,
    publish_acked, raw_publish,
};
use report::write_results;
use rpc::{append_closed_loop, append_request, echo_once, rpc_client};
use stats::{Sample, fmt_rates, median, summarize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.command {
        Some(Cmd::EchoServer { addr, jetstream }) => {
            rt.block_on(echo_server::echo_server(addr.clone(), jetstream.clone()))
        }
        Some(Cmd::Crossing(a)) => rt.block_on(crossing::run(a.clone())),
        Some(Cmd::Substrate(a)) => rt.block_on(substrate::run(a.clone())),
        Some(Cmd::KeyIndex(a)) => key_index::run(a.clone()),
        Some(Cmd::Ab(a)) => rt.block_on(ab::run(a.clone())),
        None => rt.block_on(run(args)),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A canonical JSON object of exactly `size` bytes.
pub(crate) fn object_json(size: usize) -> String {
    let base = r#"{"pad":""}"#.len();
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(size.saturating_sub(base)))
}

static RUN_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
pub(crate) fn run_id() -> &'static str {
    RUN_ID.get_or_init(|| format!("{:x}", now_ms()))
}

// ------------------------------------------------------------------ 4. drain

/// Pre-fills the node's `drain` category with `count` facts, published
/// straight to JetStream exactly as FactLog::append lays them out.
async fn prefill(js: &jetstream::Context, count: u64, window: usize) -> anyhow::Result<f64> {
    let object = object_json(256);
    let published = raw_publish(js, window, f64::INFINITY, count, |i| {
        node_layout_message(
            "drain",
            &format!("drain:PlantA/B{i}"),
            &format!("drain-{}-{i}", run_id()),
            &object,
        )
    })
    .await?;
    anyhow::ensure!(
        published.errors == 0 && published.done == count,
        "prefill: {} of {count} facts acknowledged",
        published.done
    );
    Ok(published.sample().rate)
}

async fn drain_bsfg(
    client: &BoundaryServiceClient<SharedHttp2Connection>,
    consumer: &str,
    count: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut got = 0u64;
    while got < count {
        let request = FetchFactsRequest {
            consumer_name: consumer.into(),
            limit: 1000,
            max_bytes: 8 << 20,
            wait_ms: 1000,
            ..Default::default()
        };
        let response = client.fetch_facts(request).await?.into_owned();
        let Some(last) = response.facts.last() else {
            bail!("FetchFacts returned nothing after {got} facts")
        };
        got += response.facts.len() as u64;
        let confirm = ConfirmReceiptRequest {
            consumer_name: consumer.into(),
            offset: last.offset,
            ..Default::default()
        };
        client.confirm_receipt(confirm).await?;
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

async fn drain_raw(js: &jetstream::Context, name: &str, count: u64) -> anyhow::Result<f64> {
    let stream = js.get_stream("facts_drain").await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: 20_000,
            max_batch: 10_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut got = 0u64;
    while got < count {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .max_bytes(8 << 20)
            .messages()
            .await?;
        let mut last = None;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            // Decode like the node does, so both sides pay for it.
            let _ = StoredFact::decode_from_slice(&m.payload)?;
            got += 1;
            last = Some(m);
        }
        let Some(last) = last else {
            bail!("raw fetch returned nothing after {got}")
        };
        // Cumulative ack with server confirmation, as ConfirmReceipt does.
        last.double_ack()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

// ------------------------------------------------------------------ main run

struct Report {
    md: String,
}
impl Report {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        self.md.push_str(s.as_ref());
        self.md.push('\n');
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
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

    // nats-server
    let nats_port = free_port()?;
    let nats = start_nats_server(
        &args.nats_server,
        &dir,
        "bench",
        nats_port,
        &format!("  sync_interval: {}\n", args.nats_sync),
        "",
    )
    .await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let nc = async_nats::ConnectOptions::new().connect(&nats_url).await?;
    let mut js = jetstream::new(nc.clone());
    js.set_timeout(Duration::from_secs(10));

    // node
    let (port, ops) = (free_port()?, free_port()?);
    let node_toml = dir.join("node.toml");
    std::fs::write(
        &node_toml,
        node_config(port, ops, nats_port, reps, &dir, PLAINTEXT_TLS),
    )?;
    let node_log = dir.join("node.log");
    let node = spawn_logged(
        std::process::Command::new(&args.bsfg)
            .arg("serve")
            .arg("--config")
            .arg(&node_toml),
        &node_log,
    )
    .with_context(|| format!("starting {}", args.bsfg.display()))?;
    wait_tcp(port, "bsfg node", &node_log).await?;

    // echo server (separate process, same RPC stack as the node)
    let echo_port = free_port()?;
    let echo_log = dir.join("echo.log");
    let echo = spawn_logged(
        std::process::Command::new(std::env::current_exe()?)
            .arg("echo-server")
            .arg(format!("127.0.0.1:{echo_port}")),
        &echo_log,
    )?;
    wait_tcp(echo_port, "echo server", &echo_log).await?;
    // The bare append: the same echo server, storing each request in
    // JetStream before it answers (AppendFact's floor, see `Echo`).
    create_plain_stream(&js, "bareappend").await?;
    let bare_port = free_port()?;
    let bare_log = dir.join("bare-append.log");
    let bare = spawn_logged(
        std::process::Command::new(std::env::current_exe()?)
            .arg("echo-server")
            .arg(format!("127.0.0.1:{bare_port}"))
            .arg("--jetstream")
            .arg(format!("nats://127.0.0.1:{nats_port}")),
        &bare_log,
    )?;
    wait_tcp(bare_port, "bare append server", &bare_log).await?;

    let bsfg = rpc_client(port, protocol, None, BoundaryServiceClient::new).await?;
    let echo_client = rpc_client(echo_port, protocol, None, EchoServiceClient::new).await?;
    let bare_client = rpc_client(bare_port, protocol, None, EchoServiceClient::new).await?;

    let mut r = Report { md: String::new() };
    let started_at = now_ms();
    eprintln!("run dir {}", dir.display());

    // 1. raw JetStream publish
    create_plain_stream(&js, "rawpub").await?;
    create_layout_copy_stream(&js).await?;
    let mut raw_pub = Vec::new();
    let (mut raw_guarded, mut raw_cpu_us, mut guarded_cpu_us) =
        (Vec::new(), Vec::new(), Vec::new());
    let payload_256 = bytes::Bytes::from(vec![b'x'; 256]);
    let object_256 = object_json(256);
    for rep in 0..reps {
        let cpu_before = cpu_seconds(nats.pid());
        let s = raw_publish(&js, args.window, secs, u64::MAX, |i| {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}-{rep}-{i}", run_id()).as_str());
            (format!("rawpub.{}", i % 64), headers, payload_256.clone())
        })
        .await?
        .sample();
        raw_cpu_us.push((cpu_seconds(nats.pid()) - cpu_before) * 1e6 / (s.rate * secs).max(1.0));
        eprintln!("raw publish rep {rep}: {:.0} msg/s", s.rate);
        raw_pub.push(s);
        // What AppendFact asks of JetStream, without the node: the same
        // subjects, headers and records, into a stream configured like the
        // node's.
        let cpu_before = cpu_seconds(nats.pid());
        let s = raw_publish(&js, args.window, secs, u64::MAX, |i| {
            node_layout_message(
                LAYOUT_COPY,
                "batch:PlantA/B1042",
                &format!("{}-guarded-{rep}-{i}", run_id()),
                &object_256,
            )
        })
        .await?
        .sample();
        guarded_cpu_us
            .push((cpu_seconds(nats.pid()) - cpu_before) * 1e6 / (s.rate * secs).max(1.0));
        eprintln!("raw guarded publish rep {rep}: {:.0} msg/s", s.rate);
        raw_guarded.push(s);
    }

    // 2. echo (c64 runs right before each AppendFact c64 256 B repetition,
    // below, so that both sides of the headline ratio see the same load
    // from other tenants of this machine)
    let mut echo_samples = Vec::new();
    let mut echo_cpu = 0.0;
    // One c64 closed loop against an echo server: its sample and the
    // server's CPU seconds meanwhile.
    let echo_c64 = |what: &'static str,
                    client: &EchoServiceClient<SharedHttp2Connection>,
                    pid: u32,
                    rep: usize| {
        let c = client.clone();
        async move {
            let cpu_before = cpu_seconds(pid);
            let s = closed_loop(64, secs, move |_, _| echo_once(&c)).await;
            eprintln!(
                "{what} c64 rep {rep}: {:.0} req/s p99 {:.2} ms",
                s.rate, s.p99_ms
            );
            (s, cpu_seconds(pid) - cpu_before)
        }
    };
    let mut bare_samples = Vec::new();
    let mut echo_c1 = Vec::new();
    for rep in 0..reps {
        let c = echo_client.clone();
        let s = closed_loop(1, secs, move |_, _| echo_once(&c)).await;
        eprintln!("echo c1 rep {rep}: {:.0} req/s", s.rate);
        echo_c1.push(s);
    }

    // 3. AppendFact
    let mut append_results = Vec::new();
    // Node and nats-server CPU seconds by configuration (the closed loops
    // only): c1 and c64 cost very differently per append, and the phase
    // total below mixes them.
    let mut append_cpu_by_config: Vec<(usize, usize, f64, f64)> = Vec::new();
    // What a fact costs in JetStream's storage (record, subject, headers),
    // by payload size: the capacity a category's bytes buy.
    let mut stored_bytes_per_fact: Vec<(usize, f64)> = Vec::new();
    let stored_state = || async {
        anyhow::Ok(
            js.get_stream("facts_operational")
                .await?
                .info()
                .await?
                .state
                .clone(),
        )
    };
    let cpu_before = cpu_seconds(node.pid());
    let nats_cpu_before = cpu_seconds(nats.pid());
    for &(conc, size) in &[(1usize, 256usize), (64, 256), (1, 4096), (64, 4096)] {
        let mut samples = Vec::new();
        let (mut config_node_cpu, mut config_nats_cpu) = (0.0, 0.0);
        let state_before = stored_state().await?;
        for rep in 0..reps {
            if (conc, size) == (64, 256) {
                let (s, cpu) = echo_c64("echo", &echo_client, echo.pid(), rep).await;
                echo_samples.push(s);
                echo_cpu += cpu;
                bare_samples.push(
                    echo_c64("bare append", &bare_client, bare.pid(), rep)
                        .await
                        .0,
                );
            }
            let tag = format!("{}-a{conc}-{size}-{rep}", run_id());
            let (node_before, nats_before) = (cpu_seconds(node.pid()), cpu_seconds(nats.pid()));
            let s = append_closed_loop(&bsfg, conc, size, secs, tag).await;
            config_node_cpu += cpu_seconds(node.pid()) - node_before;
            config_nats_cpu += cpu_seconds(nats.pid()) - nats_before;
            eprintln!(
                "append c{conc} {size}B rep {rep}: {:.0} facts/s p50 {:.2} p99 {:.2} ms",
                s.rate, s.p50_ms, s.p99_ms
            );
            samples.push(s);
        }
        let appended: f64 = samples.iter().map(|x| x.rate * secs).sum();
        if conc == 64 {
            let state_after = stored_state().await?;
            let stored = state_after
                .messages
                .saturating_sub(state_before.messages)
                .max(1);
            stored_bytes_per_fact.push((
                size,
                state_after.bytes.saturating_sub(state_before.bytes) as f64 / stored as f64,
            ));
        }
        append_cpu_by_config.push((
            conc,
            size,
            config_node_cpu * 1e6 / appended.max(1.0),
            config_nats_cpu * 1e6 / appended.max(1.0),
        ));
        append_results.push((conc, size, samples));
    }
    let echo_total: f64 = echo_samples.iter().map(|x| x.rate * secs).sum();
    let append_cpu = cpu_seconds(node.pid()) - cpu_before;
    let append_nats_cpu = cpu_seconds(nats.pid()) - nats_cpu_before;
    let append_total: f64 = append_results
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|x| x.rate * secs))
        .sum();

    // 5. p99 at half the max AppendFact rate (open loop)
    let max_rate = append_results
        .iter()
        .filter(|(_, size, _)| *size == 256)
        .map(|(_, _, s)| summarize(s).rate)
        .fold(0.0, f64::max);
    let half = max_rate * 0.5;
    // The same schedule offered to the bare echo RPC and to raw JetStream
    // (publish with Nats-Msg-Id, await the ack) in each repetition: the
    // tails the RPC stack and the substrate have by themselves at this rate.
    let (mut open, mut open_echo, mut open_raw, mut open_guarded, mut open_bare) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let payload: Arc<str> = object_json(256).into();
    let mut node_side = Vec::new();
    for rep in 0..reps {
        let before = scrape_metrics(ops).await?;
        let (c, p, tag) = (
            bsfg.clone(),
            payload.clone(),
            format!("{}-open-{rep}", run_id()),
        );
        let s = open_loop(half, secs, tag.clone(), move |i| {
            let (c, request) = (c.clone(), append_request(format!("{tag}-{i}"), &p));
            async move {
                match c.append_fact(request).await {
                    Ok(_) => true,
                    Err(e) => {
                        eprintln!("open-loop append error: {e}");
                        false
                    }
                }
            }
        })
        .await;
        eprintln!(
            "open loop {half:.0}/s rep {rep}: achieved {:.0}/s p50 {:.2} p99 {:.2} ms",
            s.rate, s.p50_ms, s.p99_ms
        );
        // The same appends as the node timed them (handler entry to answer),
        // at its histogram's bucket resolution.
        let after = scrape_metrics(ops).await?;
        let (b, a) = (
            histogram_buckets(&before, "bsfg_append_latency_seconds"),
            histogram_buckets(&after, "bsfg_append_latency_seconds"),
        );
        let (b_batch, a_batch) = (
            histogram_buckets(&before, "bsfg_commit_batch_facts"),
            histogram_buckets(&after, "bsfg_commit_batch_facts"),
        );
        let inside = (
            histogram_quantile_between(&b, &a, 50.0) * 1e3,
            histogram_quantile_between(&b, &a, 99.0) * 1e3,
        );
        eprintln!(
            "  node-side: p50 <= {:.1} ms, p99 <= {:.1} ms; batch p50 <= {} p99 <= {} facts",
            inside.0,
            inside.1,
            histogram_quantile_between(&b_batch, &a_batch, 50.0),
            histogram_quantile_between(&b_batch, &a_batch, 99.0)
        );
        node_side.push(inside);
        open.push(s);
        let c = echo_client.clone();
        let s = open_loop(
            half,
            secs,
            format!("{}-open-echo-{rep}", run_id()),
            move |_| echo_once(&c),
        )
        .await;
        eprintln!(
            "open loop echo rep {rep}: p50 {:.2} p99 {:.2} ms",
            s.p50_ms, s.p99_ms
        );
        open_echo.push(s);
        let c = bare_client.clone();
        let s = open_loop(
            half,
            secs,
            format!("{}-open-bare-{rep}", run_id()),
            move |_| echo_once(&c),
        )
        .await;
        eprintln!(
            "open loop bare append rep {rep}: p50 {:.2} p99 {:.2} ms",
            s.p50_ms, s.p99_ms
        );
        open_bare.push(s);
        let (j, tag) = (js.clone(), format!("{}-open-raw-{rep}", run_id()));
        let s = open_loop(half, secs, tag.clone(), move |i| {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{tag}-{i}").as_str());
            publish_acked(
                &j,
                format!("rawpub.{}", i % 64),
                headers,
                bytes::Bytes::from(vec![b'x'; 256]),
            )
        })
        .await;
        eprintln!(
            "open loop raw JetStream rep {rep}: p50 {:.2} p99 {:.2} ms",
            s.p50_ms, s.p99_ms
        );
        open_raw.push(s);
        // The same publishes the node makes (its subjects, headers and
        // records, a stream configured like its own), without the node: the
        // substrate's share of the AppendFact tail.
        let (j, p, tag) = (
            js.clone(),
            payload.clone(),
            format!("{}-open-guarded-{rep}", run_id()),
        );
        let s = open_loop(half, secs, tag.clone(), move |i| {
            let (subject, headers, body) =
                node_layout_message(LAYOUT_COPY, "batch:PlantA/B1042", &format!("{tag}-{i}"), &p);
            publish_acked(&j, subject, headers, body)
        })
        .await;
        eprintln!(
            "open loop raw guarded rep {rep}: p50 {:.2} p99 {:.2} ms",
            s.p50_ms, s.p99_ms
        );
        open_guarded.push(s);
    }

    // 4. drain
    let drain_n = args.drain_facts;
    let prefill_rate = prefill(&js, drain_n, args.window).await?;
    eprintln!("prefilled {drain_n} facts at {prefill_rate:.0}/s");
    let drain_last = js
        .get_stream("facts_drain")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let read_in_secs = wait_for_key_index(ops, "drain", drain_last).await?;
    eprintln!("the node's key index read the pre-fill in after {read_in_secs:.1} s");
    let mut drain_b = Vec::new();
    let mut drain_r = Vec::new();
    // CPU per drained fact of each process (node, nats-server, this client),
    // which the shared machine's noise moves less than the rates.
    let pids = [node.pid(), nats.pid(), std::process::id()];
    let cpu_now = || pids.map(cpu_seconds);
    let per_fact_us = |before: [f64; 3], after: [f64; 3]| {
        [0, 1, 2].map(|i| (after[i] - before[i]) * 1e6 / drain_n as f64)
    };
    let (mut drain_b_cpu, mut drain_r_cpu) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Alternate the order so neither side always gets the warm page cache.
        let bsfg_drain = async {
            let before = cpu_now();
            let rate = drain_bsfg(&bsfg, &format!("drain{}", rep + 1), drain_n).await?;
            anyhow::Ok((rate, per_fact_us(before, cpu_now())))
        };
        let raw_drain = async {
            let before = cpu_now();
            let rate = drain_raw(&js, &format!("raw{}", rep + 1), drain_n).await?;
            anyhow::Ok((rate, per_fact_us(before, cpu_now())))
        };
        let ((b, b_cpu), (raw, raw_cpu)) = if rep % 2 == 0 {
            let b = bsfg_drain.await?;
            (b, raw_drain.await?)
        } else {
            let raw = raw_drain.await?;
            (bsfg_drain.await?, raw)
        };
        eprintln!(
            "drain rep {rep}: bsfg {b:.0}/s raw {raw:.0}/s; CPU µs/fact node+nats+client bsfg {b_cpu:.1?} raw {raw_cpu:.1?}"
        );
        drain_b.push(Sample {
            rate: b,
            ..Default::default()
        });
        drain_r.push(Sample {
            rate: raw,
            ..Default::default()
        });
        drain_b_cpu.push(b_cpu);
        drain_r_cpu.push(raw_cpu);
    }

    // nats-server's periodic stream-state file for the node's stream: it
    // holds a record per subject (per kind now; per fact before the key index).
    let state_file_mib = std::fs::metadata(
        dir.join("js-bench/jetstream/$G/streams/facts_operational/msgs/index.db"),
    )
    .map_or_else(
        |_| "not written yet".to_string(),
        |m| format!("{:.1} MiB", m.len() as f64 / 1048576.0),
    );
    let operational_facts = js
        .get_stream("facts_operational")
        .await?
        .info()
        .await?
        .state
        .messages;
    let (node_hwm, node_rss) = rss_kib(node.pid());
    let (nats_hwm, _) = rss_kib(nats.pid());
    let (echo_hwm, _) = rss_kib(echo.pid());
    let node_cpu_total = cpu_seconds(node.pid());

    // ---------------------------------------------------------- report
    let raw_s = summarize(&raw_pub);
    let raw_guarded_s = summarize(&raw_guarded);
    let echo_s = summarize(&echo_samples);
    let echo1_s = summarize(&echo_c1);
    let a = |c: usize, sz: usize| {
        summarize(
            &append_results
                .iter()
                .find(|(cc, s, _)| *cc == c && *s == sz)
                .unwrap()
                .2,
        )
    };
    let a64 = a(64, 256);
    let open_s = summarize(&open);
    let open_echo_s = summarize(&open_echo);
    let bare_s = summarize(&bare_samples);
    let open_bare_s = summarize(&open_bare);
    let open_raw_s = summarize(&open_raw);
    let open_guarded_s = summarize(&open_guarded);
    let db = summarize(&drain_b);
    let dr = summarize(&drain_r);
    let ratio_append = a64.rate / echo_s.rate;
    let ratio_drain = db.rate / dr.rate;
    let rss_mib = node_hwm as f64 / 1024.0;
    let pf = |ok: bool| if ok { "**PASS**" } else { "**FAIL**" };

    r.line("## Results");
    r.line("");
    r.line(format!(
        "Generated by `bsfg-bench` at unix ms {started_at}; {} s per configuration, {} repetitions (medians; individual runs in brackets), RPC protocol {:?} over HTTP/2 (h2c), {} drained facts, host: {} CPUs.",
        secs,
        reps,
        protocol,
        drain_n,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    r.line("");
    r.line("### Targets");
    r.line("");
    r.line("| Target | Measured | Result |");
    r.line("|---|---|---|");
    // Each echo c64 repetition ran right before its AppendFact c64 one.
    let a64_runs = &append_results
        .iter()
        .find(|(c, s, _)| (*c, *s) == (64, 256))
        .expect("c64 256 B measured")
        .2;
    let paired: Vec<String> = a64_runs
        .iter()
        .zip(&echo_samples)
        .map(|(a, e)| format!("{:.2}", a.rate / e.rate))
        .collect();
    r.line(format!(
        "| AppendFact c64 ≥ 0.5 × echo rate | {:.0} / {:.0} = {:.2}× (paired repetitions: {}; the bare append, an echo that stores each request in JetStream first: {:.0} / {:.0} = {:.2}×) | {} |",
        a64.rate,
        echo_s.rate,
        ratio_append,
        paired.join(" / "),
        bare_s.rate,
        echo_s.rate,
        bare_s.rate / echo_s.rate,
        pf(ratio_append >= 0.5)
    ));
    r.line(format!(
        "| p99 ≤ 5 ms at half max rate ({:.0} appends/s offered) | p99 {:.2} ms (p50 {:.2} ms); same schedule: raw JetStream publish+ack p99 {:.2} ms, the same in the node's layout p99 {:.2} ms, echo p99 {:.2} ms, bare append (echo + JetStream publish+ack) p99 {:.2} ms | {} |",
        half,
        open_s.p99_ms,
        open_s.p50_ms,
        open_raw_s.p99_ms,
        open_guarded_s.p99_ms,
        open_echo_s.p99_ms,
        open_bare_s.p99_ms,
        pf(open_s.p99_ms <= 5.0)
    ));
    r.line(format!(
        "| node peak RSS ≤ 64 MiB | VmHWM {:.1} MiB | {} |",
        rss_mib,
        pf(rss_mib <= 64.0)
    ));
    r.line(format!(
        "| drain ≥ 0.5 × raw pull consumer | {:.0} / {:.0} = {:.2}× | {} |",
        db.rate,
        dr.rate,
        ratio_drain,
        pf(ratio_drain >= 0.5)
    ));
    r.line("");
    r.line("### Throughput and latency");
    r.line("");
    r.line("| Benchmark | Rate (median) | p50 ms | p99 ms | Runs | Errors |");
    r.line("|---|---|---|---|---|---|");
    r.line(format!(
        "| Raw JetStream publish, 256 B, Nats-Msg-Id, window {} | {:.0} msg/s | – | – | {} | {} |",
        args.window,
        raw_s.rate,
        fmt_rates(&raw_pub),
        raw_s.errors
    ));
    r.line(format!(
        "| Raw JetStream publish in the node's layout (its subjects, headers, record; a stream configured like its own), window {} | {:.0} msg/s | – | – | {} | {} |",
        args.window,
        raw_guarded_s.rate,
        fmt_rates(&raw_guarded),
        raw_guarded_s.errors
    ));
    r.line(format!(
        "| Echo unary, 256 B, c1 | {:.0} req/s | {:.3} | {:.3} | {} | {} |",
        echo1_s.rate,
        echo1_s.p50_ms,
        echo1_s.p99_ms,
        fmt_rates(&echo_c1),
        echo1_s.errors
    ));
    r.line(format!(
        "| Echo unary, 256 B, c64 | {:.0} req/s | {:.3} | {:.3} | {} | {} |",
        echo_s.rate,
        echo_s.p50_ms,
        echo_s.p99_ms,
        fmt_rates(&echo_samples),
        echo_s.errors
    ));
    r.line(format!(
        "| Bare append (the echo server storing each request in JetStream, Nats-Msg-Id, before it answers), 256 B, c64 | {:.0} req/s | {:.3} | {:.3} | {} | {} |",
        bare_s.rate,
        bare_s.p50_ms,
        bare_s.p99_ms,
        fmt_rates(&bare_samples),
        bare_s.errors
    ));
    for (c, sz, samples) in &append_results {
        let s = summarize(samples);
        r.line(format!(
            "| AppendFact, object_json {} B, c{} | {:.0} facts/s | {:.3} | {:.3} | {} | {} |",
            sz,
            c,
            s.rate,
            s.p50_ms,
            s.p99_ms,
            fmt_rates(samples),
            s.errors
        ));
    }
    r.line(format!(
        "| AppendFact open loop at 0.5 × {:.0} = {:.0}/s offered, 256 B | {:.0} facts/s | {:.3} | {:.3} | {} | {} |",
        max_rate,
        half,
        open_s.rate,
        open_s.p50_ms,
        open_s.p99_ms,
        fmt_rates(&open),
        open_s.errors
    ));
    for (what, sample, runs) in [
        ("Echo unary", &open_echo_s, &open_echo),
        (
            "Bare append (echo + JetStream publish + ack)",
            &open_bare_s,
            &open_bare,
        ),
        (
            "Raw JetStream publish + ack, Nats-Msg-Id",
            &open_raw_s,
            &open_raw,
        ),
        (
            "Raw JetStream publish + ack in the node's layout (its subjects, headers, record; a stream configured like its own)",
            &open_guarded_s,
            &open_guarded,
        ),
    ] {
        r.line(format!(
            "| {what}, open loop at the same {:.0}/s, 256 B | {:.0} /s | {:.3} | {:.3} | {} | {} |",
            half,
            sample.rate,
            sample.p50_ms,
            sample.p99_ms,
            fmt_rates(runs),
            sample.errors
        ));
    }
    r.line(format!(
        "| FetchFacts(limit 1000) + ConfirmReceipt drain | {:.0} facts/s | – | – | {} | – |",
        db.rate,
        fmt_rates(&drain_b)
    ));
    r.line(format!(
        "| Raw JetStream pull consumer drain (fetch 1000 + ack) | {:.0} msgs/s | – | – | {} | – |",
        dr.rate,
        fmt_rates(&drain_r)
    ));
    r.line("");
    r.line("### Ratios and resources");
    r.line("");
    r.line(format!("* AppendFact c64 (256 B) / echo c64: **{:.2}×**; AppendFact c64 / raw JetStream publish: {:.2}×", ratio_append, a64.rate / raw_s.rate));
    let node_side_p50 = median(node_side.iter().map(|n| n.0).collect());
    let node_side_p99 = median(node_side.iter().map(|n| n.1).collect());
    r.line(format!(
        "* The open-loop appends as the node timed them (handler entry to answer; histogram bucket bounds, median of the repetitions): p50 ≤ {node_side_p50:.1} ms, p99 ≤ {node_side_p99:.1} ms"
    ));
    r.line(format!(
        "* nats-server's stream-state file (index.db) of the node's operational stream at the end: {state_file_mib} for {operational_facts} stored facts (one subject per kind; it held one record per fact before the key index)"
    ));
    r.line(format!(
        "* Drain FetchFacts+ConfirmReceipt / raw pull consumer: **{:.2}×**",
        ratio_drain
    ));
    let cpu_median = |runs: &[[f64; 3]], i: usize| median(runs.iter().map(|c| c[i]).collect());
    r.line(format!(
        "* Drain CPU per fact (medians): FetchFacts+ConfirmReceipt node {:.1} µs + nats-server {:.1} µs + client {:.1} µs; raw pull consumer nats-server {:.1} µs + client {:.1} µs",
        cpu_median(&drain_b_cpu, 0),
        cpu_median(&drain_b_cpu, 1),
        cpu_median(&drain_b_cpu, 2),
        cpu_median(&drain_r_cpu, 1),
        cpu_median(&drain_r_cpu, 2)
    ));
    r.line(format!("* Pre-fill of the drain category ({} facts, raw pipelined publish in the node's layout): {:.0} facts/s", drain_n, prefill_rate));
    r.line(format!(
        "* The node's key index (gap filler, headers only) had read those {} facts (written around the node) in {:.1} s after the pre-fill ended; the drain started after that",
        drain_n, read_in_secs
    ));
    r.line(format!(
        "* Node (`bsfg serve`) peak RSS (VmHWM): **{:.1} MiB**, RSS at end {:.1} MiB",
        rss_mib,
        node_rss as f64 / 1024.0
    ));
    r.line(format!(
        "* nats-server peak RSS: {:.1} MiB; echo server peak RSS: {:.1} MiB",
        nats_hwm as f64 / 1024.0,
        echo_hwm as f64 / 1024.0
    ));
    r.line(format!(
        "* Node CPU: {:.1} s during the closed-loop AppendFact phase ({:.0} µs of node CPU per append), {:.1} s in total",
        append_cpu,
        append_cpu * 1e6 / append_total.max(1.0),
        node_cpu_total
    ));
    r.line(format!(
        "* JetStream's stored bytes per fact (record, subject and headers, as its stream state counts them): {}",
        stored_bytes_per_fact.iter().map(|(size, bytes)| format!("{size} B object {bytes:.0} B")).collect::<Vec<_>>().join(", ")
    ));
    r.line(format!(
        "* CPU per append by configuration (node + its nats-server, the closed loops only): {}",
        append_cpu_by_config
            .iter()
            .map(|(conc, size, node_us, nats_us)| format!(
                "c{conc} {size} B {node_us:.0} + {nats_us:.0} µs"
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    r.line(format!(
        "* nats-server CPU during the closed-loop AppendFact phase: {:.0} µs per append; echo server CPU during echo c64: {:.0} µs per request",
        append_nats_cpu * 1e6 / append_total.max(1.0),
        echo_cpu * 1e6 / echo_total.max(1.0)
    ));
    r.line(format!(
        "* nats-server CPU per message, raw pipelined publish: {:.0} µs; the same in the node's layout: {:.0} µs (medians of the repetitions)",
        median(raw_cpu_us),
        median(guarded_cpu_us)
    ));

    write_results(&args.out, &r.md)?;
    eprintln!("results written to {}", args.out.display());
    drop(echo);
    drop(bare);
    drop(node);
    drop(nats);
    Ok(())
}
