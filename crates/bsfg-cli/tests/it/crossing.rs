//! Crossing zones: the reference topology (plant-a ⇄ idmz ⇄ enterprise,
//! plant-b ⇄ idmz), each zone with its own nats-server and node, peers
//! pulling from each other over mutual TLS as principals.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg::config::*;
use bsfg::node::RunningNode;
use bsfg_proto::bsfg::v1::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The reference site's zones (`bsfg_testkit::site::ZONES`), in the order
/// the tests start them.
pub const ZONES: [&str; 4] = ["plant-a", "idmz", "enterprise", "plant-b"];

pub use bsfg_testkit::site::neighbours;

#[allow(dead_code)] // kept for fault tests: kill/restart nodes and servers
pub struct SiteZone {
    pub name: String,
    pub nats: NatsServer,
    /// The node when it runs in-process.
    pub node: Option<RunningNode>,
    /// The `bsfg serve` child when the site runs nodes out-of-process.
    pub process: Option<tokio::process::Child>,
    pub config: ZoneConfig,
    pub app: BsfgClient,
    pub dir: PathBuf,
    /// Operations port (/metrics, /healthz) of the running node.
    pub ops_addr: std::net::SocketAddr,
    /// The environment of the `bsfg serve` child.
    pub env: Vec<(String, String)>,
    /// A zone of several nodes (`SiteOpts::ha_zone`): its other servers
    /// and its second node; the fields above are its first node's.
    pub ha: Option<crate::crossing_ha::HaPart>,
}

#[allow(dead_code)]
pub struct Site {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub zones: BTreeMap<String, SiteZone>,
    /// With `SiteOpts::proxies`: the fault proxies on each link, keyed by
    /// (receiver, peer): the receiver's replicator reaches the peer only
    /// through them (one per node of the peer zone).
    pub proxies: BTreeMap<(String, String), Vec<bsfg_testkit::faultproxy::FaultProxy>>,
}

/// How a site is started.
#[derive(Default)]
pub struct SiteOpts {
    /// A FaultProxy between each receiver's replicator and its upstream peer.
    pub proxies: bool,
    /// Nodes as `bsfg serve --config` children (kill -9 and restart on the
    /// same ports, config and stores).
    pub out_of_process: bool,
    /// Last word on each zone's configuration.
    pub tweak: Option<fn(&str, &mut ZoneConfig)>,
    /// With `out_of_process`: one zone's node environment, e.g.
    /// [`faketime`].
    pub node_env: Option<(&'static str, Vec<(String, String)>)>,
    /// With `out_of_process`: this zone (a leaf) stores its facts in a
    /// three-server JetStream cluster and runs two nodes (`crossing_ha`).
    pub ha_zone: Option<&'static str>,
}

/// The reference configuration of `zone` (shared with the demo), with
/// this test's nats-server and ports.
pub fn zone_config(
    dir: &Path,
    certs: &Path,
    zone: &str,
    ports: &BTreeMap<String, u16>,
    nats_url: String,
) -> ZoneConfig {
    let at = bsfg_testkit::site::ZonePlacement {
        dir,
        certs,
        port: ports[zone],
        nats_url: Some(nats_url),
    };
    bsfg_testkit::site::reference_zone_config(zone, &at, &|peer| {
        format!("https://127.0.0.1:{}", ports[peer])
    })
}

impl Site {
    pub async fn start() -> Site {
        Self::start_with(SiteOpts::default()).await
    }

    pub async fn start_with(opts: SiteOpts) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        bsfg_testkit::site::issue_site_pki(&certs, "site CA", 5).unwrap();
        let mut ports = BTreeMap::new();
        for z in ZONES {
            ports.insert(z.to_string(), bsfg::ports::free_port().unwrap());
        }
        assert!(
            opts.ha_zone.is_none() || opts.out_of_process,
            "HA nodes run as processes"
        );
        // Boundary ports of each zone's nodes: the zone's, and the second
        // node's for the HA zone.
        let mut node_ports: BTreeMap<String, Vec<u16>> =
            ports.iter().map(|(z, p)| (z.clone(), vec![*p])).collect();
        if let Some(ha) = opts.ha_zone {
            let second = bsfg::ports::free_port().unwrap();
            node_ports.get_mut(ha).unwrap().push(second);
        }
        let proxies = if opts.proxies {
            link_proxies(&node_ports).await
        } else {
            BTreeMap::new()
        };
        let mut zones = BTreeMap::new();
        for z in ZONES {
            let zdir = dir.path().join(z);
            std::fs::create_dir_all(&zdir).unwrap();
            let (nats, more_servers) = if opts.ha_zone == Some(z) {
                crate::crossing_ha::start_cluster(&zdir, z).await
            } else {
                (start_nats(&zdir, z).await, vec![])
            };
            let mut config = zone_config(&zdir, &certs, z, &ports, nats.url());
            point_upstreams(&mut config, &proxies, &node_ports);
            if opts.out_of_process {
                config.ops_listen = format!("127.0.0.1:{}", bsfg::ports::free_port().unwrap())
                    .parse()
                    .unwrap();
            }
            if let Some(tweak) = opts.tweak {
                tweak(z, &mut config);
            }
            let app = app_client(&certs, z, &node_ports[z]);
            let ha = (opts.ha_zone == Some(z)).then(|| {
                crate::crossing_ha::HaPart::new(&mut config, more_servers, node_ports[z][1])
            });
            let mut zone = SiteZone {
                name: z.into(),
                nats,
                node: None,
                process: None,
                ops_addr: config.ops_listen,
                config,
                app,
                dir: zdir,
                env: match &opts.node_env {
                    Some((zone, env)) if *zone == z => env.clone(),
                    _ => vec![],
                },
                ha,
            };
            if opts.out_of_process {
                zone.spawn_process().await;
                if zone.ha.is_some() {
                    zone.spawn_node(1).await;
                }
            } else {
                let node = bsfg::node::start(zone.config.clone()).await.unwrap();
                zone.ops_addr = node.ops_addr;
                zone.node = Some(node);
            }
            zones.insert(z.to_string(), zone);
        }
        Site {
            dir,
            certs,
            zones,
            proxies,
        }
    }

    /// What a failed run leaves for diagnosis: every zone's link status,
    /// and a copy of every node's and nats-server's log in a directory that
    /// outlives the site (its path is in the answer).
    pub async fn diagnose(&self, label: &str) -> String {
        let keep = std::env::temp_dir().join(format!("bsfg-diagnosis-{label}"));
        std::fs::create_dir_all(&keep).unwrap();
        let mut out = format!("logs kept in {}", keep.display());
        for (name, z) in &self.zones {
            let _ = std::fs::copy(
                z.dir.join("bsfg.log"),
                keep.join(format!("{name}-bsfg.log")),
            );
            let nats_log = keep.join(format!("{name}-nats-server.log"));
            let _ = std::fs::copy(z.nats.log_path(), nats_log);
            if let Some(ha) = &z.ha {
                ha.keep_logs(&keep, name);
            }
            let links = match z.app.status().await {
                Ok(s) => format!("{:?}", s.links),
                Err(e) => format!("status failed: {e:?}"),
            };
            out.push_str(&format!("\n{name}: {links}"));
        }
        out
    }

    /// The (first) fault proxy on the link `receiver` pulls `peer` over.
    pub fn proxy(&self, receiver: &str, peer: &str) -> &bsfg_testkit::faultproxy::FaultProxy {
        &self.proxies[&(receiver.to_string(), peer.to_string())][0]
    }

    /// Cuts the link `receiver` pulls `peer` over (to every node of `peer`).
    pub fn cut(&self, receiver: &str, peer: &str) {
        self.proxies[&(receiver.to_string(), peer.to_string())]
            .iter()
            .for_each(bsfg_testkit::faultproxy::FaultProxy::cut);
    }

    /// Restores what [`Site::cut`] cut.
    pub fn restore(&self, receiver: &str, peer: &str) {
        self.proxies[&(receiver.to_string(), peer.to_string())]
            .iter()
            .for_each(bsfg_testkit::faultproxy::FaultProxy::restore);
    }

    pub fn zone_mut(&mut self, zone: &str) -> &mut SiteZone {
        self.zones.get_mut(zone).unwrap()
    }

    pub fn app(&self, zone: &str) -> &BsfgClient {
        &self.zones[zone].app
    }

    /// Appends at `from` a fact addressed to `to`.
    pub async fn append(
        &self,
        from: &str,
        to: &str,
        message_id: &str,
        fact: Fact,
    ) -> AppendFactResponse {
        let mut e = envelope(message_id);
        e.from_zone = from.into();
        e.to_zone = to.into();
        self.app(from).append(e, fact).await.unwrap()
    }

    /// Facts of a zone's operational log, read through its `local` consumer
    /// (fetched and confirmed).
    pub async fn drain_local(&self, zone: &str) -> Vec<StoredFact> {
        let mut out = Vec::new();
        loop {
            let r = self.app(zone).fetch("local", 1000, 0, 0).await.unwrap();
            if r.facts.is_empty() {
                return out;
            }
            self.app(zone)
                .confirm("local", r.last_delivered_offset)
                .await
                .unwrap();
            out.extend(r.facts);
        }
    }

    /// Waits until `zone` holds a fact with this message id (other facts
    /// fetched on the way are returned too).
    pub async fn wait_for(
        &self,
        zone: &str,
        message_ids: &[String],
        within: Duration,
    ) -> Vec<StoredFact> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            seen.extend(self.drain_local(zone).await);
            if message_ids
                .iter()
                .all(|m| seen.iter().any(|f| &f.envelope.message_id == m))
            {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{zone} did not receive {message_ids:?} within {within:?}; got {:?}",
                seen.iter()
                    .map(|f| &f.envelope.message_id)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The zone's application client, given every node of the zone (and, for
/// several, a call deadline that passes over a frozen node quickly).
fn app_client(certs: &Path, zone: &str, node_ports: &[u16]) -> BsfgClient {
    let tls = bsfg::tls::client::client_config(
        &certs.join("ca.pem"),
        &certs.join(format!("app.{zone}.pem")),
        &certs.join(format!("app.{zone}.key")),
    )
    .unwrap();
    let urls: Vec<String> = node_ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    let app = BsfgClient::connect_tls(&urls.join(","), tls).unwrap();
    match node_ports.len() {
        1 => app,
        _ => app.with_call_timeout(crate::crossing_ha::CALL_TIMEOUT),
    }
}

/// Points each of the zone's upstreams at its peer's nodes, or at the
/// proxies in front of them.
fn point_upstreams(
    config: &mut ZoneConfig,
    proxies: &BTreeMap<(String, String), Vec<bsfg_testkit::faultproxy::FaultProxy>>,
    node_ports: &BTreeMap<String, Vec<u16>>,
) {
    for u in &mut config.upstreams {
        let via: Vec<u16> = match proxies.get(&(config.zone.clone(), u.peer.clone())) {
            Some(p) => p.iter().map(|p| p.addr.port()).collect(),
            None => node_ports[&u.peer].clone(),
        };
        let urls = via.iter().map(|p| format!("https://127.0.0.1:{p}"));
        if via.len() == 1 {
            u.url = urls.collect();
        } else {
            (u.url, u.urls) = (String::new(), urls.collect());
        }
    }
}

/// A fault proxy per (receiver, peer) link and node of the peer zone, in
/// front of the boundary ports `node_ports` of each zone's nodes.
async fn link_proxies(
    node_ports: &BTreeMap<String, Vec<u16>>,
) -> BTreeMap<(String, String), Vec<bsfg_testkit::faultproxy::FaultProxy>> {
    let mut proxies = BTreeMap::new();
    for z in ZONES {
        for n in neighbours(z) {
            let mut to_nodes = Vec::new();
            for port in &node_ports[n] {
                let target = format!("127.0.0.1:{port}").parse().unwrap();
                let proxy = bsfg_testkit::faultproxy::FaultProxy::start(target);
                to_nodes.push(proxy.await.unwrap());
            }
            proxies.insert((z.to_string(), n.to_string()), to_nodes);
        }
    }
    proxies
}

#[allow(dead_code)]
impl SiteZone {
    fn log_path(&self) -> PathBuf {
        self.dir.join("bsfg.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `bsfg serve --config` on the zone's fixed ports and waits
    /// until its operations and boundary ports answer.
    pub async fn spawn_process(&mut self) {
        assert!(
            self.process.is_none() && self.node.is_none(),
            "already running"
        );
        let mut env = self.env.clone();
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        env.push(("RUST_LOG".into(), rust_log));
        let child = spawn_serve(&self.config, &self.dir, &self.log_path(), &env).await;
        self.process = Some(child);
        self.ops_addr = self.config.ops_listen;
    }

    /// SIGKILL of the `bsfg serve` process, waiting for it to be gone.
    /// Sends `signal` (e.g. "STOP", "CONT") to the zone's `bsfg serve`.
    pub fn signal_node(&self, signal: &str) {
        let pid = self
            .process
            .as_ref()
            .and_then(|c| c.id())
            .expect("an out-of-process node");
        bsfg_testkit::process::signal(pid, signal).unwrap();
    }

    pub async fn kill9_node(&mut self) {
        let mut child = self.process.take().expect("an out-of-process node");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    /// The operations port's /metrics text.
    pub async fn metrics_text(&self) -> String {
        metrics_text(self.ops_addr).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_both_ways_with_routing_isolation_and_provenance() {
    let site = Site::start().await;
    let up = site
        .append(
            "plant-a",
            "enterprise",
            "pa-1",
            fact("batch:PlantA/B1", "step_completed", r#"{"step":"mix"}"#),
        )
        .await;
    let down = site
        .append(
            "enterprise",
            "plant-a",
            "en-1",
            fact("recipe:R7", "recipe_released", r#"{"version":3}"#),
        )
        .await;
    let to_b = site
        .append(
            "enterprise",
            "plant-b",
            "en-b",
            fact("recipe:R8", "recipe_released", r#"{"version":1}"#),
        )
        .await;

    let at_enterprise = site
        .wait_for("enterprise", &["pa-1".into()], Duration::from_secs(20))
        .await;
    let f = at_enterprise
        .iter()
        .find(|f| f.envelope.message_id == "pa-1")
        .unwrap();
    assert_eq!(f.envelope.from_zone, "plant-a");
    assert_eq!(f.envelope.to_zone, "enterprise");
    assert_eq!(f.fact.object_json, r#"{"step":"mix"}"#);
    let p = f.provenance.as_option().expect("provenance");
    assert_eq!(p.origin_zone, "plant-a");
    assert_eq!(p.origin_offset, up.offset);
    let hop_zones: Vec<&str> = p.hops.iter().map(|h| h.zone.as_str()).collect();
    assert_eq!(
        hop_zones,
        vec!["plant-a", "idmz", "enterprise"],
        "hops: origin, relay, here"
    );
    assert_eq!(p.hops[0].offset, up.offset);
    assert_eq!(p.hops[2].offset, f.offset);
    assert!(
        p.hops
            .windows(2)
            .all(|w| w[0].appended_at_unix_ms <= w[1].appended_at_unix_ms)
    );

    let at_plant_a = site
        .wait_for("plant-a", &["en-1".into()], Duration::from_secs(20))
        .await;
    let g = at_plant_a
        .iter()
        .find(|f| f.envelope.message_id == "en-1")
        .unwrap();
    assert_eq!(g.provenance.origin_zone, "enterprise");
    assert_eq!(g.provenance.origin_offset, down.offset);
    let at_plant_b = site
        .wait_for("plant-b", &["en-b".into()], Duration::from_secs(20))
        .await;
    assert!(
        at_plant_b
            .iter()
            .any(|f| f.provenance.origin_offset == to_b.offset)
    );

    // Routing isolation: plant-b never sees plant-a's fact to enterprise nor
    // enterprise's fact to plant-a; plant-a never sees the one for plant-b.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_all: Vec<String> = at_plant_b
        .into_iter()
        .chain(site.drain_local("plant-b").await)
        .map(|f| f.envelope.message_id.clone())
        .collect();
    assert!(
        !b_all.contains(&"pa-1".to_string()) && !b_all.contains(&"en-1".to_string()),
        "plant-b saw {b_all:?}"
    );
    let a_all: Vec<String> = at_plant_a
        .into_iter()
        .chain(site.drain_local("plant-a").await)
        .map(|f| f.envelope.message_id.clone())
        .collect();
    assert!(
        !a_all.contains(&"en-b".to_string()),
        "plant-a saw {a_all:?}"
    );
    // Exactly once at each destination.
    assert_eq!(a_all.iter().filter(|m| *m == "en-1").count(), 1);

    // Status: the enterprise link to idmz is up and confirming.
    let status = site.app("enterprise").status().await.unwrap();
    let link = status.links.iter().find(|l| l.peer == "idmz").unwrap();
    assert_eq!(link.mode, "normal");
    assert!(link.facts_replicated >= 1);
    assert!(
        link.last_confirm_age_seconds >= 0.0 && link.last_confirm_age_seconds < 10.0,
        "{link:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_cross_with_their_facts() {
    let site = Site::start().await;
    let bytes = pseudo_random_bytes(3 * 1024 * 1024 + 17, 7);
    let digest = sha256(&bytes);
    // Declared on upload only (the fact's reference leaves it empty): it
    // must still reach every zone with the object.
    let header = PutObjectHeader {
        bucket: BUCKET.into(),
        key: "batch/B9/record.bin".into(),
        media_type: "application/pdf".into(),
        expected_digest: digest.clone(),
        ..Default::default()
    };
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    site.app("plant-a")
        .put_object(
            header,
            futures::stream::iter(chunks),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let mut f = fact("batch:PlantA/B9", "has_artifact", r#"{"kind":"record"}"#);
    f.attachments.push(AttachmentRef {
        bucket: BUCKET.into(),
        key: "batch/B9/record.bin".into(),
        digest: digest.clone(),
        size_bytes: bytes.len() as u64,
        ..Default::default()
    });
    site.append("plant-a", "enterprise", "pa-art", f).await;
    site.wait_for("enterprise", &["pa-art".into()], Duration::from_secs(30))
        .await;
    let (info, got) = get(site.app("enterprise"), BUCKET, "batch/B9/record.bin", 0)
        .await
        .unwrap();
    assert_eq!(info.digest, digest);
    assert_eq!(
        info.media_type, "application/pdf",
        "the media type declared at the origin"
    );
    assert!(got == bytes, "artifact byte-identical at enterprise");
    let (relay_info, relay) = get(site.app("idmz"), BUCKET, "batch/B9/record.bin", 0)
        .await
        .unwrap();
    assert!(relay == bytes, "and at the relay");
    assert_eq!(relay_info.media_type, "application/pdf");
}

/// The README's main job, end to end (four zones with embedded
/// nats-servers, mTLS, a cut and a restore). It fails on any missing,
/// duplicated or misrouted fact, or a damaged artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_site_demo_completes() {
    let dir = tempfile::tempdir().unwrap();
    bsfg_cli::demo::run_site(dir.path().to_path_buf())
        .await
        .expect("the site demo completes with every check passing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_that_could_never_cross_is_refused_at_append() {
    // plant-a keeps a `documents` category that no link carries.
    fn documents(zone: &str, config: &mut ZoneConfig) {
        if zone == "plant-a" {
            config
                .categories
                .push(category("documents", &["document"], false));
        }
    }
    let site = Site::start_with(SiteOpts {
        tweak: Some(documents),
        ..Default::default()
    })
    .await;
    let app = site.app("plant-a");
    let to = |zone: &str, id: &str| {
        let mut e = envelope(&mid(id));
        e.from_zone = "plant-a".into();
        e.to_zone = zone.into();
        e
    };
    let typo = app.append(to("enterprize", "typo"), batch_fact(1)).await;
    assert_rejected(typo, "invalid_argument", "no_route_to_zone");
    let document = fact("document:SOP-7", "revised", r#"{"rev":2}"#);
    let not_carried = app
        .append(to("enterprise", "document"), document.clone())
        .await;
    assert_rejected(not_carried, "failed_precondition", "category_not_routed");
    // The same kind stays in its own zone; routed zones two hops away are fine.
    app.append(to("plant-a", "document-local"), document)
        .await
        .unwrap();
    app.append(to("plant-b", "two-hops"), batch_fact(2))
        .await
        .unwrap();
    app.append(to("enterprise", "two-hops"), batch_fact(3))
        .await
        .unwrap();
}
