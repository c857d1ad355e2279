//! Checks across the zone files of a site (`bsfg config check`): what each
//! file alone cannot show, and what would otherwise fail silently once the
//! nodes run — a link pulling a consumer its peer does not have or grant, two
//! zones on one port, a route through a zone that pulls nothing, a peer that
//! may import nothing, a category no link carries, certificates missing,
//! expired or not naming the identity the peers expect.
//!
//! Each finding names the file, the key and the fix. Errors stop a site
//! from working; warnings are legal but probably not what was meant.

use super::{PrincipalKind, TlsMode, ZoneConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found, where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub file: PathBuf,
    /// The key, as a reader finds it in the file (e.g. `[[upstreams]]
    /// peer = "idmz" consumer`).
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{severity}: {}: {}: {}; fix: {}",
            self.file.display(),
            self.key,
            self.problem,
            self.fix
        )
    }
}

/// A zone's file and its configuration.
pub struct ZoneFile<'a> {
    pub path: &'a Path,
    pub config: &'a ZoneConfig,
}

/// Every cross-file finding for the site made of `zones`.
pub fn check_site(zones: &[ZoneFile<'_>]) -> Vec<Finding> {
    let mut findings = Vec::new();
    ports_used_twice(zones, &mut findings);
    for zone in zones {
        peers_without_origins(zone, &mut findings);
        upstream_consumers(zone, zones, &mut findings);
        routes_through_a_puller(zone, zones, &mut findings);
        categories_no_link_carries(zone, &mut findings);
    }
    findings
}

fn finding(
    severity: Severity,
    zone: &ZoneFile<'_>,
    key: String,
    problem: String,
    fix: String,
) -> Finding {
    Finding {
        severity,
        file: zone.path.to_path_buf(),
        key,
        problem,
        fix,
    }
}

/// The same port for two listeners of the site (all on one host): the
/// second node cannot start, or two zones share one nats-server.
fn ports_used_twice(zones: &[ZoneFile<'_>], findings: &mut Vec<Finding>) {
    let mut first_user: BTreeMap<u16, (String, &Path)> = BTreeMap::new();
    for zone in zones {
        let c = zone.config;
        let mut ports = vec![
            ("listen", c.listen.port()),
            ("ops_listen", c.ops_listen.port()),
        ];
        if c.nats.url.is_none() {
            ports.push(("[nats] port", c.nats.port));
        }
        for (key, port) in ports.into_iter().filter(|(_, p)| *p != 0) {
            match first_user.get(&port) {
                Some((other_key, other)) => findings.push(finding(
                    Severity::Error,
                    zone,
                    key.into(),
                    format!("port {port} is also {other_key} of {}", other.display()),
                    "give every listener of the site its own port".into(),
                )),
                None => {
                    first_user.insert(port, (key.to_string(), zone.path));
                }
            }
        }
    }
}

/// A peer principal with no origins may import nothing: every fact it
/// serves is refused.
fn peers_without_origins(zone: &ZoneFile<'_>, findings: &mut Vec<Finding>) {
    for p in &zone.config.principals {
        if p.kind == PrincipalKind::Peer && p.origins.is_empty() {
            findings.push(finding(
                Severity::Error,
                zone,
                format!("[[principals]] name = {:?} origins", p.name),
                "a peer with no origins may bring in no fact at all".into(),
                "list the zones whose facts may come over this peer (its zone and the \
                 zones behind it)"
                    .into(),
            ));
        }
    }
}

/// An upstream pulls a consumer of its peer: the peer's file must declare
/// it and grant it to a peer principal for this zone.
fn upstream_consumers(zone: &ZoneFile<'_>, zones: &[ZoneFile<'_>], findings: &mut Vec<Finding>) {
    let me = &zone.config.zone;
    for u in &zone.config.upstreams {
        let Some(peer_zone) = peer_zone_of(zone.config, &u.peer) else {
            continue; // the file's own check names this
        };
        let Some(peer) = zones.iter().find(|z| &z.config.zone == peer_zone) else {
            continue; // not given: nothing to compare with
        };
        let key = format!("[[upstreams]] peer = {:?} consumer", u.peer);
        if !peer.config.consumers.iter().any(|c| c.name == u.consumer) {
            let declared: Vec<&str> = peer
                .config
                .consumers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            findings.push(finding(
                Severity::Error,
                zone,
                key,
                format!(
                    "{} declares no consumer {:?} (it has {declared:?}); this link fetches nothing",
                    peer.path.display(),
                    u.consumer
                ),
                format!(
                    "name one of its consumers, or add [[consumers]] name = {:?} there",
                    u.consumer
                ),
            ));
            continue;
        }
        let granted = peer.config.principals.iter().any(|p| {
            p.kind == PrincipalKind::Peer
                && p.zone.as_deref() == Some(me.as_str())
                && p.consumers.contains(&u.consumer)
        });
        if !granted {
            findings.push(finding(
                Severity::Error,
                zone,
                key,
                format!(
                    "{} does not grant consumer {:?} to a peer principal with zone = {me:?}; \
                     every fetch is refused permission_denied",
                    peer.path.display(),
                    u.consumer
                ),
                format!(
                    "add {:?} to that principal's consumers in {}",
                    u.consumer,
                    peer.path.display()
                ),
            ));
        }
    }
}

/// The zone a peer principal named `name` stands for.
fn peer_zone_of<'a>(config: &'a ZoneConfig, name: &str) -> Option<&'a String> {
    config
        .principals
        .iter()
        .find(|p| p.name == name && p.kind == PrincipalKind::Peer)
        .and_then(|p| p.zone.as_ref())
}

/// Facts leave a zone only when the next hop pulls them: a route through a
/// zone that has no upstream on this one strands them.
fn routes_through_a_puller(
    zone: &ZoneFile<'_>,
    zones: &[ZoneFile<'_>],
    findings: &mut Vec<Finding>,
) {
    let me = &zone.config.zone;
    for (destination, hop) in &zone.config.routes {
        let Some(next) = zones.iter().find(|z| &z.config.zone == hop) else {
            continue;
        };
        let pulls = next
            .config
            .upstreams
            .iter()
            .any(|u| peer_zone_of(next.config, &u.peer) == Some(me));
        if !pulls {
            findings.push(finding(
                Severity::Error,
                zone,
                format!("[routes] {destination}"),
                format!(
                    "facts for {destination} go to {hop}, but {} pulls nothing from {me}",
                    next.path.display()
                ),
                format!(
                    "add an [[upstreams]] entry for {me} in {}, or route {destination} elsewhere",
                    next.path.display()
                ),
            ));
        }
    }
}

/// A zone that sends facts out (it has routes) but has a category that no
/// consumer granted to a peer reads: facts of that category addressed
/// elsewhere are refused at append (`category_not_routed`).
fn categories_no_link_carries(zone: &ZoneFile<'_>, findings: &mut Vec<Finding>) {
    let c = zone.config;
    if c.routes.is_empty() {
        return;
    }
    for category in &c.categories {
        if category.kinds.iter().any(|k| k == "audit") {
            continue; // the node's own records stay in the zone
        }
        let carried = c.consumers.iter().any(|consumer| {
            consumer.category == category.name
                && c.principals
                    .iter()
                    .any(|p| p.kind == PrincipalKind::Peer && p.consumers.contains(&consumer.name))
        });
        if !carried {
            findings.push(finding(
                Severity::Warning,
                zone,
                format!("[[categories]] name = {:?}", category.name),
                format!(
                    "no link carries it: facts of kinds {:?} addressed to another zone are \
                     refused category_not_routed",
                    category.kinds
                ),
                "add a consumer on it and grant it to the peer principal of the next hop, \
                 if its facts should cross"
                    .into(),
            ));
        }
    }
}

/// The zone's certificate files: present, not expired, and naming the
/// identity the other zones' peer principals expect of this zone's node.
pub fn check_certificates(zone: &ZoneFile<'_>, zones: &[ZoneFile<'_>]) -> Vec<Finding> {
    let tls = &zone.config.tls;
    if tls.mode != TlsMode::Mtls {
        return Vec::new();
    }
    let mut findings = Vec::new();
    let files = [
        ("[tls] ca", &tls.ca),
        ("[tls] cert", &tls.cert),
        ("[tls] key", &tls.key),
    ];
    for (key, path) in files {
        let missing = path.as_ref().is_none_or(|p| !p.exists());
        if missing {
            findings.push(finding(
                Severity::Error,
                zone,
                key.into(),
                format!(
                    "file {} is missing",
                    path.as_deref().unwrap_or(Path::new("")).display()
                ),
                "issue it (bsfg certs issue) or correct the path (relative to this file)".into(),
            ));
        }
    }
    if let Some(cert) = tls.cert.as_deref().filter(|p| p.exists()) {
        certificate_findings(zone, zones, cert, &mut findings);
    }
    findings
}

fn certificate_findings(
    zone: &ZoneFile<'_>,
    zones: &[ZoneFile<'_>],
    cert: &Path,
    findings: &mut Vec<Finding>,
) {
    let der = match crate::tls::read_certs(cert) {
        Ok(chain) => chain[0].to_vec(),
        Err(e) => {
            findings.push(finding(
                Severity::Error,
                zone,
                "[tls] cert".into(),
                format!("{e}"),
                "issue it again".into(),
            ));
            return;
        }
    };
    match crate::tls::identity::days_until_expiry(&der) {
        Ok(days) if days <= 0.0 => findings.push(finding(
            Severity::Error,
            zone,
            "[tls] cert".into(),
            format!("{} expired {:.0} days ago", cert.display(), -days),
            "issue a new certificate (the node re-reads it without a restart)".into(),
        )),
        Ok(_) => {}
        Err(e) => findings.push(finding(
            Severity::Error,
            zone,
            "[tls] cert".into(),
            format!("{e}"),
            "issue it again".into(),
        )),
    }
    let Ok(identity) = crate::tls::identity::of_certificate(&der) else {
        return;
    };
    let me = &zone.config.zone;
    for other in zones {
        for p in &other.config.principals {
            let expects_me =
                p.kind == PrincipalKind::Peer && p.zone.as_deref() == Some(me.as_str());
            if expects_me && !identity.names.iter().any(|n| p.identities.contains(n)) {
                findings.push(finding(
                    Severity::Error,
                    zone,
                    "[tls] cert".into(),
                    format!(
                        "{} names {:?}, but {}'s peer principal {:?} expects {:?}",
                        cert.display(),
                        identity.names,
                        other.path.display(),
                        p.name,
                        p.identities
                    ),
                    "issue the node certificate under the expected name, or add its name to \
                     that principal's identities"
                        .into(),
                ));
            }
        }
    }
}
