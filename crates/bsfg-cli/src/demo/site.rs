//! The site demo: four zones, two hops, a partition and its recovery.
//! [`run_site`] runs the phases in order; this file also starts the zones
//! and holds what every phase reads them through.

use super::{checks, partition, status, step, traffic};
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use bsfg_testkit::faultproxy::FaultProxy;
use bsfg_testkit::site::{self, ZONES};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the plants keep appending while idmz ⇄ enterprise is cut.
pub(super) const PARTITION: Duration = Duration::from_secs(5);
/// Batch size of enterprise's pull from idmz in the demo.
const RECONCILE_BATCH: u32 = 100;

struct DemoZone {
    /// Held so the node keeps running; everything is read through `app`,
    /// as an operator would.
    _node: bsfg::node::RunningNode,
    app: BsfgClient,
}

pub(super) struct DemoSite {
    zones: BTreeMap<&'static str, DemoZone>,
    started: Instant,
}

impl DemoSite {
    pub(super) fn app(&self, zone: &str) -> &BsfgClient {
        &self.zones[zone].app
    }

    /// Everything new in a zone's log, through its `local` consumer.
    pub(super) async fn drain(&self, zone: &str) -> anyhow::Result<Vec<StoredFact>> {
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
    pub(super) async fn wait_for(
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
    pub(super) async fn link(&self, zone: &str, peer: &str) -> anyhow::Result<LinkStatus> {
        let s = self.app(zone).status().await?;
        s.links
            .into_iter()
            .find(|l| l.peer == peer)
            .ok_or_else(|| anyhow::anyhow!("{zone} has no link to {peer}"))
    }

    /// Facts in idmz's log its `to-enterprise` consumer has not had
    /// confirmed yet: what is queued at idmz for enterprise, as idmz's own
    /// `bsfg status` shows it (enterprise cannot see it while cut off).
    pub(super) async fn queued_at_idmz_for_enterprise(&self) -> anyhow::Result<u64> {
        let s = self.app("idmz").status().await?;
        let consumer = s
            .consumers
            .into_iter()
            .find(|c| c.name == "to-enterprise")
            .ok_or_else(|| anyhow::anyhow!("idmz has no consumer to-enterprise"))?;
        Ok(consumer.pending)
    }

    pub(super) fn t(&self) -> String {
        format!("t={:>5.1}s", self.started.elapsed().as_secs_f64())
    }
}

/// The two fault proxies on the idmz ⇄ enterprise link: enterprise pulls
/// idmz through one, idmz pulls enterprise through the other.
pub(super) struct Proxies {
    enterprise_to_idmz: FaultProxy,
    idmz_to_enterprise: FaultProxy,
}

impl Proxies {
    /// Both proxies drop every connection and refuse new ones.
    pub(super) fn cut(&self) {
        self.enterprise_to_idmz.cut();
        self.idmz_to_enterprise.cut();
    }

    pub(super) fn restore(&self) {
        self.enterprise_to_idmz.restore();
        self.idmz_to_enterprise.restore();
    }
}

pub async fn run_site(dir: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let dir = std::path::absolute(&dir)?;
    intro(&dir);

    step("1. Development PKI (what `bsfg certs init` / `bsfg certs issue` do)");
    let certs = dir.join("certs");
    issue_pki(&certs)?;

    step("2. Four zones, each node starting and supervising its own nats-server");
    let (site, proxies) = start_zones(&dir, &certs, started).await?;
    wait_until_links_up(&site).await?;

    step("3. plant-a → enterprise: batch facts and the batch record (appended at plant-a only)");
    let run_id = bsfg::store::now_unix_ms();
    let sent = traffic::send_up(&site, &dir, run_id).await?;

    step("4. enterprise → plant-a: a recipe release (appended at enterprise only)");
    let recipe_id = traffic::release_recipe(&site, run_id).await?;

    step(
        "5. Arrivals two hops away, with provenance (zone#offset per hop, time since the previous hop)",
    );
    let mut at_enterprise = traffic::arrivals(&site, &sent, &recipe_id).await?;

    step(&format!(
        "6. Cut idmz ⇄ enterprise; plant-a and plant-b keep appending for {} s",
        PARTITION.as_secs()
    ));
    let lot_ids = partition::cut_and_append(&site, &proxies, run_id).await?;
    let appended: usize = lot_ids.values().map(Vec::len).sum();

    step("7. Restore the link: reconciliation, then normal, backlog drained");
    partition::restore_and_drain(&site, &proxies).await?;

    step(
        "8. Check: every fact appended for enterprise arrived there exactly once, in per-origin order",
    );
    at_enterprise.extend(site.drain("enterprise").await?);
    checks::exactly_once(&at_enterprise, &sent.up_ids, &lot_ids)?;

    step("9. End-to-end status of all four zones (bsfg status on each node)");
    status::print_all_zones(&site).await?;

    println!(
        "\nsite demo complete in {:.1} s: facts and an artifact crossed two hops both ways over mutual TLS; during a {} s cut of idmz ⇄ enterprise the plants appended {appended} facts without waiting; after the restore the backlog drained to zero and every fact reached enterprise exactly once.",
        started.elapsed().as_secs_f64(),
        PARTITION.as_secs()
    );
    drop(site);
    drop(proxies);
    // Give the supervisors a moment to reap their nats-servers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

fn intro(dir: &Path) {
    println!("BSFG reference site on this machine");
    println!(
        "  plant-a ⇄ idmz ⇄ enterprise, plant-b ⇄ idmz. Each zone: its own nats-server (JetStream domain = zone name)"
    );
    println!(
        "  and its own bsfg node. Nothing is shared: every receiver PULLS from its neighbour's node over mutual TLS."
    );
    println!("  Data: {}", dir.display());
}

fn issue_pki(certs: &Path) -> anyhow::Result<()> {
    site::issue_site_pki(certs, "BSFG demo site CA", 30)?;
    println!(
        "  CA, node certificates {} and application certificates {}",
        ZONES.map(site::node_identity).join(", "),
        ZONES.map(site::app_identity).join(", ")
    );
    Ok(())
}

/// Starts the fault proxies, then the four zones, printing a row per zone.
async fn start_zones(
    dir: &Path,
    certs: &Path,
    started: Instant,
) -> anyhow::Result<(DemoSite, Proxies)> {
    let mut ports = BTreeMap::new();
    for z in ZONES {
        ports.insert(z, bsfg::ports::free_port()?);
    }
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // The idmz ⇄ enterprise link, both ways, runs through fault proxies:
    // enterprise pulls idmz through one, idmz pulls enterprise through the other.
    let proxies = Proxies {
        enterprise_to_idmz: FaultProxy::start(loopback(ports["idmz"])).await?,
        idmz_to_enterprise: FaultProxy::start(loopback(ports["enterprise"])).await?,
    };
    let mut zones = BTreeMap::new();
    println!(
        "  {:<11} {:<24} {:<17} store",
        "zone", "boundary (mTLS 1.3)", "JetStream domain"
    );
    for z in ZONES {
        zones.insert(z, start_zone(z, dir, certs, &ports, &proxies).await?);
    }
    let site = DemoSite { zones, started };
    println!(
        "  fault proxies on the idmz ⇄ enterprise link: enterprise pulls idmz via {}, idmz pulls enterprise via {}",
        proxies.enterprise_to_idmz.addr, proxies.idmz_to_enterprise.addr
    );
    println!(
        "  enterprise pulls idmz in batches of {RECONCILE_BATCH} facts (so the replay after the cut is visible); the other links in batches of 500"
    );
    Ok((site, proxies))
}

/// Starts zone `z` (its node and nats-server) and connects its app.
async fn start_zone(
    z: &'static str,
    dir: &Path,
    certs: &Path,
    ports: &BTreeMap<&str, u16>,
    proxies: &Proxies,
) -> anyhow::Result<DemoZone> {
    let zdir = dir.join(z);
    std::fs::create_dir_all(&zdir)?;
    let at = site::ZonePlacement {
        dir: &zdir,
        certs,
        port: ports[z],
        nats_url: None,
    };
    let peer_url = |peer: &str| match (z, peer) {
        ("enterprise", "idmz") => {
            format!(
                "https://127.0.0.1:{}",
                proxies.enterprise_to_idmz.addr.port()
            )
        }
        ("idmz", "enterprise") => {
            format!(
                "https://127.0.0.1:{}",
                proxies.idmz_to_enterprise.addr.port()
            )
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
        u.batch_facts_max = RECONCILE_BATCH;
    }
    config.check()?;
    let node = bsfg::node::start(config).await?;
    let tls = bsfg::tls::client::client_config(
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
    Ok(DemoZone { _node: node, app })
}

/// Waits until every pull link of the site is in mode normal.
async fn wait_until_links_up(site: &DemoSite) -> anyhow::Result<()> {
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
    Ok(())
}
