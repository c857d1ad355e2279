//! The fleet view: `GET /console/fleet` (a page like `/console`) and
//! `GET /console/fleet.json`, every zone this node knows of with its last
//! status and its age, and the links between zones coloured by the mode
//! their pulling zone reported.
//!
//! Built from status facts only (`node::status`, kept by
//! `store::statuses`), never by asking a zone: at enterprise, where the
//! site's statuses are sent, it is the site's view; a zone whose last
//! status is older than three of its intervals is shown `stale` with since
//! when, which is how a cut link shows. The node's own zone is its live
//! status. The zones listed are this one, its routes' destinations, its
//! upstream peers and every zone a status came from.

use crate::config::ZoneConfig;
use crate::store::statuses::{LastStatus, STALE_INTERVALS};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The fleet page, with the scripts the console's pages share.
pub fn page() -> &'static str {
    static PAGE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| super::assemble(include_str!("fleet.html")));
    &PAGE
}

/// One zone of the view: its last status, if any.
fn zone_json(zone: &str, last: Option<&LastStatus>, now: i64) -> Value {
    match last {
        None => json!({ "zone": zone, "state": "unknown" }),
        Some(s) => {
            let stale = s.is_stale(now);
            json!({
                "zone": zone,
                "state": if stale { "stale" } else { "fresh" },
                "produced_unix_ms": s.produced_unix_ms,
                "age_seconds": s.age_ms(now) as f64 / 1000.0,
                "interval_seconds": s.interval_ms as f64 / 1000.0,
                "stale_since_unix_ms": stale.then(|| s.stale_since_unix_ms()),
                "status": s.object,
            })
        }
    }
}

/// The links a status reports: `from` the peer `to` the reporting zone
/// (the receiver pulls), in the mode it last saw.
fn links_json(s: &LastStatus, stale: bool) -> Vec<Value> {
    let links = s.object.get("links").and_then(Value::as_array);
    links
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some(json!({
                // A further link to a peer is named `<peer>/<consumer>`.
                "from": l.get("peer")?.as_str()?.split('/').next()?,
                "to": s.zone,
                "mode": l.get("mode")?.as_str()?,
                "reported_stale": stale,
            }))
        })
        .collect()
}

/// The body of `/console/fleet.json`: `own` is this zone's live status.
pub fn fleet_json(
    config: &ZoneConfig,
    own: LastStatus,
    others: Vec<LastStatus>,
    now: i64,
) -> Value {
    let mut by_zone: BTreeMap<String, Option<LastStatus>> = BTreeMap::new();
    let known = config
        .routes
        .keys()
        .chain(config.upstreams.iter().map(|u| &u.peer));
    for z in known {
        by_zone.insert(z.clone(), None);
    }
    for s in others.into_iter().filter(|s| s.zone != config.zone) {
        by_zone.insert(s.zone.clone(), Some(s));
    }
    by_zone.insert(config.zone.clone(), Some(own));
    let zones: Vec<Value> = by_zone
        .iter()
        .map(|(z, s)| zone_json(z, s.as_ref(), now))
        .collect();
    let links: Vec<Value> = by_zone
        .values()
        .flatten()
        .flat_map(|s| links_json(s, s.is_stale(now)))
        .collect();
    json!({
        "zone": config.zone,
        "now_unix_ms": now,
        "stale_intervals": STALE_INTERVALS,
        "zones": zones,
        "links": links,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(zone: &str, produced: i64, peer: &str, mode: &str) -> LastStatus {
        let json = format!(
            r#"{{"produced_unix_ms":{produced},"interval_ms":1000,
               "links":[{{"peer":"{peer}","mode":"{mode}"}}]}}"#
        );
        LastStatus::parse(zone, &json).unwrap()
    }

    #[test]
    fn lists_known_zones_marks_stale_ones_and_their_links() {
        let config: ZoneConfig = toml::from_str(
            "zone = \"enterprise\"\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n\
             [tls]\nmode = \"plaintext-dev\"\n[routes]\nplant-a = \"idmz\"\nplant-b = \"idmz\"\n",
        )
        .unwrap();
        let now = 100_000;
        let own = status("enterprise", now, "idmz", "autonomous");
        let others = vec![status("idmz", now - 500, "enterprise", "normal")];
        let others = [
            others,
            vec![status("plant-a", now - 5_000, "idmz", "normal")],
        ]
        .concat();
        let v = fleet_json(&config, own, others, now);
        let state = |z: &str| {
            let zones = v["zones"].as_array().unwrap();
            let e = zones.iter().find(|e| e["zone"] == z).unwrap();
            e["state"].as_str().unwrap().to_string()
        };
        assert_eq!(state("enterprise"), "fresh");
        assert_eq!(state("idmz"), "fresh");
        assert_eq!(state("plant-a"), "stale");
        assert_eq!(state("plant-b"), "unknown");
        let zones = v["zones"].as_array().unwrap();
        let a = zones.iter().find(|e| e["zone"] == "plant-a").unwrap();
        assert_eq!(a["stale_since_unix_ms"], now - 5_000 + 3_000);
        let links = v["links"].as_array().unwrap();
        assert_eq!(links.len(), 3);
        let cut = links.iter().find(|l| l["to"] == "enterprise").unwrap();
        assert_eq!(
            (cut["from"].as_str(), cut["mode"].as_str()),
            (Some("idmz"), Some("autonomous"))
        );
        assert!(
            links
                .iter()
                .any(|l| l["to"] == "plant-a" && l["reported_stale"] == true)
        );
    }
}
