//! What the stages of a link share: what an operator sees of it
//! ([`LinkStatus`]), its mode (the peer side's, or stalled on this zone's
//! own store), the peer's clock and the lag; and its audit records.

use super::Context;
use super::freshness::Freshness;
use crate::config::{PrincipalConfig, UpstreamConfig};
use crate::metrics::{Metrics, labels};
use crate::node::audit::AuditEvent;
use bsfg_domain::clock::{SkewEstimate, WindowedMax};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// One upstream peer's link: its configuration and what its stages share.
pub struct Link {
    pub config: UpstreamConfig,
    /// The link's name in status, metrics and logs: the peer, or
    /// `<peer>/<consumer>` for a further link to a peer (see `start`).
    pub name: String,
    pub(super) principal: Arc<PrincipalConfig>,
    /// The peer's server certificate (mTLS only), for the audit record.
    presented: Option<Arc<crate::tls::client::PresentedCertificate>>,
    pub(super) status: Mutex<LinkStatus>,
    pub(super) freshness: Mutex<Freshness>,
    /// Per [`Stage`]: why this zone's store refuses it, while it does.
    stalls: Mutex<[Option<String>; 2]>,
    /// The peer's clock against ours, from its answers' `answered_at`.
    peer_clock: Mutex<PeerClock>,
    /// The lag's maximum over [`LAG_WATERMARK_WINDOW_MS`].
    lag_window: Mutex<WindowedMax>,
    /// The origin of the monotonic times given to `lag_window`.
    started: Instant,
    /// Where the stages' retry jitter comes from (logged at start, so a
    /// retry schedule can be replayed).
    pub(super) jitter_seed: u64,
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
pub(super) enum Stage {
    /// Artifacts pulled into the object store.
    Screen = 0,
    /// Facts appended.
    Append = 1,
}

impl Link {
    /// The link to `config`'s peer as it starts: not connected yet.
    pub(super) fn new(
        config: UpstreamConfig,
        name: String,
        principal: Arc<PrincipalConfig>,
        presented: Option<Arc<crate::tls::client::PresentedCertificate>>,
        jitter_seed: u64,
    ) -> Self {
        let status = LinkStatus {
            peer: name.clone(),
            url: config.client_urls(),
            consumer: config.consumer.clone(),
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
        };
        Link {
            config,
            name,
            principal,
            presented,
            status: Mutex::new(status),
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
            jitter_seed,
        }
    }

    /// A retry backoff for one of the link's stages (`stage` keeps the
    /// stages' schedules apart).
    pub(super) fn backoff(&self, stage: u64) -> super::backoff::Backoff {
        super::backoff::Backoff::new(
            self.config.backoff_min,
            self.config.backoff_max,
            self.jitter_seed ^ stage,
        )
    }

    /// An audit record of this link's peer (the puller's side of a crossing).
    pub(super) fn audit_event(
        &self,
        subject_key: String,
        decision: &'static str,
        reason: String,
        detail: String,
    ) -> AuditEvent {
        AuditEvent {
            principal: self.principal.name.clone(),
            identity: self.config.client_urls(),
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
    pub(super) fn refresh_lag(&self, metrics: Option<&Metrics>) {
        let lag = self.freshness.lock().unwrap().lag_ms(
            crate::store::now_unix_ms(),
            i64::try_from(self.config.wait.as_millis()).unwrap_or(i64::MAX),
        ) as f64
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
            let l = labels(&[("link", &self.name)]);
            metrics.replication_lag_seconds.get_or_create(&l).set(lag);
            metrics
                .replication_lag_high_watermark
                .get_or_create(&l)
                .set(s.lag_seconds_high_watermark);
        }
    }

    /// Records the peer's clock from an answer that arrived now; returns
    /// the skew estimate (ms, peer minus ours) to convert its times.
    pub(super) fn record_peer_clock(&self, answered_at_ms: i64, cx: &Context) -> i64 {
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
                tracing::warn!(
                    link = %self.name,
                    skew_ms,
                    skew_max_ms,
                    "the peer's clock disagrees with this node's beyond clock_skew_max: lags are corrected by the skew; fix the time source (NTP) of one of them"
                );
            } else {
                tracing::info!(
                    link = %self.name,
                    skew_ms,
                    "the peer's clock agrees with this node's again"
                );
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
    pub(super) fn set_mode(&self, mode: LinkMode, metrics: &Metrics) {
        assert_ne!(mode, LinkMode::Stalled, "a stall is local: set_stall");
        let mut s = self.status.lock().unwrap();
        s.peer_mode = mode;
        self.publish_mode(&mut s, metrics);
    }

    /// Records whether this zone's store refuses what `stage` asks of it
    /// (the reason) or takes it again (None). The screener (artifacts) and
    /// the appender (facts) stall apart; the link is stalled while either is.
    pub(super) fn set_stall(&self, stage: Stage, reason: Option<String>, metrics: &Metrics) {
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
            tracing::warn!(
                link = %self.name,
                from = s.mode.as_str(),
                to = mode.as_str(),
                reason = %s.last_error,
                "link mode changed"
            );
            s.mode = mode;
        }
        for m in LinkMode::ALL {
            metrics
                .link_mode
                .get_or_create(&labels(&[("link", &self.name), ("mode", m.as_str())]))
                .set(i64::from(m == mode));
        }
    }
}
