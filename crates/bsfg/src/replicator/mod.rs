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

use crate::client::BsfgClient;
use crate::config::{PrincipalConfig, UpstreamConfig, ZoneConfig};
use crate::metrics::{Metrics, labels};
use crate::node::audit::{Audit, AuditEvent};
use crate::store::Store;
use bsfg_domain::clock::{SkewEstimate, WindowedMax};
use bsfg_domain::policy::Crossing;
use bsfg_domain::{Code, Rejection, validate};
use bsfg_proto::bsfg::v1::__buffa::view::{FetchFactsResponseView, StoredFactView};
use bsfg_proto::bsfg::v1::{AttachmentRef, FetchFactsRequest};
use buffa::MessageView as _;
use buffa::view::OwnedView;
use futures::StreamExt as _;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Link mode (REFERENCE §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Link up, backlog small.
    Normal,
    /// Peer unreachable; local work goes on.
    Autonomous,
    /// Link back, backlog being replayed.
    Reconciliation,
    /// This zone cannot store what it fetched (its own store refuses:
    /// disk full, store down): the facts wait at the peer, the lag grows,
    /// and the link resumes by itself once the store takes appends again.
    /// Shown over the peer-side mode, which is the lesser problem.
    Stalled,
}

impl LinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Normal => "normal",
            LinkMode::Autonomous => "autonomous",
            LinkMode::Reconciliation => "reconciliation",
            LinkMode::Stalled => "stalled",
        }
    }

    const ALL: [LinkMode; 4] = [
        LinkMode::Normal,
        LinkMode::Autonomous,
        LinkMode::Reconciliation,
        LinkMode::Stalled,
    ];
}

/// What an operator sees of a link.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub peer: String,
    pub url: String,
    pub consumer: String,
    /// [`LinkMode::Stalled`] while `local_stall` is set, else `peer_mode`.
    pub mode: LinkMode,
    /// What the last fetch showed of the peer side.
    pub peer_mode: LinkMode,
    /// Why this zone's store does not take the link's appends, while it does
    /// not (the append error), else None.
    pub local_stall: Option<String>,
    /// The peer-side frontier of our consumer, as last confirmed.
    pub remote_frontier: u64,
    /// Facts waiting at the peer after the last fetch. While the link is
    /// cut this is the last known value (it can only have grown since).
    pub backlog: u64,
    /// When the peer last reported `backlog` (None: never).
    pub backlog_reported_at: Option<Instant>,
    /// See [`Freshness::lag_ms`]: keeps growing while the link is cut.
    pub lag_seconds: f64,
    /// The highest lag over the last 15 minutes.
    pub lag_seconds_high_watermark: f64,
    /// The peer's clock minus ours (ms), median of its recent answers;
    /// None before one (or from a peer that does not send its time).
    pub peer_clock_skew_ms: Option<i64>,
    pub last_confirm_at: Option<Instant>,
    pub facts_replicated: u64,
    pub facts_refused: u64,
    pub objects_pulled: u64,
    pub last_error: String,
}

pub struct Link {
    pub config: UpstreamConfig,
    principal: Arc<PrincipalConfig>,
    /// The peer's server certificate (mTLS only), for the audit record.
    presented: Option<Arc<crate::tls::client::PresentedCertificate>>,
    status: Mutex<LinkStatus>,
    freshness: Mutex<Freshness>,
    /// Per [`Stage`]: why this zone's store refuses it, while it does.
    stalls: Mutex<[Option<String>; 2]>,
    /// The peer's clock against ours, from its answers' `answered_at`.
    peer_clock: Mutex<PeerClock>,
    /// The lag's maximum over [`LAG_WATERMARK_WINDOW_MS`].
    lag_window: Mutex<WindowedMax>,
    /// The origin of the monotonic times given to `lag_window`.
    started: Instant,
}

/// The window of `lag_seconds_high_watermark`: long enough to show the
/// worst of a recent incident, short enough that a clock step or an
/// outage long past does not pin it for the life of the process.
const LAG_WATERMARK_WINDOW_MS: u64 = 15 * 60 * 1000;
const LAG_WATERMARK_SLOTS: usize = 15;

struct PeerClock {
    skew: SkewEstimate,
    disagreeing: bool,
}

/// The stages of a link that write to this zone's store.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Artifacts pulled into the object store.
    Screen = 0,
    /// Facts appended.
    Append = 1,
}

/// Refusals of this zone's own store (not the peer's, not the fact's): the
/// link is stalled on them, not cut.
fn is_local_store_refusal(r: &Rejection) -> bool {
    matches!(r.reason, "disk_full" | "bucket_full" | "spool_unavailable")
}

/// How long past its `wait_ms` a long-poll may stay unanswered before the
/// link no longer counts as caught up (round trip, a busy peer).
const POLL_GRACE_MS: i64 = 2_000;

/// What a link knows of how far this zone is behind its peer; times are
/// unix ms (a fact's time is the peer's append time, from its hop).
struct Freshness {
    /// Per batch fetched and not yet through the appender, oldest first:
    /// the time of its first fact (of its answer if it carries none).
    in_pipeline: VecDeque<i64>,
    /// When the last answer arrived (the link's start before any).
    answered_ms: i64,
    /// Whether the last answer left nothing waiting at the peer (backlog 0).
    drained: bool,
    /// The time of the newest fact fetched.
    newest_fetched_ms: Option<i64>,
    /// A fetch sent after a drained answer and not answered yet: when.
    polling_since_ms: Option<i64>,
}

impl Freshness {
    /// The replication lag at `now`: the age of the oldest fact of the peer
    /// that may not be here yet, from what this node knows.
    /// * batches fetched but not yet appended: the age of the first fact of
    ///   the oldest (everything before it is here);
    /// * else, if the last answer still left facts at the peer: the age of
    ///   the newest fact fetched (those left are younger: an upper bound);
    /// * else the link was caught up when that answer arrived: 0 while the
    ///   long-poll sent since is answered in time (the peer answers at once
    ///   when a fact arrives), otherwise, e.g. while the link is cut, the
    ///   time since that answer: it keeps growing until the peer is heard
    ///   from again. Before any answer, the time since the link started.
    fn lag_ms(&self, now: i64, wait_ms: i64) -> i64 {
        let since = if let Some(first) = self.in_pipeline.front() {
            *first
        } else if !self.drained {
            self.newest_fetched_ms.unwrap_or(self.answered_ms)
        } else if self
            .polling_since_ms
            .is_some_and(|p| now - p <= wait_ms + POLL_GRACE_MS)
        {
            now
        } else {
            self.answered_ms
        };
        (now - since).max(0)
    }
}

impl Link {
    /// An audit record of this link's peer (the puller's side of a crossing).
    fn audit_event(
        &self,
        subject_key: String,
        decision: &'static str,
        reason: String,
        detail: String,
    ) -> AuditEvent {
        AuditEvent {
            principal: self.principal.name.clone(),
            identity: self.config.url.clone(),
            fingerprint: self
                .presented
                .as_ref()
                .map(|p| p.fingerprint())
                .unwrap_or_default(),
            rpc: "Replicate",
            subject_key,
            decision,
            reason,
            detail,
        }
    }

    /// The link's status, its lag computed now.
    pub fn status(&self) -> LinkStatus {
        self.refresh_lag(None);
        self.status.lock().unwrap().clone()
    }

    /// Recomputes the lag (and its high watermark) from what the link knows
    /// now; with `metrics`, publishes both.
    fn refresh_lag(&self, metrics: Option<&Metrics>) {
        let lag = self
            .freshness
            .lock()
            .unwrap()
            .lag_ms(crate::store::now_unix_ms(), i64::from(self.config.wait_ms))
            as f64
            / 1000.0;
        let mono_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let watermark = {
            let mut window = self.lag_window.lock().unwrap();
            window.record(lag, mono_ms);
            window.max(mono_ms)
        };
        let mut s = self.status.lock().unwrap();
        s.lag_seconds = lag;
        s.lag_seconds_high_watermark = watermark;
        if let Some(metrics) = metrics {
            let l = labels(&[("link", &self.config.peer)]);
            metrics.replication_lag_seconds.get_or_create(&l).set(lag);
            metrics
                .replication_lag_high_watermark
                .get_or_create(&l)
                .set(s.lag_seconds_high_watermark);
        }
    }

    /// Records the peer's clock from an answer that arrived now; returns
    /// the skew estimate (ms, peer minus ours) to convert its times.
    fn record_peer_clock(&self, answered_at_ms: i64, cx: &Context) -> i64 {
        if answered_at_ms == 0 {
            return 0; // a peer that does not send its time
        }
        let skew_max_ms = i64::try_from(cx.zone.clock_skew_max.as_millis()).unwrap_or(i64::MAX);
        let mut clock = self.peer_clock.lock().unwrap();
        clock
            .skew
            .record(answered_at_ms, crate::store::now_unix_ms());
        let skew_ms = clock.skew.skew_ms().unwrap_or(0);
        let disagreeing = clock.skew.disagrees(skew_max_ms);
        if disagreeing != clock.disagreeing {
            clock.disagreeing = disagreeing;
            if disagreeing {
                tracing::warn!(link = %self.config.peer, skew_ms, skew_max_ms, "the peer's clock disagrees with this node's beyond clock_skew_max: lags are corrected by the skew; fix the time source (NTP) of one of them");
            } else {
                tracing::info!(link = %self.config.peer, skew_ms, "the peer's clock agrees with this node's again");
            }
        }
        self.status.lock().unwrap().peer_clock_skew_ms = Some(skew_ms);
        cx.metrics
            .clock_skew_seconds
            .get_or_create(&labels(&[("against", &self.config.peer)]))
            .set(skew_ms as f64 / 1000.0);
        skew_ms
    }

    /// Records what a fetch showed of the peer side.
    fn set_mode(&self, mode: LinkMode, metrics: &Metrics) {
        assert_ne!(mode, LinkMode::Stalled, "a stall is local: set_stall");
        let mut s = self.status.lock().unwrap();
        s.peer_mode = mode;
        self.publish_mode(&mut s, metrics);
    }

    /// Records whether this zone's store refuses what `stage` asks of it
    /// (the reason) or takes it again (None). The screener (artifacts) and
    /// the appender (facts) stall apart; the link is stalled while either is.
    fn set_stall(&self, stage: Stage, reason: Option<String>, metrics: &Metrics) {
        let mut stalls = self.stalls.lock().unwrap();
        if stalls[stage as usize] == reason {
            return;
        }
        stalls[stage as usize] = reason;
        let mut s = self.status.lock().unwrap();
        s.local_stall = stalls.iter().flatten().next().cloned();
        match &s.local_stall {
            Some(r) => s.last_error = r.clone(),
            None => s.last_error.clear(),
        }
        self.publish_mode(&mut s, metrics);
    }

    /// Derives the mode shown from the peer side and the local stall; logs
    /// a change and sets the `bsfg_link_mode` gauges.
    fn publish_mode(&self, s: &mut LinkStatus, metrics: &Metrics) {
        let mode = if s.local_stall.is_some() {
            LinkMode::Stalled
        } else {
            s.peer_mode
        };
        if s.mode != mode {
            tracing::warn!(link = %self.config.peer, from = s.mode.as_str(), to = mode.as_str(), reason = %s.last_error, "link mode changed");
            s.mode = mode;
        }
        for m in LinkMode::ALL {
            metrics
                .link_mode
                .get_or_create(&labels(&[
                    ("link", &self.config.peer),
                    ("mode", m.as_str()),
                ]))
                .set(i64::from(m == mode));
        }
    }
}

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

/// Exponential backoff with full jitter.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }
    async fn wait(&mut self) {
        let jittered = self.next.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::time::sleep(jittered).await;
        self.next = (self.next * 2).min(self.max);
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A FetchFacts answer as received.
type Batch = OwnedView<FetchFactsResponseView<'static>>;

async fn fetcher(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    batches: tokio::sync::mpsc::Sender<Batch>,
) {
    let c = &link.config;
    let mut backoff = Backoff::new(c.backoff_min, c.backoff_max);
    // Confirms are cumulative: facts delivered before this fetcher started,
    // or in a response lost with a failed call, were never appended here
    // and must be delivered again before a later confirm could cover them.
    let mut restart_from_frontier = true;
    loop {
        let request = FetchFactsRequest {
            consumer_name: c.consumer.clone(),
            limit: c.batch_limit,
            max_bytes: c.batch_bytes_max,
            wait_ms: c.wait_ms,
            restart_from_frontier,
            ..Default::default()
        };
        {
            let mut f = link.freshness.lock().unwrap();
            if f.drained {
                f.polling_since_ms = Some(crate::store::now_unix_ms());
            }
        }
        let fetched = client.fetch_view(request).await;
        link.freshness.lock().unwrap().polling_since_ms = None;
        match fetched {
            Ok(batch) => {
                restart_from_frontier = false;
                backoff.reset();
                let answer = batch.reborrow();
                let caught_up =
                    answer.last_delivered_offset <= answer.frontier && answer.facts.is_empty();
                {
                    // The facts' times are the peer's clock: on ours, less the skew.
                    let skew_ms = link.record_peer_clock(answer.answered_at_unix_ms, &cx);
                    let now = crate::store::now_unix_ms();
                    let times: Vec<i64> = answer
                        .facts
                        .iter()
                        .filter_map(|f| {
                            f.provenance
                                .as_option()
                                .and_then(|p| p.hops.last())
                                .map(|h| h.appended_at_unix_ms - skew_ms)
                        })
                        .collect();
                    let mut f = link.freshness.lock().unwrap();
                    f.answered_ms = now;
                    f.drained = answer.backlog == 0;
                    f.newest_fetched_ms = times.iter().copied().max().or(f.newest_fetched_ms);
                    if !caught_up {
                        f.in_pipeline
                            .push_back(times.first().copied().unwrap_or(now));
                    }
                }
                let mode = if answer.backlog > u64::from(c.batch_limit) {
                    LinkMode::Reconciliation
                } else {
                    LinkMode::Normal
                };
                link.set_mode(mode, &cx.metrics);
                {
                    let mut s = link.status.lock().unwrap();
                    s.backlog = answer.backlog;
                    s.backlog_reported_at = Some(Instant::now());
                    if s.local_stall.is_none() {
                        s.last_error.clear();
                    }
                }
                link.refresh_lag(Some(&cx.metrics));
                if caught_up {
                    continue;
                }
                if batches.send(batch).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                restart_from_frontier = true;
                link.set_mode(LinkMode::Autonomous, &cx.metrics);
                link.status.lock().unwrap().last_error = format!(
                    "{}: {}",
                    e.code.as_str(),
                    e.message.clone().unwrap_or_default()
                );
                tracing::debug!(link = %c.peer, error = ?e, "fetch failed; backing off");
                link.refresh_lag(Some(&cx.metrics));
                backoff.wait().await;
            }
        }
    }
}

/// Whether a failure is worth retrying (link or local store) rather than a
/// verdict on the fact.
fn retriable(r: &Rejection) -> bool {
    matches!(
        r.code,
        Code::Unavailable | Code::ResourceExhausted | Code::Internal
    )
}

/// A batch as received, with the facts screened in to append and their
/// positions in the batch.
struct Screened {
    received: Batch,
    pending: Vec<crate::store::facts::AppendItem>,
    pending_at: Vec<usize>,
}

/// Screens each fact of each batch (validation, origin, import policy,
/// artifacts), in order; a refusal is audited and passed, a link or store
/// error is retried.
async fn screener(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut batches: tokio::sync::mpsc::Receiver<Batch>,
    screened: tokio::sync::mpsc::Sender<Screened>,
) {
    let mut backoff = Backoff::new(link.config.backoff_min, link.config.backoff_max);
    while let Some(received) = batches.recv().await {
        let batch = received.reborrow();
        let mut pending = Vec::with_capacity(batch.facts.len());
        let mut pending_at = Vec::with_capacity(batch.facts.len());
        for (at, fact) in batch.facts.iter().enumerate() {
            if let Some(item) = screen_until_settled(&link, &client, &cx, fact, &mut backoff).await
            {
                pending.push(item);
                pending_at.push(at);
            }
        }
        backoff.reset();
        if screened
            .send(Screened {
                received,
                pending,
                pending_at,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn appender(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut batches: tokio::sync::mpsc::Receiver<Screened>,
    confirms: tokio::sync::watch::Sender<u64>,
) {
    let c = link.config.clone();
    let mut backoff = Backoff::new(c.backoff_min, c.backoff_max);
    while let Some(Screened {
        received,
        mut pending,
        mut pending_at,
    }) = batches.recv().await
    {
        let batch = received.reborrow();
        // Append the screened facts in one pipelined batch. On a retriable
        // failure, retry from the first failed fact on: what follows it was
        // either refused too or is answered as a duplicate, and JetStream
        // failures of one connection come in order.
        let mut accepted = Vec::new();
        while !pending.is_empty() {
            let ids: Vec<String> = pending
                .iter()
                .map(|i| format!("{}/{}", i.envelope.from_zone, i.envelope.message_id))
                .collect();
            let origin_offsets: Vec<u64> = pending
                .iter()
                .map(|i| i.provenance.as_ref().map(|p| p.origin_offset).unwrap_or(0))
                .collect();
            // The appends take the items (no copy per attempt); a retry
            // screens the facts it needs again from the batch.
            let results = cx
                .store
                .facts
                .append_batch(
                    std::mem::take(&mut pending),
                    crate::store::facts::Order::AsGiven,
                )
                .await;
            let first_retriable = results
                .iter()
                .position(|r| matches!(r, Err(e) if retriable(e)));
            let settled = first_retriable.unwrap_or(results.len());
            // Shown by `bsfg status`: a link stuck on its own zone's store
            // reads "normal" otherwise.
            let retry_reason = first_retriable
                .and_then(|at| results[at].as_ref().err())
                .map(|e| format!("local append: {e}"));
            for ((result, id), origin_offset) in results
                .into_iter()
                .zip(ids)
                .zip(origin_offsets)
                .take(settled)
            {
                match result {
                    Ok(_) => {
                        link.status.lock().unwrap().facts_replicated += 1;
                        cx.metrics
                            .replicated_facts_total
                            .get_or_create(&labels(&[("link", &c.peer)]))
                            .inc();
                        accepted.push(id);
                    }
                    Err(r) => {
                        refuse(
                            &link,
                            &cx,
                            &id,
                            origin_offset,
                            r.reason.to_string(),
                            r.message,
                        )
                        .await
                    }
                }
            }
            pending_at.drain(..settled);
            if pending_at.is_empty() {
                break;
            }
            let reason = retry_reason.unwrap_or_default();
            tracing::warn!(link = %c.peer, remaining = pending_at.len(), error = %reason, "local append failed; retrying");
            link.set_stall(Stage::Append, Some(reason), &cx.metrics);
            backoff.wait().await;
            let mut still_at = Vec::with_capacity(pending_at.len());
            for at in pending_at {
                if let Some(item) =
                    screen_until_settled(&link, &client, &cx, &batch.facts[at], &mut backoff).await
                {
                    pending.push(item);
                    still_at.push(at);
                }
            }
            pending_at = still_at;
        }
        backoff.reset();
        link.set_stall(Stage::Append, None, &cx.metrics);
        if !accepted.is_empty() {
            record_accepted(&link, &cx, &accepted, batch).await;
        }
        // This batch is through: the pipeline's oldest.
        link.freshness.lock().unwrap().in_pipeline.pop_front();
        link.refresh_lag(Some(&cx.metrics));
        // Everything up to last_delivered_offset is durable here (or was
        // refused and audited): confirm it, cumulatively. The confirm runs
        // beside the next batch's append, not before it, so a round trip to
        // the peer does not stall the pipeline.
        confirms.send_modify(|target| *target = (*target).max(batch.last_delivered_offset));
    }
}

/// Confirms the newest durable offset to the peer. Confirms are cumulative,
/// so targets that arrive while one is in flight collapse into the newest;
/// a failed confirm is retried with backoff (if none succeeds, the peer
/// redelivers and the appends answer as duplicates).
async fn confirmer(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut targets: tokio::sync::watch::Receiver<u64>,
) {
    let c = link.config.clone();
    let mut backoff = Backoff::new(c.backoff_min, c.backoff_max);
    let mut confirmed = 0;
    loop {
        let target = *targets.borrow_and_update();
        if target <= confirmed {
            if targets.changed().await.is_err() {
                return;
            }
            continue;
        }
        match client.confirm(&c.consumer, target).await {
            Ok(frontier) => {
                confirmed = target;
                backoff.reset();
                let mut s = link.status.lock().unwrap();
                s.remote_frontier = frontier;
                s.last_confirm_at = Some(Instant::now());
                cx.metrics
                    .frontier_offset
                    .get_or_create(&labels(&[(
                        "consumer",
                        &format!("{}@{}", c.consumer, c.peer),
                    )]))
                    .set(frontier as i64);
            }
            Err(e) => {
                link.status.lock().unwrap().last_error =
                    format!("confirm: {}", e.message.unwrap_or_default());
                backoff.wait().await;
            }
        }
    }
}

/// Audits and counts a fact this zone refuses; the link moves past it.
async fn refuse(
    link: &Link,
    cx: &Context,
    id: &str,
    origin_offset: u64,
    reason: String,
    detail: String,
) {
    cx.metrics
        .crossing_refusals_total
        .get_or_create(&labels(&[
            ("peer", &link.config.peer),
            ("direction", "import"),
            ("reason", &reason),
        ]))
        .inc();
    link.status.lock().unwrap().facts_refused += 1;
    cx.audit
        .record(link.audit_event(
            format!("{id} origin offset {origin_offset}"),
            "refused",
            reason,
            detail,
        ))
        .await;
}

/// `screen`, retried with backoff until it settles: the fact to append, or
/// None if it was refused (and audited). The caller resets the backoff.
async fn screen_until_settled(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    stored: &StoredFactView<'_>,
    backoff: &mut Backoff,
) -> Option<crate::store::facts::AppendItem> {
    loop {
        match screen(link, client, cx, stored).await {
            Ok(item) => {
                link.set_stall(Stage::Screen, None, &cx.metrics);
                return item;
            }
            Err(r) if is_local_store_refusal(&r) => {
                tracing::warn!(link = %link.config.peer, error = %r, "could not store an artifact; retrying");
                link.set_stall(
                    Stage::Screen,
                    Some(format!("local store: {r}")),
                    &cx.metrics,
                );
                backoff.wait().await;
            }
            Err(r) => {
                link.status.lock().unwrap().last_error = r.to_string();
                tracing::warn!(link = %link.config.peer, error = %r, "could not fetch an artifact yet; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Decides whether a pulled fact may enter this zone and makes its
/// artifacts present. `Ok(Some)` to append, `Ok(None)` refused and audited,
/// `Err` retriable (link or local store).
async fn screen(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    stored: &StoredFactView<'_>,
) -> Result<Option<crate::store::facts::AppendItem>, Rejection> {
    let envelope = stored
        .envelope
        .as_option()
        .map(|e| e.to_owned_message())
        .transpose();
    let fact = stored
        .fact
        .as_option()
        .map(|f| f.to_owned_message())
        .transpose();
    let provenance = stored
        .provenance
        .as_option()
        .map(|p| p.to_owned_message())
        .transpose();
    let origin_offset = stored.provenance.as_option().map_or(0, |p| p.origin_offset);
    let (envelope, fact, provenance) = match (envelope, fact, provenance) {
        (Ok(envelope), Ok(fact), Ok(provenance)) => (
            envelope.unwrap_or_default(),
            fact.unwrap_or_default(),
            provenance,
        ),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            let id = format!("offset {}", stored.offset);
            refuse(
                link,
                cx,
                &id,
                origin_offset,
                "undecodable_fact".into(),
                e.to_string(),
            )
            .await;
            return Ok(None);
        }
    };
    let id = format!("{}/{}", envelope.from_zone, envelope.message_id);
    // Defence in depth: the peer should not have served it, but this zone
    // decides for itself.
    if let Err(r) = validate::envelope(&envelope, &cx.zone.limits) {
        refuse(
            link,
            cx,
            &id,
            origin_offset,
            r.reason.to_string(),
            r.message,
        )
        .await;
        return Ok(None);
    }
    let valid = match validate::fact(fact, &cx.zone.limits) {
        Ok(v) => v,
        Err(r) => {
            refuse(
                link,
                cx,
                &id,
                origin_offset,
                r.reason.to_string(),
                r.message,
            )
            .await;
            return Ok(None);
        }
    };
    if !link
        .principal
        .origins
        .iter()
        .any(|o| o == &envelope.from_zone)
    {
        let detail = format!(
            "peer {} may relay origins {:?}, not {}",
            link.principal.name, link.principal.origins, envelope.from_zone
        );
        refuse(
            link,
            cx,
            &id,
            origin_offset,
            "from_zone_not_allowed".into(),
            detail,
        )
        .await;
        return Ok(None);
    }
    let category = cx.zone.category_for_kind(&valid.subject_kind).name.clone();
    let crossing = Crossing {
        category: &category,
        origin_zone: &envelope.from_zone,
        kind: &valid.subject_kind,
        predicate: &valid.fact.predicate,
        fact_bytes: valid.fact.object_json.len(),
    };
    if let Err(p) = link.principal.import.check(&crossing) {
        refuse(
            link,
            cx,
            &id,
            origin_offset,
            p.reason.to_string(),
            p.message,
        )
        .await;
        return Ok(None);
    }
    for attachment in &valid.fact.attachments {
        let verdict = match link
            .principal
            .import
            .check_object_size(attachment.size_bytes)
        {
            Err(p) => Err(Rejection::new(Code::PermissionDenied, p.reason, p.message)),
            Ok(()) => pull_object(link, client, cx, attachment).await,
        };
        match verdict {
            Ok(()) => {}
            Err(r) if retriable(&r) => return Err(r),
            Err(r) => {
                refuse(
                    link,
                    cx,
                    &id,
                    origin_offset,
                    r.reason.to_string(),
                    r.message,
                )
                .await;
                return Ok(None);
            }
        }
    }
    Ok(Some(crate::store::facts::AppendItem {
        envelope,
        valid,
        provenance,
    }))
}

/// Makes an attachment present locally: skipped when an object with the
/// same digest is already there. Otherwise pulled in one pass: each chunk
/// is appended to a spool file (so an interrupted pull resumes from its
/// length) and streamed straight into the local object store, which
/// computes and checks the digest and size as it stores; on any failure
/// nothing is stored and the spool keeps what arrived.
async fn pull_object(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    a: &AttachmentRef,
) -> Result<(), Rejection> {
    if let Ok(local) = cx.store.objects.info(&a.bucket, &a.key).await
        && local.digest == a.digest
        && local.size_bytes == a.size_bytes
    {
        return Ok(());
    }
    validate::digest("attachment digest", &a.digest)?;
    let spool = link.config.spool_dir.join(a.digest.replace(':', "-"));
    let have = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
    if have > a.size_bytes {
        // Not a prefix of this object: start again.
        let _ = std::fs::remove_file(&spool);
        return Err(Rejection::new(
            Code::Unavailable,
            "object_spool_reset",
            format!(
                "{}/{}: the spool was longer than the object; pulling again",
                a.bucket, a.key
            ),
        ));
    }
    let (media_type_tx, media_type_rx) = tokio::sync::oneshot::channel::<String>();
    // The store reads what an earlier attempt spooled, then the chunks as
    // they arrive; a few chunks in flight bound the memory.
    let spooled = tokio::fs::File::open(&spool).await.ok().map(|f| {
        tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(f, have),
            crate::store::objects::CHUNK_BYTES,
        )
        .map(|r: std::io::Result<bytes::Bytes>| r.map_err(spool_error))
    });
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Rejection>>(4);
    let arriving = futures::stream::unfold(chunks_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let chunks = Box::pin(futures::stream::iter(spooled).flatten().chain(arriving));
    let spool_path = &spool;
    // Owns the sender: when the pull ends, the store sees the end (or the
    // error) of the chunks.
    let pull = async move {
        let pulled = pull_into(
            link,
            client,
            cx,
            a,
            spool_path,
            have,
            &chunks_tx,
            media_type_tx,
        )
        .await;
        // A failed pull must fail the store too (nothing stored), never end
        // it early as if the object were complete.
        if let Err(r) = &pulled {
            let _ = chunks_tx.send(Err(r.clone())).await;
        }
        pulled
    };
    // The object keeps the media type declared where it was uploaded, as
    // the origin's GetObject reports it (known before the first chunk);
    // the fact's attachment reference says it otherwise (nothing left to
    // pull, or an origin that did not keep it).
    let store = async move {
        let origin = media_type_rx
            .await
            .ok()
            .filter(|m| !m.is_empty() && validate::media_type("media_type", m).is_ok());
        let header = crate::store::objects::PutHeader {
            bucket: a.bucket.clone(),
            key: a.key.clone(),
            media_type: origin.unwrap_or_else(|| a.media_type.clone()),
            expected_digest: a.digest.clone(),
            expected_size_bytes: a.size_bytes,
        };
        cx.store.objects.put(header, chunks).await
    };
    let (pulled, stored) = tokio::join!(pull, store);
    let stored = match (pulled, stored) {
        (_, Ok(stored)) => stored,
        // The pull broke (and failed the store with it): resume later.
        (Err(p), Err(_)) if p.reason != STORE_STOPPED => return Err(p),
        (_, Err(r)) if r.code == Code::DataLoss || r.code == Code::InvalidArgument => {
            // All bytes arrived, but not the announced object: pull afresh.
            let _ = std::fs::remove_file(&spool);
            return Err(Rejection::new(
                Code::Unavailable,
                "object_digest_mismatch",
                format!(
                    "{}/{} did not arrive as {}: {}; pulling again",
                    a.bucket, a.key, a.digest, r.message
                ),
            ));
        }
        // The local store refused or failed on its own.
        (_, Err(r)) => return Err(r),
    };
    let _ = std::fs::remove_file(&spool);
    link.status.lock().unwrap().objects_pulled += 1;
    tracing::info!(link = %link.config.peer, bucket = %a.bucket, key = %a.key, digest = %stored.digest, "artifact pulled");
    Ok(())
}

const STORE_STOPPED: &str = "local_store_stopped";

fn spool_error(e: std::io::Error) -> Rejection {
    Rejection::new(Code::Unavailable, "spool_unavailable", e.to_string())
}

/// Pulls the object from byte `have` on, appending each chunk to the spool
/// file and forwarding it to the local store. The media type the origin
/// reports goes to `media_type_tx` before any chunk (the store waits for it;
/// it is dropped unsent if none arrives first).
#[allow(clippy::too_many_arguments)]
async fn pull_into(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    a: &AttachmentRef,
    spool: &std::path::Path,
    have: u64,
    chunks_tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, Rejection>>,
    media_type_tx: tokio::sync::oneshot::Sender<String>,
) -> Result<(), Rejection> {
    if have == a.size_bytes {
        return Ok(());
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool)
        .map_err(spool_error)?;
    let timeout = Duration::from_secs(60 + a.size_bytes / (1024 * 1024));
    let media_type_tx = std::sync::Mutex::new(Some(media_type_tx));
    let on_info = |info: &bsfg_proto::bsfg::v1::ObjectInfo| {
        if let Some(tx) = media_type_tx.lock().unwrap().take() {
            let _ = tx.send(info.media_type.clone());
        }
    };
    let pulled = client
        .get_object_with(&a.bucket, &a.key, have, timeout, on_info, |_, chunk| {
            // Never leave the store waiting for a media type while chunks
            // fill the channel.
            drop(media_type_tx.lock().unwrap().take());
            let written = file.write_all(&chunk);
            let chunks_tx = chunks_tx.clone();
            async move {
                written?;
                chunks_tx
                    .send(Ok(bytes::Bytes::from(chunk)))
                    .await
                    .map_err(|_| anyhow::anyhow!(STORE_STOPPED))
            }
        })
        .await;
    let _ = file.sync_data();
    pulled.map(|_| ()).map_err(|e| {
        if e.to_string().contains(STORE_STOPPED) {
            return Rejection::new(
                Code::Unavailable,
                STORE_STOPPED,
                "the local object store stopped reading",
            );
        }
        let bytes_now = std::fs::metadata(spool).map(|m| m.len()).unwrap_or(0);
        cx.metrics
            .object_resume_bytes_total
            .get_or_create(&labels(&[("link", &link.config.peer)]))
            .inc_by(bytes_now.saturating_sub(have));
        Rejection::new(
            Code::Unavailable,
            "object_pull_interrupted",
            format!("{}/{} at byte {bytes_now}: {e}", a.bucket, a.key),
        )
    })
}

/// Most bytes of fact keys named by one audit record. An audit record is a
/// fact like any other (object_json ≤ 192 KiB by default); a batch of up to
/// 10,000 keys of up to 128-byte message ids, doubled by JSON escaping in
/// the worst case, would not fit in one, and a record that does not fit is
/// not stored. 48 KiB, doubled, leaves room for the other fields.
const AUDIT_KEYS_BYTES_MAX: usize = 48 * 1024;

/// Audits the accepted facts of a batch: one record per chunk of keys.
async fn record_accepted(
    link: &Link,
    cx: &Context,
    ids: &[String],
    batch: &FetchFactsResponseView<'_>,
) {
    let chunks = key_chunks(ids, AUDIT_KEYS_BYTES_MAX);
    let parts = chunks.len();
    for (part, (keys, count)) in chunks.into_iter().enumerate() {
        let detail = if parts == 1 {
            format!(
                "{count} facts through peer offset {}",
                batch.last_delivered_offset
            )
        } else {
            format!(
                "{count} facts (part {} of {parts}) through peer offset {}",
                part + 1,
                batch.last_delivered_offset
            )
        };
        cx.audit
            .record(link.audit_event(keys, "accepted", "replicated".into(), detail))
            .await;
    }
}

/// `ids` joined by spaces, in order, in chunks of at most `bytes_max`
/// bytes (an id longer than that gets a chunk of its own); each with the
/// number of ids it holds.
fn key_chunks(ids: &[String], bytes_max: usize) -> Vec<(String, usize)> {
    let mut chunks: Vec<(String, usize)> = Vec::new();
    for id in ids {
        match chunks.last_mut() {
            Some((keys, count)) if keys.len() + 1 + id.len() <= bytes_max => {
                keys.push(' ');
                keys.push_str(id);
                *count += 1;
            }
            _ => chunks.push((id.clone(), 1)),
        }
    }
    chunks
}

/// Publishes per-link age of the last confirmation (a link is healthy only
/// if confirmations keep coming) and the lag, every second: the lag keeps
/// growing while a link is cut, when no fetch or append updates it.
pub async fn publish_confirm_age(replicator: Arc<Replicator>, metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        for link in &replicator.links {
            link.refresh_lag(Some(&metrics));
            let age = link
                .status()
                .last_confirm_at
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(f64::INFINITY);
            metrics
                .last_confirm_age_seconds
                .get_or_create(&labels(&[("link", &link.config.peer)]))
                .set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Freshness, key_chunks};

    #[test]
    fn lag_is_the_age_of_the_oldest_fact_that_may_be_missing() {
        let mut f = Freshness {
            in_pipeline: Default::default(),
            answered_ms: 10_000,
            drained: true,
            newest_fetched_ms: None,
            polling_since_ms: Some(10_000),
        };
        // Caught up and polling: 0 while the poll is in time (wait 1 s + grace).
        assert_eq!(f.lag_ms(12_900, 1_000), 0);
        // An overdue poll, or none (the link is cut): since the last answer.
        assert_eq!(f.lag_ms(13_500, 1_000), 3_500);
        f.polling_since_ms = None;
        assert_eq!(f.lag_ms(30_000, 1_000), 20_000);
        // A batch in the pipeline: the age of its first fact.
        f.in_pipeline.push_back(29_000);
        assert_eq!(f.lag_ms(30_000, 1_000), 1_000);
        // Appended, but the answer left facts at the peer: the newest fetched.
        f.in_pipeline.clear();
        f.drained = false;
        f.newest_fetched_ms = Some(29_500);
        assert_eq!(f.lag_ms(30_000, 1_000), 500);
        // Never negative (clocks of two nodes).
        assert_eq!(f.lag_ms(29_000, 1_000), 0);
    }

    #[test]
    fn audited_keys_are_chunked_in_order_within_the_bound() {
        let ids: Vec<String> = (0..1000)
            .map(|i| format!("plant-a/{}-{i}", "\"".repeat(100)))
            .collect();
        let chunks = key_chunks(&ids, 10_000);
        assert!(
            chunks.len() > 1,
            "1000 ids of ~110 bytes need several chunks of 10,000 bytes"
        );
        assert!(
            chunks.iter().all(|(keys, _)| keys.len() <= 10_000),
            "every chunk within the bound"
        );
        let rejoined: Vec<&str> = chunks
            .iter()
            .flat_map(|(keys, _)| keys.split(' '))
            .collect();
        assert_eq!(
            rejoined,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "every id once, in order"
        );
        assert_eq!(chunks.iter().map(|(_, n)| n).sum::<usize>(), ids.len());
        assert_eq!(
            key_chunks(&ids[..3], 10_000).len(),
            1,
            "a small batch is one record"
        );
        assert_eq!(key_chunks(&[], 10_000), vec![]);
    }
}
