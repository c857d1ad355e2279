//! `bsfg demo --single-zone`: one zone (`plant-a`) walked through the
//! contract against the real node over a real socket.

use super::step;
use bsfg::client::BsfgClient;
use bsfg::config::{NatsConfig, ZoneConfig};
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site;
use bsfg_testkit::zone_config::{ZoneConfigBuilder, app_principal, bucket, mtls};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Creates the demo PKI: a CA, the node certificate and two application
/// certificates (one known to the zone, one not).
pub fn demo_pki(dir: &std::path::Path) -> anyhow::Result<()> {
    const VALID_DAYS: i64 = 30;
    let pki = Pki::open_or_init(dir, "BSFG demo CA", VALID_DAYS)?;
    pki.issue_node("plant-a-bsfg", VALID_DAYS)?;
    for name in ["mes.plant-a", "stranger.plant-a"] {
        pki.issue(name, VALID_DAYS)?;
    }
    Ok(())
}

/// The demo zone's configuration: local defaults, ports picked free, mTLS.
pub fn demo_config(dir: &std::path::Path) -> anyhow::Result<ZoneConfig> {
    let pki = Pki::open(&dir.join("certs"));
    let records = ["records"];
    let mes = app_principal(
        "mes",
        "mes.plant-a",
        &["mes", "auditor"],
        &records,
        &records,
    );
    let config = ZoneConfigBuilder::new("plant-a")
        .tls(mtls(&pki, "plant-a-bsfg"))
        .principal(mes)
        .nats(NatsConfig {
            store_dir: dir.join("jetstream"),
            ..NatsConfig::default()
        })
        .consumer(site::consumer("mes", "operational"))
        .consumer(site::consumer("auditor", "audit"))
        .buckets(vec![bucket("records", 1 << 30)])
        .build();
    config.check()?;
    Ok(config)
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
    let node = bsfg::node::start(demo_config(&dir)?).await?;
    let url = format!("https://127.0.0.1:{}", node.boundary_addr.port());
    let ops = node.ops_addr;
    println!(
        "zone plant-a is up: boundary {url} (mutual TLS 1.3), metrics http://{ops}/metrics, \
         console http://{ops}/console, data in {}",
        dir.display()
    );
    let client = BsfgClient::connect_tls(&url, tls_for(&certs, "mes.plant-a")?)?;

    step("Callers the zone does not know are refused");
    refuse_strangers(&url, &certs, &client).await?;

    let (envelope, fact) = first_fact();
    step("AppendFact: a batch step completed");
    append_first(&client, &envelope, &fact).await?;

    step("AppendFact again, same message_id and content (a producer retry)");
    append_retry(&client, &envelope, &fact).await?;

    step("AppendFact with the same message_id but different content");
    append_conflicting(&client, &envelope, &fact).await?;

    step("FetchFacts for consumer mes, then ConfirmReceipt");
    fetch_and_confirm(&client).await?;

    step("PutObject: upload a batch record, then a fact that references it");
    put_and_reference(&client, &dir, &envelope).await?;

    step("The audit stream records every refusal (bsfg fetch --consumer auditor)");
    print_audit(&client).await?;

    step("Metrics (excerpt)");
    print_metrics(&node);
    println!(
        "\ndemo complete: every step above ran against a real zone node and its own JetStream domain."
    );
    Ok(())
}

/// The client TLS configuration of the demo certificate `name`.
fn tls_for(certs: &Path, name: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    bsfg::tls::client::client_config(
        &certs.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
    )
}

/// No certificate, an unknown identity, a false `from_zone`: all refused.
async fn refuse_strangers(url: &str, certs: &Path, client: &BsfgClient) -> anyhow::Result<()> {
    let anonymous = BsfgClient::connect_tls(
        url,
        bsfg::tls::client::anonymous_client_config(&certs.join("ca.pem"))?,
    )?;
    match anonymous.fetch("mes", 1, 0, 0).await {
        Err(e) => println!(
            "no client certificate: refused in the TLS handshake ({})",
            e.code.as_str()
        ),
        Ok(_) => anyhow::bail!("a client without a certificate was served"),
    }
    let stranger = BsfgClient::connect_tls(url, tls_for(certs, "stranger.plant-a")?)?;
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
    foreign.produced_at_unix_ms = bsfg::store::now_unix_ms();
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
    Ok(())
}

/// A batch step completed, with a fresh message_id.
fn first_fact() -> (Envelope, Fact) {
    let envelope = Envelope {
        message_id: format!("demo-{}", bsfg::store::now_unix_ms()),
        from_zone: "plant-a".into(),
        to_zone: "plant-a".into(),
        produced_at_unix_ms: bsfg::store::now_unix_ms(),
        ..Default::default()
    };
    let fact = Fact {
        subject: "batch:PlantA/B1042".into(),
        predicate: "step_completed".into(),
        object_json: r#"{ "step": "granulation", "operator": "op-17", "duration_s": 5400.0 }"#
            .into(),
        ..Default::default()
    };
    (envelope, fact)
}

async fn append_first(client: &BsfgClient, envelope: &Envelope, fact: &Fact) -> anyhow::Result<()> {
    let first = client.append(envelope.clone(), fact.clone()).await?;
    println!(
        "stored at offset {} in category {} (duplicate = {})",
        first.offset, first.category, first.duplicate
    );
    Ok(())
}

async fn append_retry(client: &BsfgClient, envelope: &Envelope, fact: &Fact) -> anyhow::Result<()> {
    let retry = client.append(envelope.clone(), fact.clone()).await?;
    println!(
        "answered with the original offset {} (duplicate = {}); nothing new stored",
        retry.offset, retry.duplicate
    );
    Ok(())
}

async fn append_conflicting(
    client: &BsfgClient,
    envelope: &Envelope,
    fact: &Fact,
) -> anyhow::Result<()> {
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
    Ok(())
}

async fn fetch_and_confirm(client: &BsfgClient) -> anyhow::Result<()> {
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
    Ok(())
}

/// Uploads the batch record, appends a fact that references it, and shows
/// that the referenced object can no longer be replaced.
async fn put_and_reference(
    client: &BsfgClient,
    dir: &Path,
    envelope: &Envelope,
) -> anyhow::Result<()> {
    let record_path = dir.join("B1042-record.txt");
    std::fs::write(&record_path, "Batch B1042 record\n".repeat(50_000))?;
    let put = crate::upload::put_file(
        client,
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
    let overwrite = crate::upload::put_file(
        client,
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
    Ok(())
}

async fn print_audit(client: &BsfgClient) -> anyhow::Result<()> {
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
    Ok(())
}

fn print_metrics(node: &bsfg::node::RunningNode) {
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
}
