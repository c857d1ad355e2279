//! Receiver-pulled replication: one link per configured upstream peer.
//!
//! Each link is a chain of tasks joined by bounded channels: a *fetcher*
//! long-polls the peer's `FetchFacts` (over mTLS, as this node's
//! certificate) and keeps up to `batches_ahead_max` batches in flight, so a
//! round trip never caps throughput; a *screener* decides for each fact
//! whether it may enter this zone and pulls its artifacts; an *appender*
//! appends the screened facts to the local log (idempotent: a redelivered
//! fact is stored once) and only then has the batch confirmed to the peer
//! (a *confirmer*). The screener works on the next batch while the appender
//! waits for JetStream's acknowledgements of the current one, so neither
//! this node's CPU nor its nats-server idles while the other works. Memory
//! is bounded by `(batches_ahead_max + 3) x batch_bytes_max` (the fetched
//! batches, one being screened, one screened, one being appended) whatever
//! the backlog. Batches travel as views of the received bytes: the screener
//! copies out each fact to append, once.
//!
//! A fact this zone refuses (origin not routed through the peer, import
//! policy, conflicting duplicate, invalid) is recorded in the audit stream,
//! counted, and passed: it never blocks the link and never vanishes silently.
//! Errors of the link or of the local store are retried with jittered
//! exponential backoff; nothing is confirmed before it is durable here.
//!
//! # The stages
//!
//! ```text
//!  peer ──FetchFacts──▶ fetcher ══(batches_ahead_max)══▶ screener ══(1)══▶ appender
//!   ▲                                                                       │
//!   └──────Confirm──────── confirmer ◀══(newest durable offset, watch)══════┘
//! ```
//!
//! One task per stage, one file per stage: `fetcher` (the long-poll; the
//! link's peer-side mode, backlog and lag), `screener` (the verdict on each
//! fact; `artifacts` pulls what it references), `appender` (the local
//! appends and their audit records), `confirmer` (the cumulative confirms,
//! and the per-link gauges published every second). What the stages share
//! is the `link` (status, mode, stalls, the peer's clock; its lag from
//! `freshness`); `backoff` paces their retries.
//!
//! # Invariants
//!
//! * Nothing is confirmed before it is durable here, or refused and audited:
//!   the confirmer is only handed the offset of a batch the appender is done
//!   with.
//! * Every fetched fact is appended or refused (audited and counted), in the
//!   order the peer delivered it; none is dropped silently and none blocks
//!   the link.
//! * A failure that may pass (of the link or of this zone's store) is
//!   retried with backoff, never taken for a verdict on the fact. While this
//!   zone's own store refuses (disk full, object store full, spool
//!   unwritable), the link shows [`LinkMode::Stalled`] and resumes by itself.
//! * A fetcher that starts, or whose fetch failed, fetches again from the
//!   peer's frontier: a confirm covers every offset before it, so what it
//!   may have missed must be delivered again first.
//! * Each channel is bounded (the watch holds one offset), hence the memory
//!   bound above.

mod appender;
mod artifacts;
mod backoff;
mod confirmer;
mod fetcher;
mod freshness;
mod link;
mod screener;

pub use confirmer::publish_confirm_age;
pub use link::{Link, LinkMode, LinkStatus};

use appender::appender;
use confirmer::confirmer;
use fetcher::fetcher;
use screener::screener;

use crate::client::BsfgClient;
use crate::config::{UpstreamConfig, ZoneConfig};
use crate::metrics::Metrics;
use crate::node::audit::Audit;
use crate::store::Store;
use std::sync::Arc;

/// All links of a node.
pub struct Replicator {
    pub links: Vec<Arc<Link>>,
}

/// What the stages of every link use of this node.
struct Context {
    zone: Arc<ZoneConfig>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
}

/// This node's client certificate files, for its peer links.
pub struct PeerTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Starts every configured link. `tls` is None in plaintext-dev mode; with
/// it, each link has its own TLS configuration that remembers the server
/// certificate its peer presented.
pub fn start(
    zone: Arc<ZoneConfig>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    tls: Option<PeerTls>,
) -> anyhow::Result<(Arc<Replicator>, Vec<tokio::task::JoinHandle<()>>)> {
    let context = Arc::new(Context {
        zone: zone.clone(),
        store,
        metrics,
        audit,
    });
    let mut links = Vec::new();
    let mut tasks = Vec::new();
    for upstream in &zone.upstreams {
        let principal = Arc::new(
            zone.principals
                .iter()
                .find(|p| p.name == upstream.peer)
                .cloned()
                .expect("config checked"),
        );
        let (client, presented) = connect(upstream, tls.as_ref())?;
        std::fs::create_dir_all(&upstream.spool_dir)?;
        let jitter_seed = zone.seed_for(&format!("link/{}", upstream.peer));
        let link = Arc::new(Link::new(
            upstream.clone(),
            link_name(&zone.upstreams, upstream),
            principal,
            presented,
            jitter_seed,
        ));
        spawn_stages(&link, client, &context, &mut tasks);
        links.push(link);
    }
    Ok((Arc::new(Replicator { links }), tasks))
}

/// A link's name: its peer's, or `<peer>/<consumer>` when an earlier
/// upstream pulls the same peer (e.g. the reference site's status link),
/// so that two links to one peer never share a status row or metric labels.
fn link_name(upstreams: &[UpstreamConfig], upstream: &UpstreamConfig) -> String {
    let earlier = upstreams
        .iter()
        .take_while(|u| !std::ptr::eq(*u, upstream))
        .any(|u| u.peer == upstream.peer);
    if earlier {
        format!("{}/{}", upstream.peer, upstream.consumer)
    } else {
        upstream.peer.clone()
    }
}

/// A client of `upstream`'s peer; with `tls`, as this node's certificate,
/// and the certificate the peer presents (for the audit records).
fn connect(
    upstream: &UpstreamConfig,
    tls: Option<&PeerTls>,
) -> anyhow::Result<(
    BsfgClient,
    Option<Arc<crate::tls::client::PresentedCertificate>>,
)> {
    Ok(match tls {
        Some(files) => {
            let (config, presented) =
                crate::tls::client::peer_client_config(&files.ca, &files.cert, &files.key)?;
            (
                BsfgClient::connect_tls(&upstream.client_urls(), config)?,
                Some(presented),
            )
        }
        None => (BsfgClient::connect(&upstream.client_urls())?, None),
    })
}

/// Spawns a link's stages, in order, joined by their channels (see the
/// module doc), onto `tasks`.
fn spawn_stages(
    link: &Arc<Link>,
    client: BsfgClient,
    context: &Arc<Context>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    tracing::info!(
        link = %link.name,
        url = %link.config.client_urls(),
        jitter_seed = link.jitter_seed,
        "link started"
    );
    let (batches_tx, batches_rx) = tokio::sync::mpsc::channel(link.config.batches_ahead_max);
    tasks.push(tokio::spawn(fetcher(
        link.clone(),
        client.clone(),
        context.clone(),
        batches_tx,
    )));
    let (screened_tx, screened_rx) = tokio::sync::mpsc::channel(1);
    tasks.push(tokio::spawn(screener(
        link.clone(),
        client.clone(),
        context.clone(),
        batches_rx,
        screened_tx,
    )));
    let (confirms_tx, confirms_rx) = tokio::sync::watch::channel(0);
    tasks.push(tokio::spawn(appender(
        link.clone(),
        client.clone(),
        context.clone(),
        screened_rx,
        confirms_tx,
    )));
    tasks.push(tokio::spawn(confirmer(
        link.clone(),
        client,
        context.clone(),
        confirms_rx,
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_further_link_to_a_peer_is_named_after_its_consumer() {
        let up = |peer: &str, consumer: &str| {
            let text = format!("peer = \"{peer}\"\nurl = \"https://x\"\nconsumer = \"{consumer}\"");
            toml::from_str::<UpstreamConfig>(&text).unwrap()
        };
        let ups = vec![
            up("idmz", "to-plant-a"),
            up("idmz", "to-plant-a-status"),
            up("plant-b", "to-plant-a"),
        ];
        let names: Vec<String> = ups.iter().map(|u| link_name(&ups, u)).collect();
        assert_eq!(names, ["idmz", "idmz/to-plant-a-status", "plant-b"]);
    }
}
