//! Where facts leave this zone: next hops and whether a fact can cross.

use super::{PrincipalKind, ZoneConfig};

impl ZoneConfig {
    /// The peer zone a fact addressed to `to_zone` leaves through, if any:
    /// a configured route, else the peer itself when `to_zone` is a
    /// neighbouring peer's zone. Facts for this zone never leave it.
    pub fn next_hop(&self, to_zone: &str) -> Option<&str> {
        if to_zone == self.zone {
            return None;
        }
        if let Some(hop) = self.routes.get(to_zone) {
            return Some(hop);
        }
        self.principals
            .iter()
            .find(|p| p.kind == PrincipalKind::Peer && p.zone.as_deref() == Some(to_zone))
            .and_then(|p| p.zone.as_deref())
    }

    /// Whether a fact of `category` addressed to `to_zone` can ever leave
    /// this zone: `to_zone` is this zone, or some link leads towards it and
    /// the peer on that link is granted a consumer of the category (and its
    /// export policy does not exclude the category). Otherwise the fact
    /// would be stored and never cross, so AppendFact refuses it.
    pub fn check_route(&self, to_zone: &str, category: &str) -> Result<(), bsfg_domain::Rejection> {
        use bsfg_domain::{Code, Reason, Rejection};
        let Some(hop) = self.next_hop(to_zone) else {
            if to_zone == self.zone {
                return Ok(());
            }
            let reachable: Vec<&str> = std::iter::once(self.zone.as_str())
                .chain(self.routes.keys().map(String::as_str))
                .chain(
                    self.principals
                        .iter()
                        .filter(|p| p.kind == PrincipalKind::Peer)
                        .filter_map(|p| p.zone.as_deref()),
                )
                .collect();
            return Err(Rejection::invalid(
                Reason::NoRouteToZone,
                format!(
                    "no link of zone {} leads to zone {to_zone:?}; zones reachable from here: {reachable:?} (a [routes] entry or a peer principal makes a zone reachable)",
                    self.zone
                ),
            ));
        };
        let carried = self
            .principals
            .iter()
            .filter(|p| p.kind == PrincipalKind::Peer && p.zone.as_deref() == Some(hop))
            .any(|p| {
                let exported = p.export.categories.is_empty()
                    || p.export.categories.iter().any(|c| c == category);
                exported
                    && p.consumers.iter().any(|name| {
                        self.consumers
                            .iter()
                            .any(|c| &c.name == name && c.category == category)
                    })
            });
        if carried {
            return Ok(());
        }
        Err(Rejection::new(
            Code::FailedPrecondition,
            Reason::CategoryNotRouted,
            format!(
                "facts for zone {to_zone} leave through peer {hop}, but no consumer of category {category} is granted to it: this fact would never cross; an operator grants {hop}'s principal a consumer of {category}, or the producer uses a kind of a category that crosses"
            ),
        ))
    }
}
