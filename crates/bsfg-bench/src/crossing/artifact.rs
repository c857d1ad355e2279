//! Phase (f): an artifact put at plant-a (PutObject), then crossing one
//! hop as an attachment of a fact addressed to idmz.

use super::cli::CrossArgs;
use super::load::{envelope, fact, tag};
use super::zones::{Zone, count, reset_peak_rss, wait_count};
use crate::object_json;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::{AttachmentRef, PutObjectHeader, PutObjectResponse};
use bsfg_testkit::procfs::rss;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Phase (f): rates, durations and plant-a's memory around the local put.
#[derive(Clone, Copy)]
pub(super) struct ArtifactRun {
    pub(super) local_rate: f64,
    pub(super) cross_rate: f64,
    pub(super) put_secs: f64,
    pub(super) cross_secs: f64,
    pub(super) put_hwm_mib: f64,
    pub(super) rss_before_put_mib: f64,
}

/// `None` when `--artifact-mib` is 0.
pub(super) async fn artifact_run(
    a: &CrossArgs,
    zones: &BTreeMap<&str, Zone>,
    timeout: Duration,
) -> anyhow::Result<Option<ArtifactRun>> {
    if a.artifact_mib == 0 {
        return Ok(None);
    }
    let src = &zones["plant-a"].client;
    let size = a.artifact_mib * 1024 * 1024;
    let key = tag("artifact");
    let rss_before_put = rss(zones["plant-a"].node.pid()).resident_kib as f64 / 1024.0;
    reset_peak_rss(zones);
    let (stored, put_secs) = put(src, size, key.clone()).await?;
    let hwm_put = rss(zones["plant-a"].node.pid()).peak_kib as f64 / 1024.0;
    reset_peak_rss(zones);
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
    Ok(Some(ArtifactRun {
        local_rate,
        cross_rate,
        put_secs,
        cross_secs,
        put_hwm_mib: hwm_put,
        rss_before_put_mib: rss_before_put,
    }))
}

/// Puts `size` bytes (1 MiB chunks of a fixed pattern) into plant-a's
/// `records` bucket under `key`; returns what was stored and the seconds
/// the put took.
async fn put(src: &BsfgClient, size: u64, key: String) -> anyhow::Result<(PutObjectResponse, f64)> {
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
    Ok((r, t.elapsed().as_secs_f64()))
}
