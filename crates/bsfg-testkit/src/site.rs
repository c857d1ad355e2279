//! The reference site: `plant-a` ⇄ `idmz` ⇄ `enterprise`, `plant-b` ⇄ `idmz`
//! (REFERENCE §5, §8). Each zone has its own JetStream domain and node; every
//! neighbour pair pulls from each other over mutual TLS as peer principals;
//! the plants route everything through `idmz`, which relays.
//!
//! Used by the site demo (`bsfg demo`) and available to tests and benchmarks
//! that need the same topology.

use crate::pki::Pki;
use bsfg::config::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The zones of the reference site.
pub const ZONES: [&str; 4] = ["enterprise", "idmz", "plant-a", "plant-b"];

/// The object bucket every zone of the reference site declares.
pub const BUCKET: &str = "records";

/// Who `zone` pulls from (and so serves), in the reference topology.
pub fn neighbours(zone: &str) -> Vec<&'static str> {
    match zone {
        "idmz" => vec!["plant-a", "enterprise", "plant-b"],
        _ => vec!["idmz"],
    }
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
    CategoryConfig {
        name: name.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        default,
        capacity_bytes: 64 * 1024 * 1024,
        fill_threshold_percent: 80,
        retain_fill_percent: 60,
        max_age: Duration::from_secs(24 * 3600),
        duplicate_window: Duration::from_secs(120),
    }
}

/// A consumer starting at the earliest fact, redelivering after 30 s.
pub fn consumer(name: &str, category: &str) -> ConsumerConfig {
    ConsumerConfig {
        name: name.into(),
        category: category.into(),
        kinds: vec![],
        start: StartPosition::Earliest,
        redeliver_after: Duration::from_secs(30),
        unconfirmed_max: 10_000,
    }
}

fn peer(zone: &str, origins: Vec<String>) -> PrincipalConfig {
    PrincipalConfig {
        name: zone.to_string(),
        kind: PrincipalKind::Peer,
        identities: vec![node_identity(zone)],
        zone: Some(zone.to_string()),
        origins,
        consumers: vec![format!("to-{zone}")],
        buckets_read: vec![BUCKET.into()],
        buckets_write: vec![],
        operator: false,
        export: Default::default(),
        import: Default::default(),
    }
}

/// Origins `neighbour` may relay into `zone`.
fn origins_via(zone: &str, neighbour: &str) -> Vec<String> {
    if zone == "idmz" {
        vec![neighbour.to_string()]
    } else {
        // A leaf's only neighbour is idmz, which relays every other zone.
        ZONES
            .iter()
            .filter(|z| **z != zone)
            .map(|z| z.to_string())
            .collect()
    }
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

/// The configuration of `zone` in the reference site. `peer_url(peer)` is
/// the boundary URL this zone pulls `peer` from (the peer's node, or a proxy
/// in front of it).
///
/// Principals: `app` (certificate `app.<zone>`, consumer `local`, bucket
/// `records`; also the zone's operator, for `bsfg status` and replays) and one peer principal per neighbour (certificate
/// `<peer>-bsfg`, consumer `to-<peer>`, the origins routed through it).
/// Routes: the plants and enterprise reach every other zone through `idmz`.
pub fn reference_zone_config(
    zone: &str,
    at: &ZonePlacement<'_>,
    peer_url: &dyn Fn(&str) -> String,
) -> ZoneConfig {
    let mut principals = vec![PrincipalConfig {
        name: "app".into(),
        kind: PrincipalKind::App,
        identities: vec![app_identity(zone)],
        zone: None,
        origins: vec![],
        consumers: vec!["local".into()],
        buckets_read: vec![BUCKET.into()],
        buckets_write: vec![BUCKET.into()],
        operator: true,
        export: Default::default(),
        import: Default::default(),
    }];
    let mut consumers = vec![consumer("local", "operational")];
    let mut upstreams = vec![];
    for n in neighbours(zone) {
        principals.push(peer(n, origins_via(zone, n)));
        consumers.push(consumer(&format!("to-{n}"), "operational"));
        upstreams.push(UpstreamConfig {
            peer: n.to_string(),
            url: peer_url(n),
            consumer: format!("to-{zone}"),
            batch_facts_max: 500,
            batch_bytes_max: 4 * 1024 * 1024,
            wait: Duration::from_millis(500),
            linger: Duration::from_millis(2),
            batches_ahead_max: 2,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            spool_dir: at.dir.join("spool"),
        });
    }
    let routes = if zone == "idmz" {
        BTreeMap::new()
    } else {
        ZONES
            .iter()
            .filter(|z| **z != zone && **z != "idmz")
            .map(|z| (z.to_string(), "idmz".to_string()))
            .collect()
    };
    let node = node_identity(zone);
    ZoneConfig {
        zone: zone.into(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], at.port)),
        ops_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: TlsConfig::mtls(
            at.certs.join("ca.pem"),
            at.certs.join(format!("{node}.pem")),
            at.certs.join(format!("{node}.key")),
        ),
        principals,
        nats: NatsConfig {
            url: at.nats_url.clone(),
            store_dir: at.dir.join("jetstream"),
            port: 0,
            server_bin: None,
            request_timeout: Duration::from_secs(5),
            sync_interval: "always".into(),
            ..Default::default()
        },
        limits: Default::default(),
        fetch: Default::default(),
        boundary: Default::default(),
        commit: Default::default(),
        categories: vec![
            category("operational", &[], true),
            category("audit", &["audit"], false),
        ],
        consumers,
        buckets: vec![BucketConfig {
            name: BUCKET.into(),
            capacity_bytes: 1 << 30,
        }],
        routes,
        upstreams,
        retention_interval: Duration::from_secs(5),
        clock_skew_max: bsfg::config::default_clock_skew_max(),
        random_seed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(c.upstreams.len(), neighbours(z).len());
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
