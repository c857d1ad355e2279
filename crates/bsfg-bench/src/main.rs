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
mod crossing;
mod key_index;
mod substrate;

mod echo_proto {
    #![allow(missing_docs, clippy::all)]
    connectrpc::include_generated!();
}

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use bsfg_proto::bsfg::v1::{
    AppendFactRequest, BoundaryServiceClient, ConfirmReceiptRequest, Envelope, Fact,
    FetchFactsRequest, Provenance, StoredFact,
};
use buffa::Message as _;
use clap::{Parser, Subcommand};
use connectrpc::client::{ClientConfig, Http2Connection, SharedHttp2Connection};
use connectrpc::{Protocol, RequestContext, Response, ServiceRequest, ServiceResult};
use echo_proto::bench::v1::{
    EchoRequest, EchoResponse, EchoService, EchoServiceClient, EchoServiceExt as _,
};
use futures::StreamExt;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "BSFG end-to-end benchmark")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Markdown file whose results section is written/overwritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Seconds per measured configuration.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Repetitions per configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Facts pre-filled and drained by the FetchFacts / raw pull comparison.
    #[arg(long, default_value_t = 1_000_000)]
    drain_facts: u64,
    /// In-flight window of the raw JetStream pipelined publisher.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// JetStream `sync_interval` of the bench's nats-server (shared by the
    /// raw baselines and the node): `2m` is JetStream's default, `always` is
    /// what a zone node's embedded server uses.
    #[arg(long, default_value = "2m")]
    nats_sync: String,
    /// Wire protocol of the RPC clients (connect or grpc).
    #[arg(long, default_value = "connect")]
    protocol: String,
    /// nats-server binary.
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
    /// bsfg node binary (built with --release).
    #[arg(long, default_value = "target/release/bsfg")]
    bsfg: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: serve the echo service on the given address (used by the bench).
    EchoServer {
        addr: String,
        /// A nats-server URL: every echo is first published to JetStream
        /// (subject `bareappend.<n>`, a unique `Nats-Msg-Id`) and answered
        /// only once JetStream acknowledges it (the "bare append").
        #[arg(long)]
        jetstream: Option<String>,
    },
    /// Replication across zones (plant-a -> idmz -> enterprise) vs native
    /// JetStream stream sourcing over a leaf node; writes its own section.
    Crossing(crossing::CrossArgs),
    /// nats-server alone with the storage layouts the node has used, variant
    /// by variant (fixed subjects as now; one subject per fact and its
    /// guard, as before the key index).
    Substrate(substrate::SubstrateArgs),
    /// The idempotency key index alone: CPU per recorded entry and per
    /// look-up as it grows (prints a Markdown table).
    KeyIndex(key_index::KeyIndexArgs),
    /// Two node binaries, A and B, in the same run: AppendFact c64 against
    /// each, a fresh nats-server and node per repetition, alternating order
    /// (prints a Markdown table).
    Ab(ab::AbArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.command {
        Some(Cmd::EchoServer { addr, jetstream }) => {
            rt.block_on(echo_server(addr.clone(), jetstream.clone()))
        }
        Some(Cmd::Crossing(a)) => rt.block_on(crossing::run(a.clone())),
        Some(Cmd::Substrate(a)) => rt.block_on(substrate::run(a.clone())),
        Some(Cmd::KeyIndex(a)) => key_index::run(a.clone()),
        Some(Cmd::Ab(a)) => rt.block_on(ab::run(a.clone())),
        None => rt.block_on(run(args)),
    }
}

// ------------------------------------------------------------------ echo

/// The echo service; with `store`, a bare append: the request's payload is
/// durably stored in JetStream before the answer. That is the least an
/// AppendFact must do (an RPC, then a JetStream write acknowledged), with
/// none of its own work (validation, canonical JSON, key index, record
/// encoding, logs, metrics), so it is the substrate's floor for AppendFact.
struct Echo {
    store: Option<BareStore>,
}

struct BareStore {
    js: jetstream::Context,
    next: AtomicU64,
    id_prefix: String,
}

#[allow(refining_impl_trait)]
impl EchoService for Echo {
    async fn echo(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, EchoRequest>,
    ) -> ServiceResult<EchoResponse> {
        // Owned decode, like the node's handlers do.
        let request = request.to_owned_message();
        if let Some(store) = &self.store {
            let n = store.next.fetch_add(1, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}-{n}", store.id_prefix).as_str());
            let stored = match store
                .js
                .publish_with_headers(
                    format!("bareappend.{}", n % 64),
                    headers,
                    bytes::Bytes::copy_from_slice(&request.payload),
                )
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                return Err(connectrpc::ConnectError::new(
                    connectrpc::ErrorCode::Unavailable,
                    "JetStream did not acknowledge the bare append",
                ));
            }
        }
        Ok(Response::new(EchoResponse {
            payload: request.payload,
            ..Default::default()
        }))
    }
}

async fn echo_server(addr: String, jetstream_url: Option<String>) -> anyhow::Result<()> {
    let store = match jetstream_url {
        Some(url) => {
            let mut js = jetstream::new(async_nats::ConnectOptions::new().connect(url).await?);
            js.set_timeout(Duration::from_secs(10));
            Some(BareStore {
                js,
                next: AtomicU64::new(0),
                id_prefix: format!("bare-{}-{}", std::process::id(), now_ms()),
            })
        }
        None => None,
    };
    let router = Arc::new(Echo { store }).register(connectrpc::Router::new());
    let service = connectrpc::ConnectRpcService::new(router);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // Same server settings as the node's boundary port.
    let server = connectrpc::Server::from_listener(listener)
        .with_header_read_timeout(Duration::from_secs(10))
        .with_max_connection_idle(Duration::from_secs(300))
        .with_max_concurrent_streams(bsfg::node::MAX_CONCURRENT_STREAMS)
        .with_http2_initial_connection_window_size(bsfg::node::CONNECTION_WINDOW_BYTES)
        .with_http2_initial_stream_window_size(bsfg::node::STREAM_WINDOW_BYTES);
    server
        .serve_with_service(service)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

// ------------------------------------------------------------------ processes

struct Child {
    child: std::process::Child,
}
impl Child {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    bsfg::ports::free_port()
}

/// Writes `<dir>/<name>.nats.conf` and starts nats-server on `port`, with
/// JetStream domain `name` and store `<dir>/js-<name>`; `jetstream_extra`
/// goes inside the `jetstream` block, `extra` after it. Every bench mode
/// starts its servers here.
async fn start_nats_server(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    jetstream_extra: &str,
    extra: &str,
) -> anyhow::Result<Child> {
    let conf = dir.join(format!("{name}.nats.conf"));
    std::fs::write(
        &conf,
        format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  domain: {name}\n  store_dir: \"{}\"\n{jetstream_extra}}}\n{extra}\n",
            dir.join(format!("js-{name}")).display()
        ),
    )?;
    let log = dir.join(format!("{name}.nats.log"));
    let child = spawn_logged(std::process::Command::new(bin).arg("-c").arg(&conf), &log)
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_tcp(port, "nats-server", &log).await?;
    Ok(child)
}

fn spawn_logged(cmd: &mut std::process::Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Child { child })
}

/// Waits for a started process to listen; if it does not, the error
/// carries the end of its log (the run directory is removed on exit).
async fn wait_tcp(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    bail!(
        "{what} did not listen on {port} within 30 s; the end of its log {}:\n{}",
        log.display(),
        tail.join("\n")
    )
}

/// (VmHWM, VmRSS) in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn cpu_seconds(pid: u32) -> f64 {
    // utime + stime in clock ticks (fields 14 and 15 of /proc/pid/stat).
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

// ------------------------------------------------------------------ stats

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// p-th percentile (0..100) of latencies in microseconds, returned in ms.
fn pct_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[idx] as f64 / 1000.0
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn summarize(samples: &[Sample]) -> Sample {
    Sample {
        rate: median(samples.iter().map(|s| s.rate).collect()),
        p50_ms: median(samples.iter().map(|s| s.p50_ms).collect()),
        p99_ms: median(samples.iter().map(|s| s.p99_ms).collect()),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

fn fmt_rates(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| format!("{:.0}", s.rate))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A canonical JSON object of exactly `size` bytes.
fn object_json(size: usize) -> String {
    let base = r#"{"pad":""}"#.len();
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(size.saturating_sub(base)))
}

static RUN_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
fn run_id() -> &'static str {
    RUN_ID.get_or_init(|| format!("{:x}", now_ms()))
}

// ------------------------------------------------------------------ 1. raw JetStream publish

/// What one pipelined publish run did.
pub(crate) struct Published {
    pub done: u64,
    pub errors: u64,
    pub secs: f64,
}

impl Published {
    fn sample(&self) -> Sample {
        Sample {
            rate: self.done as f64 / self.secs,
            errors: self.errors,
            ..Default::default()
        }
    }
}

/// Publishes `message(0)`, `message(1)`, … keeping `window` acknowledgements
/// in flight, until `secs` have passed or `count_max` are sent: the one
/// pipelined-publish driver of the raw rows, the pre-fill and `substrate`.
pub(crate) async fn raw_publish<M>(
    js: &jetstream::Context,
    window: usize,
    secs: f64,
    count_max: u64,
    message: M,
) -> anyhow::Result<Published>
where
    M: Fn(u64) -> (String, HeaderMap, bytes::Bytes),
{
    let mut inflight = VecDeque::with_capacity(window);
    let (mut done, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs.min(1e6));
    let mut i = 0u64;
    while Instant::now() < end && i < count_max {
        let (subject, headers, payload) = message(i);
        inflight.push_back(js.publish_with_headers(subject, headers, payload).await?);
        i += 1;
        if inflight.len() >= window {
            match inflight.pop_front().expect("window is not empty").await {
                Ok(_) => done += 1,
                Err(_) => errors += 1,
            }
        }
    }
    while let Some(f) = inflight.pop_front() {
        match f.await {
            Ok(_) => done += 1,
            Err(_) => errors += 1,
        }
    }
    Ok(Published {
        done,
        errors,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// A file stream `name` on the subjects `name.>`, with JetStream's
/// default two-minute duplicate window: where the raw baselines write.
pub(crate) async fn create_plain_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// One publish awaited to its acknowledgement: the call of every raw
/// open-loop row.
pub(crate) fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> impl std::future::Future<Output = bool> + Send + use<> {
    let js = js.clone();
    async move {
        match js.publish_with_headers(subject, headers, payload).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }
}

// ------------------------------------------------------------------ closed-loop RPC driver

/// Runs `concurrency` workers calling `call(worker, seq)` back to back for
/// `secs`; returns completed calls/s and latency percentiles.
async fn closed_loop<F, Fut>(concurrency: usize, secs: f64, call: F) -> Sample
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

/// `concurrency` workers appending facts with an `object_json` of `size`
/// bytes back to back for `secs` (message ids `<tag>-<worker>-<seq>`): the
/// AppendFact closed loop.
pub(crate) async fn append_closed_loop(
    client: &BoundaryServiceClient<SharedHttp2Connection>,
    concurrency: usize,
    size: usize,
    secs: f64,
    tag: String,
) -> Sample {
    let c = client.clone();
    let payload: Arc<str> = object_json(size).into();
    closed_loop(concurrency, secs, move |w, seq| {
        let (c, payload, id) = (c.clone(), payload.clone(), format!("{tag}-{w}-{seq}"));
        async move {
            match c.append_fact(append_request(id, &payload)).await {
                Ok(_) => true,
                Err(e) => {
                    eprintln!("append error: {e}");
                    false
                }
            }
        }
    })
    .await
}

fn append_request(message_id: String, payload: &str) -> AppendFactRequest {
    AppendFactRequest {
        envelope: Envelope {
            message_id,
            from_zone: "bench".into(),
            to_zone: "bench".into(),
            produced_at_unix_ms: now_ms(),
            ..Default::default()
        }
        .into(),
        fact: Fact {
            subject: "batch:PlantA/B1042".into(),
            predicate: "step_completed".into(),
            object_json: payload.to_string(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
}

/// One bare echo RPC with a 256 B payload: the call of every echo row.
fn echo_once(
    client: &EchoServiceClient<SharedHttp2Connection>,
) -> impl std::future::Future<Output = bool> + Send + use<> {
    let client = client.clone();
    async move {
        client
            .echo(EchoRequest {
                payload: vec![b'x'; 256],
                ..Default::default()
            })
            .await
            .is_ok()
    }
}

// ------------------------------------------------------------------ 5. open loop

/// Offers `call(i)` at `rate`/s on a fixed schedule for `secs`; latency is
/// measured from each request's scheduled send time (no coordinated omission).
/// The same driver offers appends, bare echo RPCs and raw JetStream
/// publishes, so the three tails are comparable.
async fn open_loop<F, Fut>(rate: f64, secs: f64, tag: String, call: F) -> Sample
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

/// The node's Prometheus text from its operations port (plain HTTP/1.0).
async fn scrape_metrics(ops_port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ops_port)).await?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text)
}

/// Cumulative bucket counts (upper bound in seconds, count) of a histogram.
fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which `p` percent of the observations made
/// between two scrapes fall (a histogram quantile, so an upper bound).
fn histogram_quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            (
                le,
                n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = deltas.last().map_or(0.0, |d| d.1);
    deltas
        .iter()
        .find(|d| d.1 >= total * p / 100.0)
        .map_or(f64::NAN, |d| d.0)
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

/// One fact exactly as `FactLog` stores it: subject, headers and record.
fn node_layout_message(
    category: &str,
    subject: &str,
    message_id: &str,
    object: &str,
) -> (String, HeaderMap, bytes::Bytes) {
    let envelope = Envelope {
        message_id: message_id.into(),
        from_zone: "bench".into(),
        to_zone: "bench".into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let fact = Fact {
        subject: subject.into(),
        predicate: "step_completed".into(),
        object_json: object.into(),
        ..Default::default()
    };
    let token = bsfg_domain::identity::key_token("bench", message_id);
    let record = StoredFact {
        category: category.into(),
        envelope: envelope.into(),
        fact: fact.into(),
        provenance: Provenance {
            origin_zone: "bench".into(),
            ..Default::default()
        }
        .into(),
        appended_at_unix_ms: now_ms(),
        ..Default::default()
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", token.as_str());
    let kind = subject.split(':').next().unwrap_or_default();
    (
        format!("facts.{category}.{kind}"),
        headers,
        record.encode_to_vec().into(),
    )
}

/// The category the raw node-layout rows publish to: a stream configured
/// like the node's, but not the node's, so its key index never reads these
/// facts in during the AppendFact phases.
const LAYOUT_COPY: &str = "layoutcopy";

async fn create_layout_copy_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let category = bsfg::config::CategoryConfig {
        name: LAYOUT_COPY.into(),
        kinds: Vec::new(),
        default: false,
        capacity_bytes: 8 << 30,
        fill_threshold_percent: 80,
        retain_fill_percent: 50,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
    };
    js.create_stream(bsfg::store::facts::stream_config(
        "bench",
        bsfg_domain::limits::Limits::default().fact_bytes_max,
        &category,
    ))
    .await?;
    Ok(())
}

/// Waits until the node's key index covers every fact of `category` (facts
/// written around the node, like the drain pre-fill, are read in by its gap
/// filler). Returns the seconds it took.
async fn wait_for_key_index(
    ops_port: u16,
    category: &str,
    last_offset: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let label = format!("bsfg_key_index_through_offset{{category=\"{category}\"}} ");
    loop {
        let text = scrape_metrics(ops_port).await?;
        let through = text
            .lines()
            .find_map(|l| l.strip_prefix(label.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if through >= last_offset as f64 {
            return Ok(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "key index of {category} at {through} of {last_offset} after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// The `[nats]` section of every bench node: an external nats-server
/// started by the bench (the node's embedded-server settings are unused).
fn node_nats_section(nats_port: u16) -> String {
    format!("[nats]\nurl = \"nats://127.0.0.1:{nats_port}\"\nrequest_timeout = \"10s\"")
}

/// The `[commit]` section of every bench node: its key index file in the
/// run directory (the default would be relative to the working directory),
/// plus any lines in `BENCH_COMMIT_EXTRA` (for A/B runs of commit settings,
/// e.g. `batches_in_flight_max = 4`).
fn node_commit_section(dir: &std::path::Path, zone: &str) -> String {
    format!(
        "[commit]\nkey_index_path = \"{}\"\n{}",
        dir.join(format!("key-index.{zone}.kix")).display(),
        std::env::var("BENCH_COMMIT_EXTRA").unwrap_or_default()
    )
}

/// A client certificate, its key and the CA it trusts (PEM files).
pub(crate) struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client of the RPC service on `127.0.0.1:port` (`new` is the service's
/// client constructor) over one HTTP/2 connection that all its calls share
/// (up to 1024 in flight): h2c, or mutual TLS with `tls`. Every RPC row's
/// client.
pub(crate) async fn rpc_client<C>(
    port: u16,
    protocol: Protocol,
    tls: Option<&ClientTls>,
    new: impl FnOnce(SharedHttp2Connection, ClientConfig) -> C,
) -> anyhow::Result<C> {
    let (uri, connection) = match tls {
        None => {
            let uri: http::Uri = format!("http://127.0.0.1:{port}").parse()?;
            (uri.clone(), Http2Connection::connect_plaintext(uri).await?)
        }
        Some(t) => {
            let uri: http::Uri = format!("https://127.0.0.1:{port}").parse()?;
            (
                uri.clone(),
                Http2Connection::connect_tls(
                    uri,
                    bsfg::tls::client::client_config(&t.ca, &t.cert, &t.key)?,
                )
                .await?,
            )
        }
    };
    let config = ClientConfig::new(uri)
        .with_protocol(protocol)
        .with_default_timeout(Duration::from_secs(30));
    Ok(new(connection.shared(1024), config))
}

/// The `[tls]` section of the main run's node: plaintext on both sides of
/// the comparison, as the echo baseline has no TLS either.
const PLAINTEXT_TLS: &str = "[tls]\nmode = \"plaintext-dev\"\n";

/// The single-zone node's configuration (zone `bench`); `tls` is its
/// `[tls]` section (and any principals).
fn node_config(
    port: u16,
    ops: u16,
    nats_port: u16,
    drain_consumers: usize,
    dir: &std::path::Path,
    tls: &str,
) -> String {
    let mut s = format!(
        r#"zone = "bench"
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
retention_interval = "5s"

{tls}

{nats}

{commit}

[[categories]]
name = "operational"
default = true
capacity_bytes = 8589934592
max_age = "30days"

[[categories]]
name = "drain"
kinds = ["drain"]
capacity_bytes = 8589934592
max_age = "30days"
"#,
        commit = node_commit_section(dir, "bench"),
        nats = node_nats_section(nats_port)
    );
    for i in 1..=drain_consumers {
        let _ = write!(
            s,
            "\n[[consumers]]\nname = \"drain{i}\"\ncategory = \"drain\"\nstart = \"earliest\"\n"
        );
    }
    s
}

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

const BEGIN: &str = "<!-- bsfg-bench results: begin (generated, do not edit) -->";
const END: &str = "<!-- bsfg-bench results: end -->";

/// Replaces the generated section of `out`, keeping everything else.
fn write_results(out: &Path, results: &str) -> anyhow::Result<()> {
    let existing =
        std::fs::read_to_string(out).unwrap_or_else(|_| "# BSFG benchmarks\n\n".to_string());
    let section = format!("{BEGIN}\n{results}{END}\n");
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &existing[..b],
            section,
            &existing[e + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{}", existing.trim_end(), "\n".to_string() + &section),
    };
    std::fs::write(out, text)?;
    Ok(())
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("BSFG_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
fn scopeguard(dir: PathBuf) -> Cleanup {
    Cleanup(dir)
}
