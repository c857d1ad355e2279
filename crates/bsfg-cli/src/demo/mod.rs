//! `bsfg demo`: the main job on local defaults.
//!
//! The default ([`run_site`]) starts the whole reference site on this
//! machine — `enterprise`, `idmz`, `plant-a`, `plant-b`, each with its own
//! embedded nats-server (JetStream domain = zone name) and its own node,
//! mutual TLS everywhere — moves facts and an artifact both ways, cuts the
//! `idmz` ⇄ `enterprise` link with a fault proxy while the plants keep
//! appending, restores it, and checks that every fact arrived exactly once.
//!
//! `bsfg demo --single-zone` ([`run_single_zone`]) starts one zone
//! (`plant-a`) and walks through the contract against the real node over a
//! real socket: an append, an identical retry, a conflicting retry, a fetch
//! and confirm, an artifact upload and a fact that references it, then
//! prints the node's metrics.
//!
//! * `single_zone.rs`: the single-zone walk-through and its zone.
//! * `site.rs`: the site demo's phases in order, starting the four zones.
//! * `traffic.rs`: facts and the artifact both ways, two hops (phases 3-5).
//! * `partition.rs`: the cut, the plants appending meanwhile, the restore.
//! * `checks.rs`: every fact at enterprise exactly once, in order.
//! * `status.rs`: the printed tables and `bsfg status` excerpts.

mod checks;
mod partition;
mod single_zone;
mod site;
mod status;
mod traffic;

pub use single_zone::{demo_config, demo_pki, run_single_zone};
pub use site::run_site;

use bsfg_proto::bsfg::v1::{Envelope, Fact};
use std::path::PathBuf;

fn step(title: &str) {
    println!("\n== {title}");
}

/// `bsfg demo`: the site demo, or the single-zone walkthrough.
pub async fn run(dir: Option<PathBuf>, single_zone: bool) -> anyhow::Result<()> {
    let dir = dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bsfg-demo-{}", std::process::id())));
    if single_zone {
        run_single_zone(dir).await
    } else {
        run_site(dir).await
    }
}

fn envelope_for(id: &str, from: &str, to: &str) -> Envelope {
    Envelope {
        message_id: id.into(),
        from_zone: from.into(),
        to_zone: to.into(),
        produced_at_unix_ms: bsfg::store::now_unix_ms(),
        ..Default::default()
    }
}

fn fact_of(subject: &str, predicate: &str, json: &str) -> Fact {
    Fact {
        subject: subject.into(),
        predicate: predicate.into(),
        object_json: json.into(),
        ..Default::default()
    }
}
