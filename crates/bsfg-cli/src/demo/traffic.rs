//! Phases 3-5 of the site demo: facts and the batch record up from plant-a
//! to enterprise, a recipe release down to plant-a, and where each arrived.

use super::site::DemoSite;
use super::{envelope_for, fact_of};
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::site::BUCKET;
use std::path::Path;
use std::time::Duration;

/// The batch record's key in [`BUCKET`].
const RECORD_KEY: &str = "batch/B1042/record.txt";

/// What plant-a sent up in phase 3.
pub(super) struct SentUp {
    /// The batch facts' message ids, the batch record's fact last.
    pub(super) up_ids: Vec<String>,
    /// The batch record's digest, as plant-a stored it.
    digest: String,
}

/// Phase 3: the batch record, the batch facts and a fact that references
/// the record, all appended at plant-a for enterprise.
pub(super) async fn send_up(site: &DemoSite, dir: &Path, run_id: i64) -> anyhow::Result<SentUp> {
    let put = put_record(site, dir, run_id).await?;
    let mut up_ids = append_steps(site, run_id).await?;
    up_ids.push(append_record_fact(site, run_id, &put).await?);
    Ok(SentUp {
        up_ids,
        digest: put.digest,
    })
}

async fn put_record(site: &DemoSite, dir: &Path, run_id: i64) -> anyhow::Result<PutObjectResponse> {
    let record = format!("Batch B1042 record (demo run {run_id})\n")
        .repeat(25_000)
        .into_bytes();
    let record_path = dir.join("B1042-record.txt");
    std::fs::write(&record_path, &record)?;
    let put = crate::upload::put_file(
        site.app("plant-a"),
        BUCKET,
        RECORD_KEY,
        &record_path,
        "text/plain",
        false,
    )
    .await?;
    println!(
        "  PutObject   {BUCKET}/{RECORD_KEY}: {} bytes, {}",
        put.size_bytes, put.digest
    );
    Ok(put)
}

async fn append_steps(site: &DemoSite, run_id: i64) -> anyhow::Result<Vec<String>> {
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
    Ok(up_ids)
}

/// Appends the fact that references the batch record; returns its message id.
async fn append_record_fact(
    site: &DemoSite,
    run_id: i64,
    put: &PutObjectResponse,
) -> anyhow::Result<String> {
    let mut with_record = fact_of(
        "batch:PlantA/B1042",
        "has_artifact",
        r#"{"kind":"batch_record"}"#,
    );
    with_record.attachments.push(AttachmentRef {
        bucket: BUCKET.into(),
        key: RECORD_KEY.into(),
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
        "  AppendFact  batch:PlantA/B1042 has_artifact (attachment {BUCKET}/{RECORD_KEY}) → plant-a offset {}",
        r.offset
    );
    Ok(id)
}

/// Phase 4: a recipe release appended at enterprise for plant-a; returns
/// its message id.
pub(super) async fn release_recipe(site: &DemoSite, run_id: i64) -> anyhow::Result<String> {
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
    Ok(recipe_id)
}

/// Phase 5: the facts two hops away with their provenance, the record
/// byte-identical at enterprise, nothing at plant-b. Returns what arrived
/// at enterprise so far.
pub(super) async fn arrivals(
    site: &DemoSite,
    sent: &SentUp,
    recipe_id: &str,
) -> anyhow::Result<Vec<StoredFact>> {
    let at_enterprise = arrived_at_enterprise(site, &sent.up_ids).await?;
    record_at_enterprise(site, &sent.digest).await?;
    arrived_at_plant_a(site, recipe_id).await?;
    nothing_at_plant_b(site, &sent.up_ids, recipe_id).await?;
    Ok(at_enterprise)
}

async fn arrived_at_enterprise(
    site: &DemoSite,
    up_ids: &[String],
) -> anyhow::Result<Vec<StoredFact>> {
    let mut at_enterprise = Vec::new();
    site.wait_for(
        "enterprise",
        "plant-a",
        up_ids,
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
    Ok(at_enterprise)
}

async fn record_at_enterprise(site: &DemoSite, digest: &str) -> anyhow::Result<()> {
    let mut got = Vec::new();
    let info = site
        .app("enterprise")
        .get_object(BUCKET, RECORD_KEY, 0, Duration::from_secs(60), |_, c| {
            got.extend_from_slice(c);
            Ok(())
        })
        .await?;
    if sha256_of(&got) != digest || info.digest != digest {
        anyhow::bail!("the batch record at enterprise is not byte-identical");
    }
    println!(
        "  at enterprise: object {BUCKET}/{RECORD_KEY}, {} bytes, byte-identical (pulled by idmz, then by enterprise, before the fact was appended)",
        got.len()
    );
    Ok(())
}

async fn arrived_at_plant_a(site: &DemoSite, recipe_id: &str) -> anyhow::Result<()> {
    let mut at_plant_a = Vec::new();
    site.wait_for(
        "plant-a",
        "enterprise",
        &[recipe_id.to_owned()],
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
    Ok(())
}

/// idmz serves a peer only what routes through it.
async fn nothing_at_plant_b(
    site: &DemoSite,
    up_ids: &[String],
    recipe_id: &str,
) -> anyhow::Result<()> {
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
    Ok(())
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
