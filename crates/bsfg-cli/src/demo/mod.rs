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
//! `bsfg demo --ha` ([`run_ha`]) starts one zone (`plant-a`) as a
//! JetStream cluster of three nats-servers and two `bsfg serve` processes
//! with the writer lease, kills the writer and then a nats-server under a
//! client's appends, and checks that every acknowledged fact is stored
//! exactly once.
//!
//! * `single_zone.rs`: the single-zone walk-through and its zone.
//! * `site.rs`: the site demo's phases in order, starting the four zones.
//! * `traffic.rs`: facts and the artifact both ways, two hops (phases 3-5).
//! * `partition.rs`: the cut, the plants appending meanwhile, the restore.
//! * `checks.rs`: every fact at enterprise exactly once, in order.
//! * `status.rs`: the printed tables and `bsfg status` excerpts.
//! * `ha.rs`: the HA demo's steps in order; `ha_zone.rs` starts its
//!   servers and nodes, `ha_writer.rs` is its producer, `ha_check.rs`
//!   reads everything back and checks it.

mod checks;
mod ha;
mod ha_check;
mod ha_writer;
mod ha_zone;
mod partition;
mod single_zone;
mod site;
mod status;
mod traffic;

pub use ha::run_ha;
pub use single_zone::{demo_config, demo_pki, run_single_zone};
pub use site::run_site;

use bsfg_proto::bsfg::v1::{Envelope, Fact};
use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

fn step(title: &str) {
    println!("\n== {title}");
}

/// `bsfg demo`: the site demo, the single-zone walkthrough or the HA
/// demo. Ctrl-C or SIGTERM stops it: what it started is dropped, which
/// stops every node and nats-server (and they are tied to this process
/// besides, so even `kill -9` of it takes them down).
pub async fn run(dir: Option<PathBuf>, single_zone: bool, ha: bool) -> anyhow::Result<()> {
    let dir = dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("bsfg-demo-{}", std::process::id())));
    let demo = async {
        match (single_zone, ha) {
            (true, _) => run_single_zone(dir).await,
            (false, true) => run_ha(dir).await,
            (false, false) => run_site(dir).await,
        }
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let stopped = tokio::select! {
        r = demo => return r,
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminate.recv() => "terminated",
    };
    anyhow::bail!("{stopped}: everything the demo started is stopped")
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
