//! `bsfg-bench crossing`: replication across zones vs native JetStream
//! stream sourcing over a leaf node, in the same run.
//!
//! Topology: three zones `plant-a` → `idmz` → `enterprise`, each its own
//! nats-server (JetStream domain = zone name) and its own release
//! `bsfg serve` process, `[tls] mode = "plaintext-dev"`. `idmz` pulls from
//! `plant-a` and `enterprise` pulls from `idmz`, each through a
//! `bsfg::faultproxy::FaultProxy` (cut / restore / delay). Facts of kind
//! `hop1` are addressed to `idmz` (one hop), kind `hop2` to `enterprise`
//! (two hops; idmz's `to-enterprise` consumer only carries `hop2`).
//! Arrivals are counted from the destination zone's `facts_operational`
//! stream state.
//!
//! Reference: a hub nats-server (domain `hub`) and a leaf nats-server
//! (domain `leaf`) joined by `leafnodes` through another FaultProxy; a stream
//! on the leaf `sources` the hub's stream with `external.api =
//! "$JS.hub.API"`. Beside it, on the same servers and backlog, a bare bridge
//! (see `reference_runs`): the substrate's ceiling for any crossing that
//! stores one JetStream message per fact.

use crate::child::{
    Child, cpu_seconds, free_port, rss_kib, scopeguard, spawn_logged, start_nats_server, wait_tcp,
};
use crate::node_config::{node_commit_section, node_nats_section};
use crate::publish::create_plain_stream;
use crate::stats::pct_ms;
use crate::{now_ms, object_json};
use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use bsfg::client::BsfgClient;
use bsfg::faultproxy::FaultProxy;
use bsfg_proto::bsfg::v1::{AttachmentRef, Envelope, Fact, PutObjectHeader, StoredFact};
use buffa::Message as _;
use futures::StreamExt as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct CrossArgs {
    /// Markdown file whose crossing results section is written/overwritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Facts per BSFG catch-up / steady-state measurement.
    #[arg(long, default_value_t = 20_000)]
    facts: u64,
    /// Backlog of 256 B messages for native leaf-node sourcing.
    #[arg(long, default_value_t = 1_000_000)]
    native_facts: u64,
    /// Backlog drained after a partition for the RSS measurement (e); 0 skips.
    #[arg(long, default_value_t = 1_000_000)]
    backlog_facts: u64,
    /// Artifact size in MiB for (f).
    #[arg(long, default_value_t = 1024)]
    artifact_mib: u64,
    /// Offered rate (facts/s) for the two-hop lag measurement.
    #[arg(long, default_value_t = 5000.0)]
    lag_rate: f64,
    /// A second, lower offered rate for the lag measurement (0 skips).
    #[arg(long, default_value_t = 1000.0)]
    lag_low_rate: f64,
    /// Seconds of offered load for the lag measurement.
    #[arg(long, default_value_t = 10.0)]
    lag_secs: f64,
    /// One-way delay in ms of the "WAN" runs (RTT = 2x).
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
    /// Concurrency of the AppendFact pre-fill at the source.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Node transport: plaintext-dev, or mtls (site CA, node and app certificates generated per run).
    #[arg(long, default_value = "plaintext-dev")]
    tls: String,
    /// Run only the catch-up and steady-state phases (a)/(c) against BSFG (no native, lag, drain, artifact).
    #[arg(long)]
    only_bsfg_throughput: bool,
    /// Run only the two-hop lag measurement (d) and print it (nothing written); for quick A/B runs.
    #[arg(long)]
    only_lag: bool,
    /// Run only the substrate references (native sourcing and the bare bridge), print them (nothing written).
    #[arg(long)]
    only_reference: bool,
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_server: PathBuf,
    #[arg(long, default_value = "target/release/bsfg")]
    bsfg: PathBuf,
}

const ZONES: [&str; 3] = ["plant-a", "idmz", "enterprise"];

struct Zone {
    nats: Child,
    node: Child,
    port: u16,
    js: jetstream::Context,
    client: BsfgClient,
}

/// CPU seconds so far of every zone's node and nats-server, and of this
/// bench process, in `ZONES` order (the bench last).
fn cpu_snapshot(zones: &BTreeMap<&str, Zone>) -> Vec<f64> {
    ZONES
        .iter()
        .flat_map(|z| {
            [
                cpu_seconds(zones[z].node.pid()),
                cpu_seconds(zones[z].nats.pid()),
            ]
        })
        .chain(std::iter::once(cpu_seconds(std::process::id())))
        .collect()
}

/// Each process's CPU per fact since `before` (a `cpu_snapshot`).
fn cpu_per_fact(
    zones: &BTreeMap<&str, Zone>,
    before: &[f64],
    facts: u64,
    generator: &str,
) -> String {
    let now = cpu_snapshot(zones);
    let us = |i: usize| (now[i] - before[i]) * 1e6 / facts.max(1) as f64;
    ZONES
        .iter()
        .enumerate()
        .map(|(i, z)| {
            format!(
                "{z} node {:.0} µs + nats-server {:.0} µs",
                us(2 * i),
                us(2 * i + 1)
            )
        })
        .chain(std::iter::once(format!(
            "{generator} (this bench) {:.0} µs",
            us(2 * ZONES.len())
        )))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resets every node's VmHWM to its current RSS (`/proc/<pid>/clear_refs`
/// = 5), so the next reading is the peak of what follows.
fn reset_peak_rss(zones: &BTreeMap<&str, Zone>) {
    for z in ZONES {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", zones[z].node.pid()), "5");
    }
}

/// Phase (f): rates, durations and plant-a's memory around the local put.
#[derive(Clone, Copy)]
struct ArtifactRun {
    local_rate: f64,
    cross_rate: f64,
    put_secs: f64,
    cross_secs: f64,
    put_hwm_mib: f64,
    rss_before_put_mib: f64,
}

/// The zone nodes reserve their categories' capacity in JetStream (28 GiB
/// with the default categories). JetStream's own limit is 75 % of the disk
/// free at start-up, so on a disk with less than ~38 GB free the nodes
/// would refuse to start; the bench writes a few GB, so it sets the limit.
const ZONE_MAX_FILE_STORE_BYTES: u64 = 64 << 30;

async fn start_nats(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    extra: &str,
) -> anyhow::Result<(Child, jetstream::Context)> {
    let child = start_nats_server(
        bin,
        dir,
        name,
        port,
        &format!("  max_file_store: {ZONE_MAX_FILE_STORE_BYTES}\n"),
        extra,
    )
    .await?;
    let nc = async_nats::ConnectOptions::new()
        .connect(format!("nats://127.0.0.1:{port}"))
        .await?;
    let mut js = jetstream::new(nc);
    js.set_timeout(Duration::from_secs(20));
    Ok((child, js))
}

fn peer_toml(name: &str, origins: &[&str], consumers: &[&str]) -> String {
    let q = |l: &[&str]| {
        l.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[principals]]\nname = \"{name}\"\nkind = \"peer\"\nidentities = [\"{name}-bsfg\"]\nzone = \"{name}\"\norigins = [{}]\nconsumers = [{}]\nbuckets_read = [\"records\"]\n",
        q(origins),
        q(consumers)
    )
}

fn upstream_toml(peer: &str, url: &str, consumer: &str, spool: &Path) -> String {
    format!(
        "\n[[upstreams]]\npeer = \"{peer}\"\nurl = \"{url}\"\nconsumer = \"{consumer}\"\nbatch_limit = 1000\nbatch_bytes_max = 4194304\nwait_ms = 500\npipeline_depth = 4\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\nspool_dir = \"{}\"\n",
        spool.display()
    )
}

fn node_toml(
    zone: &str,
    port: u16,
    ops: u16,
    nats_port: u16,
    dir: &Path,
    upstream_urls: &BTreeMap<&str, String>,
    mtls: bool,
) -> String {
    let mut s = format!(
        r#"zone = "{zone}"
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
retention_interval = "5s"

{tls}

{nats}

{commit}

[[categories]]
name = "operational"
default = true
capacity_bytes = 17179869184
max_age = "30days"
{operational_extra}

[[categories]]
name = "audit"
kinds = ["audit"]
capacity_bytes = 4294967296
max_age = "30days"

[[buckets]]
name = "records"
capacity_bytes = 8589934592
"#,
        commit = node_commit_section(dir, zone),
        // Lines added to the operational category, for A/B runs of its
        // settings (e.g. `duplicate_window = "30s"`).
        operational_extra = std::env::var("BENCH_OPERATIONAL_EXTRA").unwrap_or_default(),
        nats = node_nats_section(nats_port),
        tls = tls_section(dir, zone, mtls, &["records"])
    );
    let spool = dir.join(format!("spool-{zone}"));
    match zone {
        "plant-a" => {
            s.push_str("\n[routes]\nenterprise = \"idmz\"\n");
            s.push_str("\n[[consumers]]\nname = \"to-idmz\"\ncategory = \"operational\"\n");
            s.push_str(&peer_toml("idmz", &["enterprise"], &["to-idmz"]));
        }
        "idmz" => {
            s.push_str("\n[[consumers]]\nname = \"to-enterprise\"\ncategory = \"operational\"\nkinds = [\"hop2\"]\n");
            s.push_str(&peer_toml("plant-a", &["plant-a"], &[]));
            s.push_str(&peer_toml(
                "enterprise",
                &["enterprise"],
                &["to-enterprise"],
            ));
            s.push_str(&upstream_toml(
                "plant-a",
                &upstream_urls["plant-a"],
                "to-idmz",
                &spool,
            ));
        }
        _ => {
            s.push_str(&peer_toml("idmz", &["plant-a", "idmz"], &[]));
            s.push_str(&upstream_toml(
                "idmz",
                &upstream_urls["idmz"],
                "to-enterprise",
                &spool,
            ));
        }
    }
    s
}

/// `--tls`: whether the nodes run mutual TLS.
pub(crate) fn parse_tls(tls: &str) -> anyhow::Result<bool> {
    match tls {
        "mtls" => Ok(true),
        "plaintext-dev" => Ok(false),
        t => bail!("--tls {t}: expected mtls or plaintext-dev"),
    }
}

/// A site CA in `certs` and, per zone, the node's certificate
/// `<zone>-bsfg` (also for localhost and 127.0.0.1) and an app's
/// `app.<zone>`.
pub(crate) fn issue_certs(certs: &Path, zones: &[&str]) -> anyhow::Result<()> {
    bsfg::tls::pki::init_ca(certs, "bench CA", 5)?;
    for z in zones {
        let mut node = bsfg::tls::pki::IssueRequest::new(&format!("{z}-bsfg"), 5);
        node.extra_sans = vec!["localhost".into(), "127.0.0.1".into()];
        bsfg::tls::pki::issue(certs, certs, &node)?;
        bsfg::tls::pki::issue(
            certs,
            certs,
            &bsfg::tls::pki::IssueRequest::new(&format!("app.{z}"), 5),
        )?;
    }
    Ok(())
}

/// A zone node's `[tls]` section: plaintext-dev, or mTLS with the
/// certificates of `issue_certs` in `<dir>/certs` and the principal `app`
/// (identity `app.<zone>`, reading and writing `buckets`).
pub(crate) fn tls_section(dir: &Path, zone: &str, mtls: bool, buckets: &[&str]) -> String {
    if !mtls {
        return "[tls]\nmode = \"plaintext-dev\"\n".to_string();
    }
    let c = dir.join("certs");
    let buckets = buckets
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[tls]\nmode = \"mtls\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[[principals]]\nname = \"app\"\nkind = \"app\"\nidentities = [\"app.{zone}\"]\nbuckets_read = [{buckets}]\nbuckets_write = [{buckets}]\n",
        c.join("ca.pem").display(),
        c.join(format!("{zone}-bsfg.pem")).display(),
        c.join(format!("{zone}-bsfg.key")).display()
    )
}

async fn count(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut s = js.get_stream("facts_operational").await?;
    Ok(s.info().await?.state.messages)
}

async fn wait_count(
    js: &jetstream::Context,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    wait_messages(js, "facts_operational", target, timeout).await
}

/// Polls stream `name` every 10 ms until it holds `target` messages;
/// returns when it saw them.
async fn wait_messages(
    js: &jetstream::Context,
    name: &str,
    target: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = js.get_stream(name).await?.info().await?.state.messages;
        if n >= target {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("{name}: timed out at {n} of {target} messages");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fact(kind: &str, i: u64, payload: &str) -> Fact {
    Fact {
        subject: format!("{kind}:B{i}"),
        predicate: "step_completed".into(),
        object_json: payload.to_string(),
        ..Default::default()
    }
}

fn envelope(tag: &str, i: u64, to: &str) -> Envelope {
    Envelope {
        message_id: format!("{tag}-{i}"),
        from_zone: "plant-a".into(),
        to_zone: to.into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    }
}

/// Appends `n` facts at plant-a with `concurrency` in flight. Returns facts/s.
async fn append_many(
    client: &BsfgClient,
    concurrency: usize,
    n: u64,
    tag: &str,
    kind: &str,
    to: &str,
    size: usize,
) -> anyhow::Result<f64> {
    let payload = Arc::new(object_json(size));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, payload, tag, kind, to) = (
            client.clone(),
            next.clone(),
            payload.clone(),
            tag.to_string(),
            kind.to_string(),
            to.to_string(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut tries = 0;
                while let Err(e) = client
                    .append(envelope(&tag, i, &to), fact(&kind, i, &payload))
                    .await
                {
                    tries += 1;
                    if tries > 20 {
                        bail!("append {tag}-{i}: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

struct Row {
    name: String,
    rate: f64,
    detail: String,
}

fn tag(name: &str) -> String {
    format!("{name}-{:x}", now_ms())
}

pub async fn run(a: CrossArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("bsfg-bench-crossing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = scopeguard(dir.clone());
    eprintln!("run dir {}", dir.display());
    let delay = Duration::from_millis(a.delay_ms);
    let started_at = now_ms();
    let mut rows: Vec<Row> = Vec::new();
    let mut rss_lines: Vec<String> = Vec::new();

    // ---------------------------------------------------------- (b) native sourcing, and a bare bridge
    let reference = if a.only_bsfg_throughput || a.only_lag {
        None
    } else {
        Some(reference_runs(&a, &dir, delay).await?)
    };
    let (native_loop, native_wan) = reference.as_ref().map_or((f64::NAN, f64::NAN), |r| {
        (r.native[0].rate, r.native[1].rate)
    });
    if let Some(r) = &reference {
        let rtt = 2 * a.delay_ms;
        for (what, runs) in [
            ("Native sourcing over leaf node", &r.native),
            (
                "Bare bridge (substrate reference: one async-nats client pulls the hub's stream and publishes each message with `Nats-Msg-Id` into the leaf's domain)",
                &r.bridge,
            ),
        ] {
            for (run, link) in runs
                .iter()
                .zip(["loopback".to_string(), format!("RTT {rtt} ms")])
            {
                rows.push(Row {
                    name: format!("{what}, catch-up of {} × 256 B, {link}", a.native_facts),
                    rate: run.rate,
                    detail: format!("CPU per message: {}", run.cpu),
                });
            }
        }
        rss_lines.push(r.rss_line.clone());
        if a.only_reference {
            for row in &rows {
                println!("| {} | {:.0} /s | {} |", row.name, row.rate, row.detail);
            }
            return Ok(());
        }
    }

    // ---------------------------------------------------------- BSFG zones
    let mut ports = BTreeMap::new();
    for z in ZONES {
        ports.insert(z, (free_port()?, free_port()?, free_port()?)); // boundary, ops, nats
    }
    // idmz pulls plant-a through p1; enterprise pulls idmz through p2.
    let p1 = FaultProxy::start(format!("127.0.0.1:{}", ports["plant-a"].0).parse()?).await?;
    let p2 = FaultProxy::start(format!("127.0.0.1:{}", ports["idmz"].0).parse()?).await?;
    let mtls = parse_tls(&a.tls)?;
    let certs = dir.join("certs");
    if mtls {
        issue_certs(&certs, &ZONES)?;
    }
    let scheme = if mtls { "https" } else { "http" };
    let mut upstream_urls = BTreeMap::new();
    upstream_urls.insert(
        "plant-a",
        format!("{scheme}://127.0.0.1:{}", p1.addr.port()),
    );
    upstream_urls.insert("idmz", format!("{scheme}://127.0.0.1:{}", p2.addr.port()));
    let mut zones: BTreeMap<&str, Zone> = BTreeMap::new();
    for z in ZONES {
        let (port, ops, nats_port) = ports[z];
        let (nats, js) = start_nats(&a.nats_server, &dir, z, nats_port, "").await?;
        let toml = dir.join(format!("{z}.toml"));
        std::fs::write(
            &toml,
            node_toml(z, port, ops, nats_port, &dir, &upstream_urls, mtls),
        )?;
        let node_log = dir.join(format!("{z}.node.log"));
        let node = spawn_logged(
            std::process::Command::new(&a.bsfg)
                .arg("serve")
                .arg("--config")
                .arg(&toml),
            &node_log,
        )
        .with_context(|| format!("starting {}", a.bsfg.display()))?;
        wait_tcp(port, "bsfg node", &node_log).await?;
        let client = if mtls {
            let f = |ext: &str| certs.join(format!("app.{z}.{ext}"));
            BsfgClient::from_files(
                &format!("https://127.0.0.1:{port}"),
                Some(&certs.join("ca.pem")),
                Some(&f("pem")),
                Some(&f("key")),
            )?
        } else {
            BsfgClient::connect(&format!("http://127.0.0.1:{port}"))?
        };
        zones.insert(
            z,
            Zone {
                nats,
                node,
                port,
                js,
                client,
            },
        );
    }
    let _ = zones["plant-a"].port;
    let src = zones["plant-a"].client.clone();
    let dest = |hops: u8| &zones[if hops == 1 { "idmz" } else { "enterprise" }].js;
    let n = a.facts;
    let timeout = Duration::from_secs(3600);

    // ---------------------------------------------------------- (a)+(c) catch-up
    let mut catchup_1hop_256_loop = 0.0;
    let mut catchup_1hop_256_wan = 0.0;
    let catch_up_runs = [
        (1u8, 256usize, Duration::ZERO),
        (1, 4096, Duration::ZERO),
        (2, 256, Duration::ZERO),
        (2, 4096, Duration::ZERO),
        (1, 256, delay),
        (2, 256, delay),
    ];
    for (hops, size, d) in catch_up_runs.into_iter().filter(|_| !a.only_lag) {
        p1.set_delay(d);
        p2.set_delay(d);
        p1.cut();
        let kind = if hops == 1 { "hop1" } else { "hop2" };
        let to = if hops == 1 { "idmz" } else { "enterprise" };
        let base = count(dest(hops)).await?;
        let fill = append_many(&src, a.concurrency, n, &tag("cu"), kind, to, size).await?;
        let t = Instant::now();
        let cpu_before = cpu_snapshot(&zones);
        p1.restore();
        let done = wait_count(dest(hops), base + n, timeout).await?;
        let rate = n as f64 / (done - t).as_secs_f64();
        let rtt = 2 * d.as_millis();
        let cpu = cpu_per_fact(&zones, &cpu_before, n, "arrival poller");
        eprintln!(
            "catch-up {hops} hop(s) {size} B RTT {rtt} ms: {rate:.0} facts/s (pre-fill {fill:.0}/s); CPU per fact: {cpu}"
        );
        if hops == 1 && size == 256 {
            if d.is_zero() {
                catchup_1hop_256_loop = rate;
            } else {
                catchup_1hop_256_wan = rate;
            }
        }
        rows.push(Row {
            name: format!("BSFG catch-up, {hops} hop(s), {n} × {size} B backlog, {}", if d.is_zero() { "loopback".to_string() } else { format!("RTT {rtt} ms per link") }),
            rate,
            detail: format!("pre-fill by AppendFact c{}: {fill:.0} facts/s; CPU per fact during the catch-up: {cpu}", a.concurrency),
        });
    }
    p1.set_delay(Duration::ZERO);
    p2.set_delay(Duration::ZERO);

    // ---------------------------------------------------------- (a) steady state
    for (hops, size) in [(1u8, 256usize), (1, 4096), (2, 256), (2, 4096)]
        .into_iter()
        .filter(|_| !a.only_lag)
    {
        let kind = if hops == 1 { "hop1" } else { "hop2" };
        let to = if hops == 1 { "idmz" } else { "enterprise" };
        let base = count(dest(hops)).await?;
        let t = Instant::now();
        let offered = append_many(&src, a.concurrency, n, &tag("ss"), kind, to, size).await?;
        let done = wait_count(dest(hops), base + n, timeout).await?;
        let rate = n as f64 / (done - t).as_secs_f64();
        eprintln!(
            "steady {hops} hop(s) {size} B: {rate:.0} facts/s delivered (appended at {offered:.0}/s)"
        );
        rows.push(Row {
            name: format!("BSFG steady state, {hops} hop(s), {size} B, {n} facts appended c{} while links are up", a.concurrency),
            rate,
            detail: format!("source append rate {offered:.0} facts/s; rate = facts / (first append → last arrival)"),
        });
    }

    // ---------------------------------------------------------- (d) two-hop lag at an offered rate

    if a.only_bsfg_throughput {
        let mut md = format!(
            "### BSFG throughput with `[tls] mode = \"{}\"` (`bsfg-bench crossing --only-bsfg-throughput --tls {} --facts {n}`)\n\n| Benchmark | Rate | Notes |\n|---|---|---|\n",
            a.tls, a.tls
        );
        for r in rows.iter().filter(|r| !r.rate.is_nan()) {
            let _ = writeln!(md, "| {} | {:.0} /s | {} |", r.name, r.rate, r.detail);
        }
        println!("{md}");
        return Ok(());
    }
    let mut rss_lifetime = Vec::new();
    for z in ZONES {
        rss_lifetime.push((z, rss_kib(zones[z].node.pid()).0 as f64 / 1024.0));
    }

    // ---------------------------------------------------------- (e) backlog after a partition, RSS
    let backlog = if a.backlog_facts > 0 && !a.only_lag {
        p2.cut();
        let ent = &zones["enterprise"].js;
        let base = count(ent).await?;
        let fill = append_many(
            &src,
            a.concurrency,
            a.backlog_facts,
            &tag("bl"),
            "hop2",
            "enterprise",
            256,
        )
        .await?;
        // idmz receives them while its link to enterprise is cut.
        // Every node's VmHWM shows the peak of the drain alone (the
        // pre-fill's 64 concurrent appends at plant-a excluded).
        reset_peak_rss(&zones);
        let t = Instant::now();
        p2.restore();
        let done = wait_count(ent, base + a.backlog_facts, timeout).await?;
        let rate = a.backlog_facts as f64 / (done - t).as_secs_f64();
        eprintln!(
            "backlog drain idmz→enterprise {} facts: {rate:.0} facts/s (pre-fill {fill:.0}/s)",
            a.backlog_facts
        );
        Some((rate, fill))
    } else {
        None
    };
    let mut rss = Vec::new();
    for z in ZONES {
        let (hwm, now) = rss_kib(zones[z].node.pid());
        let (nhwm, _) = rss_kib(zones[z].nats.pid());
        rss.push((
            z,
            hwm as f64 / 1024.0,
            now as f64 / 1024.0,
            nhwm as f64 / 1024.0,
        ));
    }

    // ---------------------------------------------------------- (d) two-hop lag (after (e): the open-loop flood inflates plant-a's RSS)
    let cpu_before = cpu_snapshot(&zones);
    let lag = lag_run(
        &src,
        &zones["enterprise"].js,
        a.lag_rate,
        a.lag_secs,
        timeout,
    )
    .await?;
    let lag_cpu = cpu_per_fact(&zones, &cpu_before, lag.0, "load generator");
    eprintln!(
        "CPU per fact during the lag run at {} facts/s: {lag_cpu}",
        a.lag_rate
    );
    let lag_low = if a.lag_low_rate > 0.0 {
        Some(
            lag_run(
                &src,
                &zones["enterprise"].js,
                a.lag_low_rate,
                a.lag_secs,
                timeout,
            )
            .await?,
        )
    } else {
        None
    };
    if a.only_lag {
        for (z, hwm, _, nhwm) in &rss {
            eprintln!("{z}: node VmHWM {hwm:.1} MiB, nats-server VmHWM {nhwm:.1} MiB");
        }
        return Ok(());
    }

    // ---------------------------------------------------------- (f) artifact crossing
    let artifact = if a.artifact_mib > 0 {
        let size = a.artifact_mib * 1024 * 1024;
        let key = tag("artifact");
        let put = |key: String| {
            let src = src.clone();
            async move {
                let chunks = futures::stream::iter((0..size / (1024 * 1024)).map(|i| {
                    let mut c = vec![0u8; 1024 * 1024];
                    for (j, b) in c.iter_mut().enumerate() {
                        *b = ((i as usize * 7919 + j * 31) % 251) as u8;
                    }
                    c
                }));
                let header = PutObjectHeader {
                    bucket: "records".into(),
                    key,
                    media_type: "application/octet-stream".into(),
                    ..Default::default()
                };
                let t = Instant::now();
                let r = src
                    .put_object(header, chunks, Duration::from_secs(3600))
                    .await
                    .map_err(|e| anyhow::anyhow!("put_object: {e:?}"))?;
                Ok::<_, anyhow::Error>((r, t.elapsed().as_secs_f64()))
            }
        };
        let rss_before_put = rss_kib(zones["plant-a"].node.pid()).1 as f64 / 1024.0;
        reset_peak_rss(&zones);
        let (stored, put_secs) = put(key.clone()).await?;
        let hwm_put = rss_kib(zones["plant-a"].node.pid()).0 as f64 / 1024.0;
        reset_peak_rss(&zones);
        let local_rate = size as f64 / put_secs / (1024.0 * 1024.0);
        let idmz = &zones["idmz"].js;
        let base = count(idmz).await?;
        let mut f = fact("art", 0, &object_json(64));
        f.attachments.push(AttachmentRef {
            bucket: stored.bucket.clone(),
            key: stored.key.clone(),
            digest: stored.digest.clone(),
            size_bytes: stored.size_bytes,
            media_type: "application/octet-stream".into(),
            ..Default::default()
        });
        let t = Instant::now();
        src.append(envelope(&key, 0, "idmz"), f)
            .await
            .map_err(|e| anyhow::anyhow!("append with attachment: {e:?}"))?;
        wait_count(idmz, base + 1, timeout).await?;
        let cross_secs = t.elapsed().as_secs_f64();
        let cross_rate = size as f64 / cross_secs / (1024.0 * 1024.0);
        eprintln!(
            "artifact {} MiB: local put {local_rate:.1} MiB/s, crossing one hop {cross_rate:.1} MiB/s",
            a.artifact_mib
        );
        Some(ArtifactRun {
            local_rate,
            cross_rate,
            put_secs,
            cross_secs,
            put_hwm_mib: hwm_put,
            rss_before_put_mib: rss_before_put,
        })
    } else {
        None
    };
    let mut rss_after_artifact = Vec::new();
    for z in ZONES {
        rss_after_artifact.push((z, rss_kib(zones[z].node.pid()).0 as f64 / 1024.0));
    }

    // ---------------------------------------------------------- report
    let mut md = String::new();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(md, "## Results: crossing zones\n");
    let _ = writeln!(
        md,
        "Generated by `bsfg-bench crossing` at unix ms {started_at}; BSFG measurements of {n} facts each, native backlog {} × 256 B, (e) backlog {} facts, artifact {} MiB, lag at {} facts/s offered for {} s, delay runs at {} ms one-way ({} ms RTT) per proxied link; nodes `[tls] mode = \"{}\"`; host: {cpus} CPUs.\n",
        a.native_facts,
        a.backlog_facts,
        a.artifact_mib,
        a.lag_rate,
        a.lag_secs,
        a.delay_ms,
        2 * a.delay_ms,
        a.tls
    );
    let verdict = |ok: bool| if ok { "**PASS**" } else { "**FAIL**" };
    let _ = writeln!(
        md,
        "### Targets\n\n| Target | Measured | Result |\n|---|---|---|"
    );
    let r_loop = catchup_1hop_256_loop / native_loop;
    let r_wan = catchup_1hop_256_wan / native_wan;
    // What the substrate leaves for this design: the bare bridge's share of
    // native sourcing, measured on the same servers just before.
    let ceiling = |i: usize| {
        reference.as_ref().map_or(String::new(), |r| {
            format!(
                " (bare bridge, no BSFG logic: {:.0} / {:.0} = {:.2}×)",
                r.bridge[i].rate,
                r.native[i].rate,
                r.bridge[i].rate / r.native[i].rate
            )
        })
    };
    let _ = writeln!(
        md,
        "| one-hop catch-up ≥ 0.5 × native sourcing, loopback | {catchup_1hop_256_loop:.0} / {native_loop:.0} = {r_loop:.3}×{} | {} |",
        ceiling(0),
        verdict(r_loop >= 0.5)
    );
    let _ = writeln!(
        md,
        "| one-hop catch-up ≥ 1.0 × native sourcing, RTT {} ms | {catchup_1hop_256_wan:.0} / {native_wan:.0} = {r_wan:.3}×{} | {} |",
        2 * a.delay_ms,
        ceiling(1),
        verdict(r_wan >= 1.0)
    );
    let (ok, total, offered_secs, p50, p99, max) = lag;
    let achieved = ok as f64 / offered_secs;
    let _ = writeln!(
        md,
        "| two-hop lag p99 ≤ 20 ms at {} facts/s | p99 {p99:.0} ms, p50 {p50:.0} ms, max {max:.0} ms ({ok}/{total} appended, achieved {achieved:.0}/s) | {} |",
        a.lag_rate,
        verdict(p99 <= 20.0 && achieved >= 0.95 * a.lag_rate)
    );
    let max_rss = rss.iter().map(|r| r.1).fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "| backlog drain, every node's RSS ≤ 128 MiB | max VmHWM {max_rss:.1} MiB ({}) | {} |",
        rss.iter()
            .map(|r| format!("{} {:.1}", r.0, r.1))
            .collect::<Vec<_>>()
            .join(", "),
        verdict(max_rss <= 128.0)
    );
    if let Some(ArtifactRun {
        local_rate: local,
        cross_rate: cross,
        ..
    }) = artifact
    {
        let _ = writeln!(
            md,
            "| artifact crossing ≥ 0.5 × local put | {cross:.1} / {local:.1} MiB/s = {:.2}× | {} |",
            cross / local,
            verdict(cross / local >= 0.5)
        );
    }
    let _ = writeln!(
        md,
        "\n### Measurements\n\n| Benchmark | Rate | Notes |\n|---|---|---|"
    );
    for r in &rows {
        let _ = writeln!(md, "| {} | {:.0} /s | {} |", r.name, r.rate, r.detail);
    }
    if let Some((rate, fill)) = backlog {
        let _ = writeln!(
            md,
            "| (e) BSFG drain of {} × 256 B two-hop facts held at idmz after cutting idmz ⇄ enterprise | {rate:.0} /s | pre-fill by AppendFact at plant-a {fill:.0} facts/s |",
            a.backlog_facts
        );
    }
    let _ = writeln!(
        md,
        "| (d) two-hop lag plant-a append → enterprise append, open loop {} facts/s × {} s | p50 {p50:.1} ms / p99 {p99:.1} ms / max {max:.1} ms | from `provenance.hops[0].appended_at_unix_ms` to the enterprise `StoredFact.appended_at_unix_ms` (ms resolution); {ok} of {total} appends succeeded over {offered_secs:.1} s |",
        a.lag_rate, a.lag_secs
    );
    if let Some((ok, total, offered_secs, p50, p99, max)) = lag_low {
        let _ = writeln!(
            md,
            "| (d) same, open loop {} facts/s × {} s | p50 {p50:.1} ms / p99 {p99:.1} ms / max {max:.1} ms | {ok} of {total} appends succeeded over {offered_secs:.1} s |",
            a.lag_low_rate, a.lag_secs
        );
    }
    if let Some(ArtifactRun {
        local_rate: local,
        cross_rate: cross,
        put_secs,
        cross_secs,
        ..
    }) = artifact
    {
        let _ = writeln!(
            md,
            "| (f) artifact {} MiB: local PutObject at plant-a | {local:.1} MiB/s | {put_secs:.1} s |",
            a.artifact_mib
        );
        let _ = writeln!(
            md,
            "| (f) same artifact crossing one hop (append → fact present at idmz, object pulled, verified, stored) | {cross:.1} MiB/s | {cross_secs:.1} s |"
        );
    }
    let _ = writeln!(md, "\n### Resources\n");
    for (z, hwm, now, nhwm) in &rss {
        let _ = writeln!(
            md,
            "* `bsfg serve` {z}: VmHWM {hwm:.1} MiB during the backlog drain (reset just before it via /proc/pid/clear_refs) (VmRSS {now:.1} MiB); its nats-server VmHWM {nhwm:.1} MiB"
        );
    }
    let _ = writeln!(
        md,
        "* CPU per fact during the two-hop lag run at {} facts/s (from /proc/pid/stat, includes everything each process did meanwhile): {lag_cpu}\n* `bsfg serve` lifetime VmHWM before (e) (includes the c{} pre-fills at plant-a): {}",
        a.lag_rate,
        a.concurrency,
        rss_lifetime
            .iter()
            .map(|r| format!("{} {:.1} MiB", r.0, r.1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "* `bsfg serve` VmHWM during the artifact crossing alone (reset after the local put){}: {}",
        artifact.map(|a| format!("; plant-a during the local PutObject alone: {:.1} MiB (VmRSS {:.1} MiB just before it)", a.put_hwm_mib, a.rss_before_put_mib)).unwrap_or_default(),
        rss_after_artifact.iter().map(|r| format!("{} {:.1} MiB", r.0, r.1)).collect::<Vec<_>>().join(", ")
    );
    for l in &rss_lines {
        let _ = writeln!(md, "{l}");
    }
    println!("{md}");
    write_section(&a.out, &md)?;
    Ok(())
}

/// One reference catch-up: its rate and the CPU each process spent per
/// message.
struct ReferenceRun {
    rate: f64,
    cpu: String,
}

/// The substrate references, each on loopback and behind the delay.
struct Reference {
    native: [ReferenceRun; 2],
    bridge: [ReferenceRun; 2],
    rss_line: String,
}

/// (b) and its floor. A hub nats-server (domain `hub`) holds a backlog of
/// `native_facts` × 256 B; a leaf nats-server (domain `leaf`) catches it up
/// twice by native stream sourcing (leaf-node link through a proxy), then
/// twice through a **bare bridge**: this process pulls the hub's stream
/// (through a proxy too) and publishes every message with its idempotency
/// key into a stream of the leaf's domain. The bridge is what any
/// receiver-pulled crossing that stores one JetStream message per fact pays
/// before it does anything of its own (no RPC between zones, validation,
/// key index, provenance or authorisation), on the same servers and
/// backlog, so it shows how much of native sourcing's rate this machine
/// leaves for such a design.
async fn reference_runs(a: &CrossArgs, dir: &Path, delay: Duration) -> anyhow::Result<Reference> {
    let (hub_port, hub_leaf_port, leaf_port) = (free_port()?, free_port()?, free_port()?);
    let (hub, hub_js) = start_nats(
        &a.nats_server,
        dir,
        "hub",
        hub_port,
        &format!("leafnodes {{\n  listen: \"127.0.0.1:{hub_leaf_port}\"\n}}"),
    )
    .await?;
    let leaf_proxy = FaultProxy::start(format!("127.0.0.1:{hub_leaf_port}").parse()?).await?;
    let (leaf, leaf_js) = start_nats(
        &a.nats_server,
        dir,
        "leaf",
        leaf_port,
        &format!(
            "leafnodes {{\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ]\n}}",
            leaf_proxy.addr.port()
        ),
    )
    .await?;
    hub_js
        .create_stream(stream::Config {
            name: "SRC".into(),
            subjects: vec!["src.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..a.native_facts {
        inflight.push_back(
            hub_js
                .publish(format!("src.{}", i % 1024), payload.clone())
                .await?,
        );
        if inflight.len() >= 256 {
            inflight.pop_front().unwrap().await?;
        }
    }
    for f in inflight {
        f.await?;
    }
    eprintln!(
        "native pre-fill {} msgs: {:.0} msg/s",
        a.native_facts,
        a.native_facts as f64 / t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // leaf connects
    let pids = [hub.pid(), leaf.pid(), std::process::id()];
    let cpu_now = || pids.map(cpu_seconds);
    let cpu_line = |before: [f64; 3], what: &str| {
        let now = cpu_now();
        let us = |i: usize| (now[i] - before[i]) * 1e6 / a.native_facts.max(1) as f64;
        format!(
            "hub nats-server {:.0} µs + leaf nats-server {:.0} µs; this bench ({what}) {:.0} µs",
            us(0),
            us(1),
            us(2)
        )
    };
    let mut native = Vec::new();
    for (name, d) in [("DST_LOOPBACK", Duration::ZERO), ("DST_WAN", delay)] {
        leaf_proxy.set_delay(d);
        let before = cpu_now();
        let t = Instant::now();
        let mut source = stream::Source {
            name: "SRC".into(),
            ..Default::default()
        };
        source.external = Some(stream::External {
            api_prefix: "$JS.hub.API".into(),
            delivery_prefix: None,
        });
        leaf_js
            .create_stream(stream::Config {
                name: name.into(),
                storage: stream::StorageType::File,
                sources: Some(vec![source]),
                ..Default::default()
            })
            .await?;
        wait_messages(&leaf_js, name, a.native_facts, Duration::from_secs(1800)).await?;
        let rate = a.native_facts as f64 / t.elapsed().as_secs_f64();
        eprintln!("native sourcing {name} (one-way delay {d:?}): {rate:.0} msg/s");
        native.push(ReferenceRun {
            rate,
            cpu: cpu_line(before, "the leaf link's proxy"),
        });
        leaf_js.delete_stream(name).await?;
    }
    leaf_proxy.set_delay(Duration::ZERO);
    let hub_proxy = FaultProxy::start(format!("127.0.0.1:{hub_port}").parse()?).await?;
    let bridge_hub = jetstream::new(
        async_nats::ConnectOptions::new()
            .connect(format!("nats://127.0.0.1:{}", hub_proxy.addr.port()))
            .await?,
    );
    let mut bridge = Vec::new();
    for (name, d) in [("BRIDGE_LOOPBACK", Duration::ZERO), ("BRIDGE_WAN", delay)] {
        hub_proxy.set_delay(d);
        let before = cpu_now();
        let rate = bare_bridge(&bridge_hub, &leaf_js, name, a.native_facts).await?;
        eprintln!("bare bridge {name} (one-way delay {d:?}): {rate:.0} msg/s");
        bridge.push(ReferenceRun {
            rate,
            cpu: cpu_line(before, "the bridge and the hub link's proxy"),
        });
        leaf_js.delete_stream(name).await?;
    }
    let rss_line = format!(
        "* native: hub nats-server VmHWM {:.1} MiB, leaf nats-server VmHWM {:.1} MiB",
        rss_kib(hub.pid()).0 as f64 / 1024.0,
        rss_kib(leaf.pid()).0 as f64 / 1024.0
    );
    let pair = |v: Vec<ReferenceRun>| {
        <[ReferenceRun; 2]>::try_from(v).map_err(|_| anyhow::anyhow!("two runs each"))
    };
    Ok(Reference {
        native: pair(native)?,
        bridge: pair(bridge)?,
        rss_line,
    })
}

/// Acknowledgements of the bridge's publishes awaited at once. 1,024 was
/// 0.03–0.06× of native sourcing's rate faster than 256 here; the bridge is
/// a ceiling, so it gets the faster one.
const BRIDGE_WINDOW: usize = 1024;

/// Messages per pull of the bridge. async-nats asks for the next batch when
/// half of one is left, so half a batch must outlast a round trip: 2,500
/// messages are ~60 ms at the bridge's rate, three 20 ms round trips.
const BRIDGE_PULL_BATCH: usize = 5000;

/// Moves `count` messages of the hub's `SRC` into a new stream `name` of
/// the leaf's domain: a pipelined pull (batches of [`BRIDGE_PULL_BATCH`]), one publish per
/// message with the source sequence as `Nats-Msg-Id`, and the pull
/// acknowledged cumulatively (every 500 messages) only once the publishes
/// before it are acknowledged, as a receiver-pulled crossing must. Returns
/// messages/s, counted until the last publish is acknowledged.
async fn bare_bridge(
    hub: &jetstream::Context,
    leaf: &jetstream::Context,
    name: &str,
    count: u64,
) -> anyhow::Result<f64> {
    use async_nats::jetstream::consumer;
    create_plain_stream(leaf, name).await?;
    let consumer: consumer::PullConsumer = hub
        .get_stream("SRC")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BRIDGE_PULL_BATCH)
        .messages()
        .await?;
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::with_capacity(BRIDGE_WINDOW);
    let settle = |(ack, source): (
        jetstream::context::PublishAckFuture,
        Option<jetstream::Message>,
    )| async move {
        ack.await?;
        if let Some(m) = source {
            m.ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack on the hub: {e}"))?;
        }
        Ok::<_, anyhow::Error>(())
    };
    for taken in 1..=count {
        let m = messages
            .next()
            .await
            .context("the hub's pull ended")?
            .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
        let sequence = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", sequence.to_string().as_str());
        let ack = leaf
            .publish_with_headers(format!("{name}.{}", m.subject), headers, m.payload.clone())
            .await?;
        inflight.push_back((ack, (taken % 500 == 0 || taken == count).then_some(m)));
        if inflight.len() >= BRIDGE_WINDOW {
            settle(inflight.pop_front().expect("window is not empty")).await?;
        }
    }
    while let Some(next) = inflight.pop_front() {
        settle(next).await?;
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let stored = leaf.get_stream(name).await?.info().await?.state.messages;
    anyhow::ensure!(
        stored == count,
        "the bridge stored {stored} of {count} messages"
    );
    Ok(rate)
}

async fn lag_run(
    src: &BsfgClient,
    ent: &jetstream::Context,
    rate: f64,
    secs: f64,
    timeout: Duration,
) -> anyhow::Result<(u64, u64, f64, f64, f64, f64)> {
    let base_seq = ent
        .get_stream("facts_operational")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let base = count(ent).await?;
    let total = (rate * secs) as u64;
    let payload = Arc::new(object_json(256));
    let t0 = tokio::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4096));
    let lagtag = tag("lag");
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let permit = sem.clone().acquire_owned().await?;
        let (client, payload, lagtag) = (src.clone(), payload.clone(), lagtag.clone());
        handles.push(tokio::spawn(async move {
            let r = client
                .append(
                    envelope(&lagtag, i, "enterprise"),
                    fact("hop2", i, &payload),
                )
                .await;
            drop(permit);
            r.is_ok()
        }));
    }
    let offered_secs = t0.elapsed().as_secs_f64();
    let mut ok = 0u64;
    for h in handles {
        ok += u64::from(h.await?);
    }
    wait_count(ent, base + ok, timeout).await?;
    // Read the arrivals back and compute enterprise append − plant-a append.
    let mut lags_us: Vec<u32> = Vec::new();
    let mut first_hop_us: Vec<u32> = Vec::new();
    let consumer = ent
        .get_stream("facts_operational")
        .await?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: base_seq + 1,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while (lags_us.len() as u64) < ok {
        let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await? else {
            break;
        };
        let m = m?;
        let sf = StoredFact::decode_from_slice(&m.payload)?;
        let origin = sf
            .provenance
            .hops
            .first()
            .map(|h| h.appended_at_unix_ms)
            .unwrap_or(sf.appended_at_unix_ms);
        let relay = sf
            .provenance
            .hops
            .get(1)
            .map(|h| h.appended_at_unix_ms)
            .unwrap_or(origin);
        lags_us.push(((sf.appended_at_unix_ms - origin).max(0) * 1000) as u32);
        first_hop_us.push(((relay - origin).max(0) * 1000) as u32);
    }
    lags_us.sort_unstable();
    first_hop_us.sort_unstable();
    let (p50, p99, max) = (
        pct_ms(&lags_us, 50.0),
        pct_ms(&lags_us, 99.0),
        pct_ms(&lags_us, 100.0),
    );
    eprintln!(
        "lag two hops at {} facts/s offered: {ok} ok, p50 {p50} ms p99 {p99} ms max {max} ms (first hop plant-a → idmz: p50 {} ms p99 {} ms)",
        rate,
        pct_ms(&first_hop_us, 50.0),
        pct_ms(&first_hop_us, 99.0)
    );
    Ok((ok, total, offered_secs, p50, p99, max))
}

const BEGIN: &str = "<!-- bsfg-bench crossing results: begin (generated, do not edit) -->";
const END: &str = "<!-- bsfg-bench crossing results: end -->";

fn write_section(out: &Path, results: &str) -> anyhow::Result<()> {
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
        _ => format!("{}\n\n{}", existing.trim_end(), section),
    };
    std::fs::write(out, text)?;
    Ok(())
}
