//! Receiver-pulled replication: one link per configured upstream peer.
//!
//! Each link is a chain of tasks joined by bounded channels: a *fetcher*
//! long-polls the peer's `FetchFacts` (over mTLS, as this node's
//! certificate) and keeps up to `pipeline_depth` batches in flight, so a
//! round trip never caps throughput; a *screener* decides for each fact
//! whether it may enter this zone and pulls its artifacts; an *appender*
//! appends the screened facts to the local log (idempotent: a redelivered
//! fact is stored once) and only then has the batch confirmed to the peer
//! (a *confirmer*). The screener works on the next batch while the appender
//! waits for JetStream's acknowledgements of the current one, so neither
//! this node's CPU nor its nats-server idles while the other works. Memory
//! is bounded by `(pipeline_depth + 3) x batch_bytes_max` (the fetched
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
//!  peer ──FetchFacts──▶ fetcher ══(pipeline_depth)══▶ screener ══(1)══▶ appender
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
use freshness::Freshness;
use link::{LAG_WATERMARK_SLOTS, LAG_WATERMARK_WINDOW_MS, PeerClock};
use screener::screener;

use crate::client::BsfgClient;
use crate::config::ZoneConfig;
use crate::metrics::Metrics;
use crate::node::audit::Audit;
use crate::store::Store;
use bsfg_domain::clock::{SkewEstimate, WindowedMax};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// All links of a node.
pub struct Replicator {
    pub links: Vec<Arc<Link>>,
}

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
        let (client, presented) = match &tls {
            Some(files) => {
                let (config, presented) =
                    crate::tls::client::peer_client_config(&files.ca, &files.cert, &files.key)?;
                (
                    BsfgClient::connect_tls(&upstream.url, config)?,
                    Some(presented),
                )
            }
            None => (BsfgClient::connect(&upstream.url)?, None),
        };
        std::fs::create_dir_all(&upstream.spool_dir)?;
        let link = Arc::new(Link {
            config: upstream.clone(),
            principal,
            presented,
            status: Mutex::new(LinkStatus {
                peer: upstream.peer.clone(),
                url: upstream.url.clone(),
                consumer: upstream.consumer.clone(),
                mode: LinkMode::Autonomous,
                peer_mode: LinkMode::Autonomous,
                local_stall: None,
                remote_frontier: 0,
                backlog: 0,
                backlog_reported_at: None,
                lag_seconds: 0.0,
                lag_seconds_high_watermark: 0.0,
                peer_clock_skew_ms: None,
                last_confirm_at: None,
                facts_replicated: 0,
                facts_refused: 0,
                objects_pulled: 0,
                last_error: "not connected yet".into(),
            }),
            freshness: Mutex::new(Freshness {
                in_pipeline: VecDeque::new(),
                answered_ms: crate::store::now_unix_ms(),
                drained: true,
                newest_fetched_ms: None,
                polling_since_ms: None,
            }),
            stalls: Mutex::new([None, None]),
            peer_clock: Mutex::new(PeerClock {
                skew: SkewEstimate::default(),
                disagreeing: false,
            }),
            lag_window: Mutex::new(WindowedMax::new(
                LAG_WATERMARK_WINDOW_MS,
                LAG_WATERMARK_SLOTS,
            )),
            started: Instant::now(),
        });
        let (batches_tx, batches_rx) = tokio::sync::mpsc::channel(upstream.pipeline_depth);
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
        links.push(link);
    }
    Ok((Arc::new(Replicator { links }), tasks))
}
