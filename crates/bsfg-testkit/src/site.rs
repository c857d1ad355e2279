//! The reference site: `plant-a` ⇄ `idmz` ⇄ `enterprise`, `plant-b` ⇄ `idmz`
//! (REFERENCE §5, §8), as `examples/site/site.toml` describes it. Each zone has its own JetStream domain and node; every
//! neighbour pair pulls from each other over mutual TLS as peer principals;
//! the plants route everything through `idmz`, which relays. Every zone
//! but enterprise sends its status facts to enterprise (`[status]`, the
//! fleet view), in a `status` category of their own carried over a second
//! link per neighbour (`to-<zone>-status`).
//!
//! Used by the site demo (`bsfg demo`) and available to tests and benchmarks
//! that need the same topology.

use crate::pki::Pki;
use crate::topology::Topology;
use crate::zone_config::{
    self, ZoneConfigBuilder, app_principal, bucket, mtls, peer_principal, upstream,
};
use bsfg::config::{
    CategoryConfig, ConsumerConfig, NatsConfig, PrincipalConfig, StartPosition, UpstreamConfig,
    ZoneConfig,
};
use std::path::Path;
use std::time::Duration;

/// The zones of the reference site.
pub const ZONES: [&str; 4] = ["enterprise", "idmz", "plant-a", "plant-b"];

/// The object bucket every zone of the reference site declares.
pub const BUCKET: &str = "records";

/// Who `zone` pulls from (and so serves), in the reference site.
pub fn neighbours(zone: &str) -> Vec<&'static str> {
    reference().neighbours(zone)
}

/// Certificate identity of a zone's node.
pub fn node_identity(zone: &str) -> String {
    format!("{zone}-bsfg")
}

/// Certificate identity of a zone's local application principal `app`.
pub fn app_identity(zone: &str) -> String {
    format!("app.{zone}")
}

/// Creates a development PKI for the site in `certs`: a CA, each zone's node
/// certificate (`<zone>-bsfg`, SANs localhost and 127.0.0.1, server and
/// client use) and each zone's application certificate (`app.<zone>`), as
/// `bsfg certs init` / `bsfg certs issue` would.
pub fn issue_site_pki(certs: &Path, ca_name: &str, valid_days: i64) -> anyhow::Result<()> {
    let pki = Pki::open_or_init(certs, ca_name, valid_days)?;
    for z in ZONES {
        pki.issue_node(&node_identity(z), valid_days)?;
        pki.issue(&app_identity(z), valid_days)?;
    }
    Ok(())
}

/// A category with the site's development sizes (64 MiB, one day).
pub fn category(name: &str, kinds: &[&str], default: bool) -> CategoryConfig {
    const CAPACITY_BYTES: u64 = 64 << 20;
    const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    zone_config::category(name, kinds, default, CAPACITY_BYTES, MAX_AGE)
}

/// A consumer starting at the earliest fact, redelivering after 30 s, with
/// at most 10,000 facts unconfirmed.
pub fn consumer(name: &str, category: &str) -> ConsumerConfig {
    const UNCONFIRMED_MAX: u32 = 10_000;
    let mut consumer = zone_config::consumer(name, category);
    consumer.start = StartPosition::Earliest;
    consumer.redeliver_after = Duration::from_secs(30);
    consumer.unconfirmed_max = UNCONFIRMED_MAX;
    consumer
}

/// The peer principal of neighbour `zone`: it pulls `to-<zone>` and reads
/// the bucket.
fn peer(zone: &str, origins: &[&str]) -> PrincipalConfig {
    let consumer = format!("to-{zone}");
    let status = format!("to-{zone}-status");
    peer_principal(
        zone,
        &node_identity(zone),
        origins,
        &[&consumer, &status],
        &[BUCKET],
    )
}

/// The zone every other zone of the reference site sends its status to.
pub const FLEET_ZONE: &str = "enterprise";

/// The `status` category: status facts only, small and short-lived, so
/// they never compete with production facts for space.
fn status_category() -> CategoryConfig {
    const CAPACITY_BYTES: u64 = 16 << 20;
    const MAX_AGE: Duration = Duration::from_secs(3600);
    zone_config::category("status", &["status"], false, CAPACITY_BYTES, MAX_AGE)
}

/// Where a zone's node is, and where its data and certificates live.
pub struct ZonePlacement<'a> {
    /// The zone's own directory (spool; the embedded store under `jetstream/`).
    pub dir: &'a Path,
    /// The site PKI directory (see [`issue_site_pki`]).
    pub certs: &'a Path,
    /// Boundary port of this zone's node.
    pub port: u16,
    /// `None`: the node starts and supervises its own nats-server (domain =
    /// zone name, store in `dir/jetstream`). `Some`: an external server.
    pub nats_url: Option<String>,
}

/// The configuration of `zone` in the reference site
/// (`examples/site/site.toml`). `peer_url(peer)` is
/// the boundary URL this zone pulls `peer` from (the peer's node, or a proxy
/// in front of it).
///
/// Principals: `app` (certificate `app.<zone>`, consumer `local`, bucket
/// `records`; also the zone's operator, for `bsfg status` and replays) and
/// one peer principal per neighbour (certificate `<peer>-bsfg`, consumer
/// `to-<peer>`, the origins routed through it). Routes: to every zone that
/// is not a neighbour, over the shortest path of links (the plants and
/// enterprise reach every other zone through `idmz`).
pub fn reference_zone_config(
    zone: &str,
    at: &ZonePlacement<'_>,
    peer_url: &dyn Fn(&str) -> String,
) -> ZoneConfig {
    zone_config(reference(), zone, at, peer_url)
}

/// The reference site's description, `examples/site/site.toml`.
pub fn reference() -> &'static Topology {
    static REFERENCE: std::sync::LazyLock<Topology> = std::sync::LazyLock::new(|| {
        Topology::parse(include_str!("../../../examples/site/site.toml"))
            .expect("examples/site/site.toml is a valid site")
    });
    &REFERENCE
}

/// The configuration of `zone` in the site `topology`, placed `at` (see
/// [`reference_zone_config`] for what each zone declares).
pub fn zone_config(
    topology: &Topology,
    zone: &str,
    at: &ZonePlacement<'_>,
    peer_url: &dyn Fn(&str) -> String,
) -> ZoneConfig {
    let mut app = app_principal("app", &app_identity(zone), &["local"], &[BUCKET], &[BUCKET]);
    app.operator = true;
    let mut builder = ZoneConfigBuilder::new(zone)
        .listen(at.port)
        .tls(mtls(&Pki::open(at.certs), &node_identity(zone)))
        .principal(app)
        .nats(NatsConfig {
            url: at.nats_url.clone(),
            store_dir: at.dir.join("jetstream"),
            ..NatsConfig::default()
        })
        .categories(vec![
            category("operational", &[], true),
            category("audit", &["audit"], false),
            status_category(),
        ])
        .consumer(consumer("local", "operational"))
        .buckets(vec![bucket(BUCKET, 1 << 30)])
        .retention_interval(Duration::from_secs(5));
    let neighbours = topology.neighbours(zone);
    for n in &neighbours {
        builder = builder
            .principal(peer(n, &topology.origins_via(zone, n)))
            .consumer(consumer(&format!("to-{n}"), "operational"))
            .consumer(consumer(&format!("to-{n}-status"), "status"))
            .upstream(link(zone, n, peer_url(n), at.dir, ""))
            .upstream(link(zone, n, peer_url(n), at.dir, "-status"));
    }
    if zone != FLEET_ZONE {
        builder = builder.with(|c| c.status.to_zone = Some(FLEET_ZONE.to_string()));
    }
    for other in &topology.zones {
        let z = other.name.as_str();
        if z != zone && !neighbours.contains(&z) {
            let hop = topology
                .next_hop(zone, z)
                .expect("a checked site is connected");
            builder = builder.route(z, hop);
        }
    }
    builder.build()
}

/// How `zone` pulls `neighbour` (at `url`): its consumer
/// `to-<zone><suffix>` (`""` for production facts, `"-status"` for status
/// facts), with the site's batch and back-off settings and the spool in
/// `dir/spool`.
fn link(zone: &str, neighbour: &str, url: String, dir: &Path, suffix: &str) -> UpstreamConfig {
    UpstreamConfig {
        batch_facts_max: 500,
        batch_bytes_max: 4 * 1024 * 1024,
        wait: Duration::from_millis(500),
        linger: Duration::from_millis(2),
        batches_ahead_max: 2,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        spool_dir: dir.join("spool"),
        ..upstream(neighbour, &url, &format!("to-{zone}{suffix}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zones_are_the_reference_descriptions() {
        let names: Vec<&str> = reference().zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ZONES);
    }

    #[test]
    fn every_zone_config_passes_its_checks() {
        let dir = std::path::PathBuf::from("/tmp/site");
        for z in ZONES {
            let at = ZonePlacement {
                dir: &dir,
                certs: &dir,
                port: 7443,
                nats_url: None,
            };
            let c = reference_zone_config(z, &at, &|p| format!("https://127.0.0.1:1/{p}"));
            c.check().unwrap();
            // One link per neighbour for production facts, one for status.
            assert_eq!(c.upstreams.len(), 2 * neighbours(z).len());
            let status_to = (z != FLEET_ZONE).then(|| FLEET_ZONE.to_string());
            assert_eq!(c.status.to_zone, status_to, "{z}");
        }
        let at = ZonePlacement {
            dir: &dir,
            certs: &dir,
            port: 7443,
            nats_url: None,
        };
        let a = reference_zone_config("plant-a", &at, &|_| String::new());
        assert_eq!(a.next_hop("enterprise"), Some("idmz"));
        assert_eq!(a.next_hop("plant-b"), Some("idmz"));
        let idmz = reference_zone_config("idmz", &at, &|_| String::new());
        assert_eq!(idmz.next_hop("plant-a"), Some("plant-a"));
    }
}
