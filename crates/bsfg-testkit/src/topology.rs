//! A site from one description (`site.toml`): its zones (where each node
//! listens) and which pairs of zones are linked. Every zone's configuration
//! follows from it: a peer principal, a consumer and an upstream per
//! neighbour, the origins each neighbour may bring in, and a route for
//! every zone that is not a neighbour (the shortest path of links; ties go
//! to the link declared first). `bsfg site init` writes those files; the
//! reference site (`examples/site/site.toml`), which the demo and the tests
//! run, is read the same way.
//!
//! Invariants, checked when a description is read: zone names are valid
//! and distinct, no two listeners of one host share a port, a link joins
//! two different known zones, once, and every zone can reach every other.

use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};

/// One site: its zones and links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub zones: Vec<ZoneSpec>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

/// Where one zone's node is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub name: String,
    /// The address its peers reach its boundary port at (and that it
    /// listens on).
    #[serde(default = "loopback")]
    pub host: String,
    /// The boundary port (Connect over mutual TLS).
    pub port: u16,
    /// The operations port (`/metrics`, `/healthz`), on loopback.
    pub ops_port: u16,
    /// The embedded nats-server's port, on loopback (0: a free one).
    #[serde(default)]
    pub nats_port: u16,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

/// Two zones that pull from each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub between: [String; 2],
}

impl Topology {
    /// Reads and checks a description.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let topology: Topology = toml::from_str(text)?;
        topology.check()?;
        Ok(topology)
    }

    pub fn zone(&self, name: &str) -> Option<&ZoneSpec> {
        self.zones.iter().find(|z| z.name == name)
    }

    /// The zones `zone` is linked with, in the order the links are declared.
    pub fn neighbours(&self, zone: &str) -> Vec<&str> {
        self.links
            .iter()
            .filter_map(|l| match &l.between {
                [a, b] if a == zone => Some(b.as_str()),
                [a, b] if b == zone => Some(a.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The neighbour of `from` that facts for `to` go to first (None for
    /// `from` itself).
    pub fn next_hop(&self, from: &str, to: &str) -> Option<&str> {
        self.first_hops(from).remove(to)
    }

    /// The zones whose facts may come into `zone` over `neighbour`: those
    /// `zone` reaches through it.
    pub fn origins_via(&self, zone: &str, neighbour: &str) -> Vec<&str> {
        let hops = self.first_hops(zone);
        self.zones
            .iter()
            .map(|z| z.name.as_str())
            .filter(|z| hops.get(z) == Some(&neighbour))
            .collect()
    }

    /// For every zone reachable from `from`, the neighbour its shortest
    /// path starts with (breadth first, neighbours in declared order).
    fn first_hops(&self, from: &str) -> BTreeMap<&str, &str> {
        let mut first: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: VecDeque<(&str, &str)> = VecDeque::new();
        for n in self.neighbours(from) {
            if first.insert(n, n).is_none() {
                queue.push_back((n, n));
            }
        }
        while let Some((zone, via)) = queue.pop_front() {
            for n in self.neighbours(zone) {
                if n != from && !first.contains_key(n) {
                    first.insert(n, via);
                    queue.push_back((n, via));
                }
            }
        }
        first
    }

    fn check(&self) -> anyhow::Result<()> {
        let mut names = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for z in &self.zones {
            bsfg_domain::validate::zone("zone name", &z.name)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            anyhow::ensure!(
                names.insert(z.name.as_str()),
                "zone {:?} is declared twice",
                z.name
            );
            for (what, port) in [
                ("port", z.port),
                ("ops_port", z.ops_port),
                ("nats_port", z.nats_port),
            ] {
                let key = (z.host.as_str(), port);
                anyhow::ensure!(
                    port == 0 || ports.insert(key),
                    "zone {}: {what} {port} on {} is used twice; give every listener its own port",
                    z.name,
                    z.host
                );
            }
        }
        let mut pairs = std::collections::BTreeSet::new();
        for l in &self.links {
            let [a, b] = &l.between;
            anyhow::ensure!(a != b, "link {a} ⇄ {b}: a zone is not linked with itself");
            for z in [a, b] {
                anyhow::ensure!(names.contains(z.as_str()), "link {a} ⇄ {b}: no zone {z:?}");
            }
            let pair = if a < b { (a, b) } else { (b, a) };
            anyhow::ensure!(pairs.insert(pair), "link {a} ⇄ {b} is declared twice");
        }
        for z in &self.zones {
            let reached = self.first_hops(&z.name).len();
            anyhow::ensure!(
                self.zones.len() == 1 || reached == self.zones.len() - 1,
                "zone {} reaches {reached} of the {} other zones: link it",
                z.name,
                self.zones.len() - 1
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../../examples/site/site.toml");

    #[test]
    fn the_reference_routes_the_plants_through_idmz() {
        let t = Topology::parse(REFERENCE).unwrap();
        assert_eq!(t.neighbours("idmz"), ["plant-a", "enterprise", "plant-b"]);
        assert_eq!(t.neighbours("plant-a"), ["idmz"]);
        assert_eq!(t.next_hop("plant-a", "enterprise"), Some("idmz"));
        assert_eq!(t.next_hop("idmz", "plant-b"), Some("plant-b"));
        assert_eq!(t.next_hop("plant-a", "plant-a"), None);
        assert_eq!(
            t.origins_via("plant-a", "idmz"),
            ["enterprise", "idmz", "plant-b"]
        );
        assert_eq!(t.origins_via("idmz", "plant-a"), ["plant-a"]);
    }

    #[test]
    fn a_description_that_cannot_work_is_refused_with_the_reason() {
        let zone = |n: &str, p: u16| {
            format!(
                "[[zones]]\nname = {n:?}\nport = {p}\nops_port = {}\n",
                p + 1
            )
        };
        let two = format!("{}{}", zone("a", 10), zone("b", 20));
        let refused = |text: &str| Topology::parse(text).unwrap_err().to_string();
        assert!(refused(&two).contains("reaches 0 of the 1 other zones"));
        let linked = format!("{two}[[links]]\nbetween = [\"a\", \"b\"]\n");
        assert!(Topology::parse(&linked).is_ok());
        assert!(
            refused(&format!("{linked}[[links]]\nbetween = [\"b\", \"a\"]\n")).contains("twice")
        );
        assert!(refused(&format!("{}{}", zone("a", 10), zone("b", 11))).contains("used twice"));
        assert!(
            refused(&format!("{two}[[links]]\nbetween = [\"a\", \"c\"]\n")).contains("no zone")
        );
    }
}
