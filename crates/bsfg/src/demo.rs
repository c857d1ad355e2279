//! `bsfg demo`: the main job on local defaults.
//!
//! The default ([`run_site`]) starts the whole reference site on this
//! machine — `enterprise`, `idmz`, `plant-a`, `plant-b`, each with its own
//! embedded nats-server (JetStream domain = zone name) and its own node,
//! mutual TLS everywhere — moves facts and an artifact both ways, cuts the
//! `idmz` ⇄ `enterprise` link with a fault proxy while the plants keep
//! appending, restores it, and checks that every fact arrived exactly once.
//!
//! `bsfg demo --single-zone` ([`run_single_zone`]) starts one zone
//! (`plant-a`) and walks through the contract against the real node over a
//! real socket: an append, an identical retry, a conflicting retry, a fetch
//! and confirm, an artifact upload and a fact that references it, then
//! prints the node's metrics.

use crate::client::BsfgClient;
use crate::config::{BucketConfig, ConsumerConfig, NatsConfig, StartPosition, ZoneConfig};
use bsfg_proto::bsfg::v1::*;
use std::path::PathBuf;
use std::time::Duration;

/// Creates the demo PKI: a CA, the node certificate and two application
/// certificates (one known to the zone, one not).
pub fn demo_pki(dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::tls::pki;
    if !dir.join(pki::CA_CERT_FILE).exists() {
        pki::init_ca(dir, "BSFG demo CA", 30)?;
    }
    let mut node = pki::IssueRequest::new("plant-a-bsfg", 30);
    node.extra_sans = vec!["localhost".into(), "127.0.0.1".into()];
    pki::issue(dir, dir, &node)?;
    for name in ["mes.plant-a", "stranger.plant-a"] {
        pki::issue(dir, dir, &pki::IssueRequest::new(name, 30))?;
    }
    Ok(())
}

/// The demo zone's configuration: local defaults, ports picked free, mTLS.
pub fn demo_config(dir: &std::path::Path) -> anyhow::Result<ZoneConfig> {
    let certs = dir.join("certs");
    let text = format!(
        r#"
zone = "plant-a"
listen = "127.0.0.1:0"
ops_listen = "127.0.0.1:0"
[tls]
mode = "mtls"
ca = "{certs}/ca.pem"
cert = "{certs}/plant-a-bsfg.pem"
key = "{certs}/plant-a-bsfg.key"
[nats]
store_dir = "{store}"
port = 0
request_timeout = "5s"
[[principals]]
name = "mes"
kind = "app"
identities = ["mes.plant-a"]
consumers = ["mes", "auditor"]
buckets_read = ["records"]
buckets_write = ["records"]
"#,
        certs = certs.display(),
        store = dir.join("jetstream").display()
    );
    let mut config: ZoneConfig = toml::from_str(&text)?;
    config.nats = NatsConfig {
        store_dir: dir.join("jetstream"),
        ..config.nats
    };
    config.consumers.push(ConsumerConfig {
        name: "mes".into(),
        category: "operational".into(),
        kinds: vec![],
        start: StartPosition::Earliest,
        redeliver_after: Duration::from_secs(30),
        unconfirmed_max: 10_000,
    });
    config.consumers.push(ConsumerConfig {
        name: "auditor".into(),
        category: "audit".into(),
        kinds: vec![],
        start: StartPosition::Earliest,
        redeliver_after: Duration::from_secs(30),
        unconfirmed_max: 10_000,
    });
    config.buckets.push(BucketConfig {
        name: "records".into(),
        capacity_bytes: 1 << 30,
    });
    config.check()?;
    Ok(config)
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// `bsfg demo`: the site demo, or the single-zone walkthrough.
pub async fn run(dir: Option<PathBuf>, single_zone: bool) -> anyhow::Result<()> {
    let dir = dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bsfg-demo-{}", std::process::id())));
    if single_zone {
        run_single_zone(dir).await
    } else {
        run_site(dir).await
    }
}

pub async fn run_single_zone(dir: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let certs = dir.join("certs");
    step("Development PKI (bsfg certs init / issue)");
    demo_pki(&certs)?;
    println!(
        "CA, node certificate plant-a-bsfg and client certificates mes.plant-a, stranger.plant-a in {}",
        certs.display()
    );
    let node = crate::node::start(demo_config(&dir)?).await?;
    let url = format!("https://127.0.0.1:{}", node.boundary_addr.port());
    println!(
        "zone plant-a is up: boundary {url} (mutual TLS 1.3), metrics http://{}/metrics, data in {}",
        node.ops_addr,
        dir.display()
    );
    let tls_for = |name: &str| {
        crate::tls::client::client_config(
            &certs.join("ca.pem"),
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
        )
    };
    let client = BsfgClient::connect_tls(&url, tls_for("mes.plant-a")?)?;

    step("Callers the zone does not know are refused");
    let anonymous = BsfgClient::connect_tls(
        &url,
        crate::tls::client::anonymous_client_config(&certs.join("ca.pem"))?,
    )?;
    match anonymous.fetch("mes", 1, 0, 0).await {
        Err(e) => println!(
            "no client certificate: refused in the TLS handshake ({})",
            e.code.as_str()
        ),
        Ok(_) => anyhow::bail!("a client without a certificate was served"),
    }
    let stranger = BsfgClient::connect_tls(&url, tls_for("stranger.plant-a")?)?;
    match stranger.fetch("mes", 1, 0, 0).await {
        Err(e) => println!(
            "valid certificate, unknown identity: {} — {}",
            e.code.as_str(),
            e.message.unwrap_or_default()
        ),
        Ok(_) => anyhow::bail!("an unknown identity was served"),
    }
    let mut foreign = Envelope {
        message_id: "spoof-1".into(),
        from_zone: "enterprise".into(),
        to_zone: "plant-a".into(),
        produced_at_unix_ms: 1,
        ..Default::default()
    };
    foreign.produced_at_unix_ms = crate::store::now_unix_ms();
    let spoof = Fact {
        subject: "batch:PlantA/B1".into(),
        predicate: "step_completed".into(),
        object_json: "{}".into(),
        ..Default::default()
    };
    match client.append(foreign, spoof).await {
        Err(e) => println!(
            "the mes app claiming from_zone enterprise: {} — {}",
            e.code.as_str(),
            e.message.unwrap_or_default()
        ),
        Ok(_) => anyhow::bail!("a false from_zone claim was accepted"),
    }

    let envelope = Envelope {
        message_id: format!("demo-{}", crate::store::now_unix_ms()),
        from_zone: "plant-a".into(),
        to_zone: "plant-a".into(),
        produced_at_unix_ms: crate::store::now_unix_ms(),
        ..Default::default()
    };
    let fact = Fact {
        subject: "batch:PlantA/B1042".into(),
        predicate: "step_completed".into(),
        object_json: r#"{ "step": "granulation", "operator": "op-17", "duration_s": 5400.0 }"#
            .into(),
        ..Default::default()
    };
    step("AppendFact: a batch step completed");
    let first = client.append(envelope.clone(), fact.clone()).await?;
    println!(
        "stored at offset {} in category {} (duplicate = {})",
        first.offset, first.category, first.duplicate
    );

    step("AppendFact again, same message_id and content (a producer retry)");
    let retry = client.append(envelope.clone(), fact.clone()).await?;
    println!(
        "answered with the original offset {} (duplicate = {}); nothing new stored",
        retry.offset, retry.duplicate
    );

    step("AppendFact with the same message_id but different content");
    let mut changed = fact.clone();
    changed.object_json = r#"{"step":"drying"}"#.into();
    match client.append(envelope.clone(), changed).await {
        Err(e) => println!(
            "refused: {} — {}",
            e.code.as_str(),
            e.message.unwrap_or_default()
        ),
        Ok(r) => anyhow::bail!(
            "a conflicting duplicate was accepted at offset {}",
            r.offset
        ),
    }

    step("FetchFacts for consumer mes, then ConfirmReceipt");
    let fetched = client.fetch("mes", 10, 0, 1000).await?;
    for f in &fetched.facts {
        println!(
            "offset {}: {} {} {}",
            f.offset, f.fact.subject, f.fact.predicate, f.fact.object_json
        );
    }
    let last = fetched.facts.last().map(|f| f.offset).unwrap_or(0);
    let frontier = client.confirm("mes", last).await?;
    println!("confirmed; the frontier of mes is now {frontier}");

    step("PutObject: upload a batch record, then a fact that references it");
    let record_path = dir.join("B1042-record.txt");
    std::fs::write(&record_path, "Batch B1042 record\n".repeat(50_000))?;
    let put = crate::cli::put_file(
        &client,
        "records",
        "batch/B1042/record.txt",
        &record_path,
        "text/plain",
        false,
    )
    .await?;
    println!("stored {} bytes as {}", put.size_bytes, put.digest);
    let with_artifact = Fact {
        subject: "batch:PlantA/B1042".into(),
        predicate: "has_artifact".into(),
        object_json: r#"{"kind":"batch_record"}"#.into(),
        attachments: vec![AttachmentRef {
            bucket: "records".into(),
            key: "batch/B1042/record.txt".into(),
            digest: put.digest.clone(),
            size_bytes: put.size_bytes,
            media_type: "text/plain".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut envelope2 = envelope.clone();
    envelope2.message_id.push_str("-artifact");
    let appended = client.append(envelope2, with_artifact).await?;
    println!("fact with attachment stored at offset {}", appended.offset);
    let overwrite = crate::cli::put_file(
        &client,
        "records",
        "batch/B1042/record.txt",
        &record_path,
        "text/plain",
        false,
    )
    .await;
    match overwrite {
        Err(e) => println!("overwriting the referenced object is refused: {e}"),
        Ok(_) => anyhow::bail!("a referenced object was overwritten"),
    }

    step("The audit stream records every refusal (bsfg fetch --consumer auditor)");
    let audit = client.fetch("auditor", 100, 0, 1000).await?;
    for f in &audit.facts {
        println!(
            "offset {}: {} {}",
            f.offset, f.fact.predicate, f.fact.object_json
        );
    }
    if audit.facts.is_empty() {
        anyhow::bail!("no audit records were written");
    }

    step("Metrics (excerpt)");
    let metrics = node.metrics.render();
    for line in metrics.lines().filter(|l| {
        l.starts_with("bsfg_append_requests")
            || l.starts_with("bsfg_frontier")
            || l.starts_with("bsfg_append_duplicates")
            || l.starts_with("bsfg_access_refusals")
            || l.starts_with("bsfg_certificate_expiry")
    }) {
        println!("{line}");
    }
    println!(
        "\ndemo complete: every step above ran against a real zone node and its own JetStream domain."
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The site demo: four zones, two hops, a partition and its recovery.
// ---------------------------------------------------------------------------

use crate::faultproxy::FaultProxy;
use crate::site::{self, BUCKET, ZONES};
use std::collections::BTreeMap;
use std::time::Instant;

/// How long the plants keep appending while idmz ⇄ enterprise is cut.
const PARTITION: Duration = Duration::from_secs(5);
/// Pause between two appends of one producer while the link is cut.
const APPEND_EVERY: Duration = Duration::from_millis(2);
/// Concurrent producers per plant while the link is cut.
const PRODUCERS_PER_PLANT: usize = 3;
/// Batch size of enterprise's pull from idmz in the demo.
const RECONCILE_BATCH: u32 = 100;

struct DemoZone {
    /// Held so the node keeps running; everything is read through `app`,
    /// as an operator would.
    _node: crate::node::RunningNode,
    app: BsfgClient,
}

struct DemoSite {
    zones: BTreeMap<&'static str, DemoZone>,
    started: Instant,
}

impl DemoSite {
    fn app(&self, zone: &str) -> &BsfgClient {
        &self.zones[zone].app
    }

    /// Everything new in a zone's log, through its `local` consumer.
    async fn drain(&self, zone: &str) -> anyhow::Result<Vec<StoredFact>> {
        let mut out = Vec::new();
        loop {
            let r = self.app(zone).fetch("local", 1000, 0, 0).await?;
            if r.last_delivered_offset > r.frontier {
                self.app(zone)
                    .confirm("local", r.last_delivered_offset)
                    .await?;
            }
            if r.facts.is_empty() {
                return Ok(out);
            }
            out.extend(r.facts);
        }
    }

    /// Waits until `zone` holds every message id in `ids` (from `from`).
    async fn wait_for(
        &self,
        zone: &str,
        from: &str,
        ids: &[String],
        seen: &mut Vec<StoredFact>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            seen.extend(self.drain(zone).await?);
            let missing: Vec<&String> = ids
                .iter()
                .filter(|m| {
                    !seen
                        .iter()
                        .any(|f| f.envelope.from_zone == from && &f.envelope.message_id == *m)
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("{zone} did not receive {missing:?} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The link `zone` pulls `peer` through.
    async fn link(&self, zone: &str, peer: &str) -> anyhow::Result<LinkStatus> {
        let s = self.app(zone).status().await?;
        s.links
            .into_iter()
            .find(|l| l.peer == peer)
            .ok_or_else(|| anyhow::anyhow!("{zone} has no link to {peer}"))
    }

    /// Facts in idmz's log its `to-enterprise` consumer has not had
    /// confirmed yet: what is queued at idmz for enterprise, as idmz's own
    /// `bsfg status` shows it (enterprise cannot see it while cut off).
    async fn queued_at_idmz_for_enterprise(&self) -> anyhow::Result<u64> {
        let s = self.app("idmz").status().await?;
        let consumer = s
            .consumers
            .into_iter()
            .find(|c| c.name == "to-enterprise")
            .ok_or_else(|| anyhow::anyhow!("idmz has no consumer to-enterprise"))?;
        Ok(consumer.pending)
    }

    fn t(&self) -> String {
        format!("t={:>5.1}s", self.started.elapsed().as_secs_f64())
    }
}

fn envelope_for(id: &str, from: &str, to: &str) -> Envelope {
    Envelope {
        message_id: id.into(),
        from_zone: from.into(),
        to_zone: to.into(),
        produced_at_unix_ms: crate::store::now_unix_ms(),
        ..Default::default()
    }
}

fn fact_of(subject: &str, predicate: &str, json: &str) -> Fact {
    Fact {
        subject: subject.into(),
        predicate: predicate.into(),
        object_json: json.into(),
        ..Default::default()
    }
}

/// `plant-a#3 → idmz#5 (+12 ms) → enterprise#4 (+9 ms)`
fn hops(f: &StoredFact) -> String {
    let mut out = String::new();
    let mut previous: Option<i64> = None;
    for h in &f.provenance.hops {
        if !out.is_empty() {
            out.push_str(" → ");
        }
        out.push_str(&format!("{}#{}", h.zone, h.offset));
        if let Some(p) = previous {
            out.push_str(&format!(" (+{} ms)", h.appended_at_unix_ms - p));
        }
        previous = Some(h.appended_at_unix_ms);
    }
    out
}

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

pub async fn run_site(dir: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let dir = std::path::absolute(&dir)?;
    println!("BSFG reference site on this machine");
    println!(
        "  plant-a ⇄ idmz ⇄ enterprise, plant-b ⇄ idmz. Each zone: its own nats-server (JetStream domain = zone name)"
    );
    println!(
        "  and its own bsfg node. Nothing is shared: every receiver PULLS from its neighbour's node over mutual TLS."
    );
    println!("  Data: {}", dir.display());

    step("1. Development PKI (what `bsfg certs init` / `bsfg certs issue` do)");
    let certs = dir.join("certs");
    site::issue_site_pki(&certs, "BSFG demo site CA", 30)?;
    println!(
        "  CA, node certificates {} and application certificates {}",
        ZONES.map(site::node_identity).join(", "),
        ZONES.map(site::app_identity).join(", ")
    );

    step("2. Four zones, each node starting and supervising its own nats-server");
    let mut ports = BTreeMap::new();
    for z in ZONES {
        ports.insert(z, crate::ports::free_port()?);
    }
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The idmz ⇄ enterprise link, both ways, runs through fault proxies:
    // enterprise pulls idmz through one, idmz pulls enterprise through the other.
    let enterprise_to_idmz = FaultProxy::start(loopback(ports["idmz"])).await?;
    let idmz_to_enterprise = FaultProxy::start(loopback(ports["enterprise"])).await?;
    let mut zones = BTreeMap::new();
    println!(
        "  {:<11} {:<24} {:<17} store",
        "zone", "boundary (mTLS 1.3)", "JetStream domain"
    );
    for z in ZONES {
        let zdir = dir.join(z);
        std::fs::create_dir_all(&zdir)?;
        let at = site::ZonePlacement {
            dir: &zdir,
            certs: &certs,
            port: ports[z],
            nats_url: None,
        };
        let peer_url = |peer: &str| match (z, peer) {
            ("enterprise", "idmz") => {
                format!("https://127.0.0.1:{}", enterprise_to_idmz.addr.port())
            }
            ("idmz", "enterprise") => {
                format!("https://127.0.0.1:{}", idmz_to_enterprise.addr.port())
            }
            _ => format!("https://127.0.0.1:{}", ports[peer]),
        };
        let mut config = site::reference_zone_config(z, &at, &peer_url);
        // Smaller batches on the link that will be cut, so the replay after
        // the restore takes several round trips and can be watched.
        for u in config
            .upstreams
            .iter_mut()
            .filter(|u| z == "enterprise" && u.peer == "idmz")
        {
            u.batch_limit = RECONCILE_BATCH;
        }
        config.check()?;
        let node = crate::node::start(config).await?;
        let tls = crate::tls::client::client_config(
            &certs.join("ca.pem"),
            &certs.join(format!("{}.pem", site::app_identity(z))),
            &certs.join(format!("{}.key", site::app_identity(z))),
        )?;
        let app = BsfgClient::connect_tls(
            &format!("https://127.0.0.1:{}", node.boundary_addr.port()),
            tls,
        )?;
        println!(
            "  {:<11} {:<24} {:<17} {}",
            z,
            format!("https://{}", node.boundary_addr),
            z,
            zdir.join("jetstream").display()
        );
        zones.insert(z, DemoZone { _node: node, app });
    }
    let site = DemoSite { zones, started };
    println!(
        "  fault proxies on the idmz ⇄ enterprise link: enterprise pulls idmz via {}, idmz pulls enterprise via {}",
        enterprise_to_idmz.addr, idmz_to_enterprise.addr
    );
    println!(
        "  enterprise pulls idmz in batches of {RECONCILE_BATCH} facts (so the replay after the cut is visible); the other links in batches of 500"
    );
    let pairs: Vec<(&str, &str)> = ZONES
        .iter()
        .flat_map(|z| site::neighbours(z).into_iter().map(move |p| (*z, p)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut down = Vec::new();
        for (z, p) in &pairs {
            if site.link(z, p).await?.mode != "normal" {
                down.push(format!("{z}←{p}"));
            }
        }
        if down.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("links not up after 20 s: {down:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  {} all {} pull links are up (mode normal)",
        site.t(),
        pairs.len()
    );

    step("3. plant-a → enterprise: batch facts and the batch record (appended at plant-a only)");
    let run_id = crate::store::now_unix_ms();
    let record = format!("Batch B1042 record (demo run {run_id})\n")
        .repeat(25_000)
        .into_bytes();
    let record_path = dir.join("B1042-record.txt");
    std::fs::write(&record_path, &record)?;
    let record_key = "batch/B1042/record.txt";
    let put = crate::cli::put_file(
        site.app("plant-a"),
        BUCKET,
        record_key,
        &record_path,
        "text/plain",
        false,
    )
    .await?;
    println!(
        "  PutObject   {BUCKET}/{record_key}: {} bytes, {}",
        put.size_bytes, put.digest
    );
    let mut up_ids = Vec::new();
    for (i, step_name) in ["weighing", "granulation", "drying"].iter().enumerate() {
        let id = format!("B1042-step-{i}-{run_id}");
        let r = site
            .app("plant-a")
            .append(
                envelope_for(&id, "plant-a", "enterprise"),
                fact_of(
                    "batch:PlantA/B1042",
                    "step_completed",
                    &format!(r#"{{"step":"{step_name}"}}"#),
                ),
            )
            .await?;
        println!(
            "  AppendFact  batch:PlantA/B1042 step_completed {{\"step\":\"{step_name}\"}} → plant-a offset {}",
            r.offset
        );
        up_ids.push(id);
    }
    let mut with_record = fact_of(
        "batch:PlantA/B1042",
        "has_artifact",
        r#"{"kind":"batch_record"}"#,
    );
    with_record.attachments.push(AttachmentRef {
        bucket: BUCKET.into(),
        key: record_key.into(),
        digest: put.digest.clone(),
        size_bytes: put.size_bytes,
        media_type: "text/plain".into(),
        ..Default::default()
    });
    let id = format!("B1042-record-{run_id}");
    let r = site
        .app("plant-a")
        .append(envelope_for(&id, "plant-a", "enterprise"), with_record)
        .await?;
    println!(
        "  AppendFact  batch:PlantA/B1042 has_artifact (attachment {BUCKET}/{record_key}) → plant-a offset {}",
        r.offset
    );
    up_ids.push(id);

    step("4. enterprise → plant-a: a recipe release (appended at enterprise only)");
    let recipe_id = format!("R7-v3-{run_id}");
    let r = site
        .app("enterprise")
        .append(
            envelope_for(&recipe_id, "enterprise", "plant-a"),
            fact_of(
                "recipe:R7",
                "recipe_released",
                r#"{"version":3,"product":"P-100"}"#,
            ),
        )
        .await?;
    println!(
        "  AppendFact  recipe:R7 recipe_released {{\"version\":3}} → enterprise offset {}",
        r.offset
    );

    step(
        "5. Arrivals two hops away, with provenance (zone#offset per hop, time since the previous hop)",
    );
    let mut at_enterprise = Vec::new();
    site.wait_for(
        "enterprise",
        "plant-a",
        &up_ids,
        &mut at_enterprise,
        Duration::from_secs(20),
    )
    .await?;
    for f in at_enterprise
        .iter()
        .filter(|f| up_ids.contains(&f.envelope.message_id))
    {
        println!(
            "  at enterprise: {} {} {}  via {}",
            f.fact.subject,
            f.fact.predicate,
            f.fact.object_json,
            hops(f)
        );
    }
    let mut got = Vec::new();
    let info = site
        .app("enterprise")
        .get_object(BUCKET, record_key, 0, Duration::from_secs(60), |_, c| {
            got.extend_from_slice(c);
            Ok(())
        })
        .await?;
    if sha256_of(&got) != put.digest || info.digest != put.digest {
        anyhow::bail!("the batch record at enterprise is not byte-identical");
    }
    println!(
        "  at enterprise: object {BUCKET}/{record_key}, {} bytes, byte-identical (pulled by idmz, then by enterprise, before the fact was appended)",
        got.len()
    );
    let mut at_plant_a = Vec::new();
    site.wait_for(
        "plant-a",
        "enterprise",
        std::slice::from_ref(&recipe_id),
        &mut at_plant_a,
        Duration::from_secs(20),
    )
    .await?;
    for f in at_plant_a
        .iter()
        .filter(|f| f.envelope.message_id == recipe_id)
    {
        println!(
            "  at plant-a:    {} {} {}  via {}",
            f.fact.subject,
            f.fact.predicate,
            f.fact.object_json,
            hops(f)
        );
    }
    let at_plant_b = site.drain("plant-b").await?;
    if at_plant_b
        .iter()
        .any(|f| up_ids.contains(&f.envelope.message_id) || f.envelope.message_id == recipe_id)
    {
        anyhow::bail!("plant-b received a fact not addressed to it");
    }
    println!(
        "  at plant-b:    none of these ({} facts in its log): idmz serves a peer only what routes through it",
        at_plant_b.len()
    );

    step(&format!(
        "6. Cut idmz ⇄ enterprise; plant-a and plant-b keep appending for {} s",
        PARTITION.as_secs()
    ));
    enterprise_to_idmz.cut();
    idmz_to_enterprise.cut();
    println!(
        "  {} link cut (both fault proxies drop every connection and refuse new ones)",
        site.t()
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counters: BTreeMap<&str, std::sync::Arc<std::sync::atomic::AtomicU64>> =
        ["plant-a", "plant-b"]
            .into_iter()
            .map(|z| (z, std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0))))
            .collect();
    let mut producers = Vec::new();
    for (plant, worker) in ["plant-a", "plant-b"]
        .into_iter()
        .flat_map(|p| (0..PRODUCERS_PER_PLANT).map(move |w| (p, w)))
    {
        let app = site.app(plant).clone();
        let stop = stop.clone();
        let count = counters[plant].clone();
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("{plant}-w{worker}-lot-{i:05}-{run_id}");
                let subject = if plant == "plant-a" {
                    "equipment:PlantA/Mixer1"
                } else {
                    "equipment:PlantB/Press2"
                };
                let r = app
                    .append(
                        envelope_for(&id, plant, "enterprise"),
                        fact_of(
                            subject,
                            "reading_recorded",
                            &format!(r#"{{"seq":{i},"temp_c":{}}}"#, 20 + i % 7),
                        ),
                    )
                    .await;
                match r {
                    Ok(_) => {
                        ids.push(id);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        i += 1;
                    }
                    Err(e) => {
                        return Err(anyhow::anyhow!(
                            "{plant}: append refused while the link was cut: {}: {}",
                            e.code.as_str(),
                            e.message.unwrap_or_default()
                        ));
                    }
                }
                tokio::time::sleep(APPEND_EVERY).await;
            }
            Ok(ids)
        }));
    }
    let cut_at = Instant::now();
    println!(
        "  {:<8} {:>9} {:>9} {:>14} {:>13}   enterprise ← idmz link",
        "", "plant-a", "plant-b", "idmz received", "queued at"
    );
    println!(
        "  {:<8} {:>9} {:>9} {:>14} {:>13}",
        "", "appended", "appended", "from plants", "idmz for ent."
    );
    while cut_at.elapsed() < PARTITION {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idmz = site.app("idmz").status().await?;
        let received: u64 = idmz
            .links
            .iter()
            .filter(|l| l.peer.starts_with("plant-"))
            .map(|l| l.facts_replicated)
            .sum();
        let link = site.link("enterprise", "idmz").await?;
        let age = if link.last_confirm_age_seconds < 0.0 {
            "never".into()
        } else {
            format!("{:.1} s", link.last_confirm_age_seconds)
        };
        println!(
            "  {} {:>9} {:>9} {:>14} {:>13}   {}, last confirmation {age} ago",
            site.t(),
            counters["plant-a"].load(std::sync::atomic::Ordering::SeqCst),
            counters["plant-b"].load(std::sync::atomic::Ordering::SeqCst),
            received,
            site.queued_at_idmz_for_enterprise().await?,
            link.mode
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut lot_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (plant, p) in ["plant-a", "plant-b"]
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, PRODUCERS_PER_PLANT))
        .zip(producers)
    {
        lot_ids.entry(plant).or_default().extend(p.await??);
    }
    let appended: usize = lot_ids.values().map(Vec::len).sum();
    println!(
        "  every one of the {appended} appends at the plants was acknowledged by its own zone while enterprise was unreachable."
    );
    // Let idmz finish pulling the last few from the plants, then show status.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idmz = site.app("idmz").status().await?;
        let ok = ["plant-a", "plant-b"].iter().all(|p| {
            idmz.links
                .iter()
                .any(|l| &l.peer == p && l.backlog == 0 && l.mode == "normal")
        });
        if (ok && site.queued_at_idmz_for_enterprise().await? as usize >= appended)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  {} status during the partition (bsfg status):", site.t());
    print!(
        "{}",
        indent(&crate::cli::render_status(
            &site.app("enterprise").status().await?
        ))
    );
    print!(
        "{}",
        indent(&crate::cli::render_status(
            &site.app("idmz").status().await?
        ))
    );
    println!(
        "  enterprise's link to idmz is autonomous; idmz keeps pulling the plants; {} facts wait at idmz for enterprise.",
        site.queued_at_idmz_for_enterprise().await?
    );

    step("7. Restore the link: reconciliation, then normal, backlog drained");
    enterprise_to_idmz.restore();
    idmz_to_enterprise.restore();
    let restored_at = Instant::now();
    println!("  {} link restored", site.t());
    println!(
        "  (backlog reported by idmz: what idmz still had for enterprise after the batch it just served;"
    );
    println!(
        "   queued at idmz: what enterprise has not confirmed yet, including batches in flight)"
    );
    let mut last = String::new();
    let mut modes_seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let link = site.link("enterprise", "idmz").await?;
        let queued = site.queued_at_idmz_for_enterprise().await?;
        if modes_seen.last() != Some(&link.mode) {
            modes_seen.push(link.mode.clone());
        }
        let line = format!(
            "enterprise ← idmz: {:<14} backlog reported by idmz {:>5}, queued at idmz {:>5}, replicated {:>5}",
            link.mode, link.backlog, queued, link.facts_replicated
        );
        if line != last {
            println!("  {} {line}", site.t());
            last = line;
        }
        if link.mode == "normal" && queued == 0 && link.backlog == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the backlog did not drain within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    println!(
        "  drained in {:.1} s; modes seen after restore: {}",
        restored_at.elapsed().as_secs_f64(),
        modes_seen.join(" → ")
    );

    step(
        "8. Check: every fact appended for enterprise arrived there exactly once, in per-origin order",
    );
    at_enterprise.extend(site.drain("enterprise").await?);
    let mut expected: Vec<(String, String)> = up_ids
        .iter()
        .map(|m| ("plant-a".to_string(), m.clone()))
        .collect();
    for (plant, ids) in &lot_ids {
        expected.extend(ids.iter().map(|m| (plant.to_string(), m.clone())));
    }
    let mut copies: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in &at_enterprise {
        *copies
            .entry((f.envelope.from_zone.clone(), f.envelope.message_id.clone()))
            .or_default() += 1;
    }
    let missing = expected.iter().filter(|k| !copies.contains_key(*k)).count();
    let duplicated = copies.values().filter(|n| **n > 1).count();
    let mut ordered = true;
    for origin in ["plant-a", "plant-b"] {
        let offsets: Vec<u64> = at_enterprise
            .iter()
            .filter(|f| f.provenance.origin_zone == origin)
            .map(|f| f.provenance.origin_offset)
            .collect();
        ordered &= offsets.windows(2).all(|w| w[0] < w[1]);
    }
    println!(
        "  expected {} (plant-a {}, plant-b {}); at enterprise: {} present, {missing} missing, {duplicated} duplicated; per-origin order {}",
        expected.len(),
        up_ids.len() + lot_ids["plant-a"].len(),
        lot_ids["plant-b"].len(),
        expected.len() - missing,
        if ordered { "preserved" } else { "BROKEN" }
    );
    if missing > 0 || duplicated > 0 || !ordered {
        anyhow::bail!("delivery check failed");
    }

    step("9. End-to-end status of all four zones (bsfg status on each node)");
    println!(
        "  link (pull) = the neighbour this zone pulls from; frontier = what the neighbour has confirmed for it;"
    );
    println!(
        "  backlog = facts still waiting at the neighbour; replicated = facts this zone appended from that link."
    );
    for z in ZONES {
        print!(
            "{}",
            crate::cli::render_status(&site.app(z).status().await?)
        );
    }

    println!(
        "\nsite demo complete in {:.1} s: facts and an artifact crossed two hops both ways over mutual TLS; during a {} s cut of idmz ⇄ enterprise the plants appended {appended} facts without waiting; after the restore the backlog drained to zero and every fact reached enterprise exactly once.",
        started.elapsed().as_secs_f64(),
        PARTITION.as_secs()
    );
    drop(site);
    drop(enterprise_to_idmz);
    drop(idmz_to_enterprise);
    // Give the supervisors a moment to reap their nats-servers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
