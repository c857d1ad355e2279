//! The bench's node configurations, built as typed values
//! (`bsfg_testkit::zone_config`) and written as TOML for `bsfg serve`: what
//! every bench node shares ([`bench_node`]: its ports, the bench's
//! nats-server, its key index in the run directory, its TLS) and the
//! single-zone node ([`node_config`]).
//!
//! Two environment variables lay TOML lines over a section, for A/B runs
//! of settings: `BENCH_COMMIT_EXTRA` over `[commit]` (e.g.
//! `batches_in_flight_max = 4`), `BENCH_OPERATIONAL_EXTRA` over the
//! crossing zones' `operational` category (e.g. `duplicate_window = "30s"`).

use bsfg::config::{CommitConfig, NatsConfig, ZoneConfig};
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site::{app_identity, node_identity};
use bsfg_testkit::zone_config::{
    ZoneConfigBuilder, app_principal, category, consumer, merge_toml, mtls,
};
use std::path::Path;
use std::time::Duration;

/// How long the bench's nodes keep facts (longer than any run).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a bench node waits for its nats-server's answer.
const NATS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a bench node runs retention.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// The single-zone node's categories' capacity (8 GiB each).
const SINGLE_ZONE_CATEGORY_BYTES: u64 = 8 << 30;

/// A bench node of zone `zone`: boundary `port`, operations `ops`, the
/// bench's nats-server on `nats_port` (the node's embedded-server settings
/// are unused), its key index file in the run directory `dir` (the default
/// would be relative to the working directory) with `BENCH_COMMIT_EXTRA`
/// laid over `[commit]`, and TLS as [`with_tls`] sets it.
pub(crate) fn bench_node(
    zone: &str,
    (port, ops, nats_port): (u16, u16, u16),
    dir: &Path,
    mtls: bool,
    buckets: &[&str],
) -> anyhow::Result<ZoneConfigBuilder> {
    let commit = CommitConfig {
        key_index_path: Some(dir.join(format!("key-index.{zone}.kix"))),
        ..CommitConfig::default()
    };
    let commit_extra = std::env::var("BENCH_COMMIT_EXTRA").unwrap_or_default();
    let commit = merge_toml(&commit, &commit_extra)?;
    let builder = ZoneConfigBuilder::new(zone)
        .listen(port)
        .ops_listen(ops)
        .retention_interval(RETENTION_INTERVAL)
        .nats(NatsConfig {
            url: Some(format!("nats://127.0.0.1:{nats_port}")),
            request_timeout: NATS_REQUEST_TIMEOUT,
            ..NatsConfig::default()
        })
        .with(|c| c.commit = commit);
    Ok(with_tls(builder, dir, zone, mtls, buckets))
}

/// A bench node's TLS: plaintext-dev (as the echo baseline has no TLS
/// either), or mTLS with the certificates of `issue_certs` in `<dir>/certs`
/// and the principal `app` (identity `app.<zone>`, reading and writing
/// `buckets`).
fn with_tls(
    builder: ZoneConfigBuilder,
    dir: &Path,
    zone: &str,
    mtls_on: bool,
    buckets: &[&str],
) -> ZoneConfigBuilder {
    if !mtls_on {
        return builder;
    }
    let pki = Pki::open(&dir.join("certs"));
    builder
        .tls(mtls(&pki, &node_identity(zone)))
        .principal(app_principal(
            "app",
            &app_identity(zone),
            &[],
            buckets,
            buckets,
        ))
}

/// `config` with the bench's nats-server `sync_interval` declared in its
/// `[nats]`: the node starts no server of its own, but takes its
/// atomic-batch default (`[commit] atomic_batch_facts_min`) from it.
pub(crate) fn with_sync(mut config: ZoneConfig, sync_interval: &str) -> ZoneConfig {
    config.nats.sync_interval = sync_interval.to_string();
    config
}

/// The single-zone node's configuration (zone `bench`, `drain_consumers`
/// consumers `drain<i>` of the category `drain`).
pub(crate) fn node_config(
    ports: (u16, u16, u16),
    drain_consumers: usize,
    dir: &Path,
    mtls: bool,
) -> anyhow::Result<ZoneConfig> {
    let bytes = SINGLE_ZONE_CATEGORY_BYTES;
    let mut builder = bench_node("bench", ports, dir, mtls, &[])?.categories(vec![
        category("operational", &[], true, bytes, MAX_AGE),
        category("drain", &["drain"], false, bytes, MAX_AGE),
    ]);
    for i in 1..=drain_consumers {
        builder = builder.consumer(consumer(&format!("drain{i}"), "drain"));
    }
    Ok(builder.build())
}
