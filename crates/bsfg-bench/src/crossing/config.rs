//! The crossing zones' node configurations (also the `ha` mode's catch-up
//! zones), and the certificates of the bench's nodes under mTLS (also the
//! `ab` mode's).

use crate::node_config::{MAX_AGE, bench_node};
use anyhow::bail;
use bsfg::config::{UpstreamConfig, ZoneConfig};
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site::{app_identity, node_identity};
use bsfg_testkit::zone_config::{
    ZoneConfigBuilder, bucket, category, consumer, merge_toml, peer_principal, upstream,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The object bucket of every crossing zone.
const BUCKET: &str = "records";
const OPERATIONAL_BYTES: u64 = 16 << 30;
const AUDIT_BYTES: u64 = 4 << 30;
const BUCKET_BYTES: u64 = 8 << 30;

/// A crossing zone node's configuration: boundary `port`, operations
/// `ops`, its nats-server on `nats_port`, pulling from `upstream_urls` (by
/// peer) as its place in the chain says.
pub(crate) fn node_config(
    zone: &str,
    ports: (u16, u16, u16),
    dir: &Path,
    upstream_urls: &BTreeMap<&str, String>,
    mtls: bool,
) -> anyhow::Result<ZoneConfig> {
    let operational = category("operational", &[], true, OPERATIONAL_BYTES, MAX_AGE);
    // Settings laid over the operational category, for A/B runs of them.
    let operational_extra = std::env::var("BENCH_OPERATIONAL_EXTRA").unwrap_or_default();
    let builder = bench_node(zone, ports, dir, mtls, &[BUCKET])?
        .categories(vec![
            merge_toml(&operational, &operational_extra)?,
            category("audit", &["audit"], false, AUDIT_BYTES, MAX_AGE),
        ])
        .buckets(vec![bucket(BUCKET, BUCKET_BYTES)]);
    Ok(links(builder, zone, dir, upstream_urls).build())
}

/// A zone's place in the chain plant-a → idmz → enterprise: its routes,
/// the consumers its downstream pulls, its peers and its upstream.
fn links(
    builder: ZoneConfigBuilder,
    zone: &str,
    dir: &Path,
    upstream_urls: &BTreeMap<&str, String>,
) -> ZoneConfigBuilder {
    let spool = dir.join(format!("spool-{zone}"));
    let link = |peer: &str, consumer: &str| UpstreamConfig {
        batch_facts_max: 1000,
        batch_bytes_max: 4 << 20,
        wait: Duration::from_millis(500),
        batches_ahead_max: 4,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        spool_dir: spool.clone(),
        ..upstream(peer, &upstream_urls[peer], consumer)
    };
    match zone {
        "plant-a" => builder
            .route("enterprise", "idmz")
            .consumer(consumer("to-idmz", "operational"))
            .principal(peer("idmz", &["enterprise"], &["to-idmz"])),
        "idmz" => {
            let mut to_enterprise = consumer("to-enterprise", "operational");
            to_enterprise.kinds = vec!["hop2".to_string()];
            builder
                .consumer(to_enterprise)
                .principal(peer("plant-a", &["plant-a"], &[]))
                .principal(peer("enterprise", &["enterprise"], &["to-enterprise"]))
                .upstream(link("plant-a", "to-idmz"))
        }
        _ => builder
            .principal(peer("idmz", &["plant-a", "idmz"], &[]))
            .upstream(link("idmz", "to-enterprise")),
    }
}

/// The peer principal of a neighbouring zone, reading the bucket.
fn peer(zone: &str, origins: &[&str], consumers: &[&str]) -> bsfg::config::PrincipalConfig {
    peer_principal(zone, &node_identity(zone), origins, consumers, &[BUCKET])
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
    const VALID_DAYS: i64 = 5;
    let pki = Pki::init(certs, "bench CA", VALID_DAYS)?;
    for z in zones {
        pki.issue_node(&node_identity(z), VALID_DAYS)?;
        pki.issue(&app_identity(z), VALID_DAYS)?;
    }
    Ok(())
}
