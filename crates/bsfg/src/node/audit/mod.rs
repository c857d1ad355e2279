//! The crossing audit: every crossing and every refusal becomes a fact in
//! the zone's own `audit` category (subject kind `audit`), so operators read
//! it with the same tools as any other fact (`bsfg fetch` on an audit
//! consumer) and it is retained, replicated and confirmed like one.
//!
//! The trail can be neither flooded nor evaded: what a record copies from a
//! request is bounded; refusals are rate-limited per identity and the rest
//! summarized with counts (`limiter`); only the node writes the audit kind
//! (AppendFact refuses it: `kind_reserved`); a record whose append fails is
//! retried from a bounded buffer, and one that cannot be kept is counted
//! (`bsfg_audit_records_dropped`) and logged with its content.

pub mod limiter;

use crate::metrics::Metrics;
use crate::store::commit::GroupCommit;
use crate::store::now_unix_ms;
use bsfg_domain::bounded::{MESSAGE_BYTES_MAX, bounded_owned, bounded_to};
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Fact};
use limiter::{RefusalLimiter, Verdict};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

/// One audited decision.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    /// Principal name, or "unknown".
    pub principal: String,
    /// Certificate names presented.
    pub identity: String,
    pub fingerprint: String,
    pub rpc: &'static str,
    /// message_id, object digest, consumer or key concerned.
    pub subject_key: String,
    /// accepted | refused | withheld | quarantined | refusals_summarized |
    /// operated (an operator's act, e.g. a replay)
    pub decision: &'static str,
    pub reason: String,
    pub detail: String,
}

impl AuditEvent {
    /// A refusal of an identified caller's request.
    pub fn refusal(
        caller: &crate::node::auth::Caller,
        rpc: &'static str,
        subject_key: &str,
        r: &bsfg_domain::Rejection,
    ) -> Self {
        Self::about(
            caller,
            rpc,
            "refused",
            subject_key.to_string(),
            r.reason.to_string(),
            r.message.clone(),
        )
    }

    /// A refused caller whose certificate names no principal.
    pub fn unidentified(
        rpc: &'static str,
        subject_key: String,
        u: &crate::node::auth::Unidentified,
    ) -> Self {
        Self {
            principal: "unknown".into(),
            identity: u.names.join(","),
            fingerprint: u.fingerprint.clone(),
            rpc,
            subject_key,
            decision: "refused",
            reason: u.rejection.reason.to_string(),
            detail: u.rejection.message.clone(),
        }
    }

    /// A decision about an identified caller's request.
    pub fn about(
        caller: &crate::node::auth::Caller,
        rpc: &'static str,
        decision: &'static str,
        subject_key: String,
        reason: String,
        detail: String,
    ) -> Self {
        Self {
            principal: caller.principal.name.clone(),
            identity: caller.identity.clone(),
            fingerprint: caller.fingerprint.clone(),
            rpc,
            subject_key,
            decision,
            reason,
            detail,
        }
    }
}

/// Records whose first append failed, waiting to be retried: at most this
/// many (about 1 KiB each). Past it a record is dropped, counted and logged
/// with its content.
pub const RETRY_RECORDS_MAX: usize = 4096;
/// How often suppressed refusals are summarized into one record each.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// An audit record ready to append (its message id fixed, so a retry is
/// idempotent).
struct Record {
    envelope: Envelope,
    valid: ValidFact,
    /// The record's content, for the log line if it is dropped.
    object_json: String,
}

pub struct Audit {
    zone: String,
    /// Records append with the next group commit, like AppendFact calls.
    appends: Arc<GroupCommit>,
    metrics: Arc<Metrics>,
    limiter: Mutex<RefusalLimiter>,
    retry: tokio::sync::mpsc::Sender<Record>,
}

fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if t.is_empty() { "unknown".into() } else { t }
}

impl Audit {
    /// The audit and its two tasks (retrying failed appends, summarizing
    /// suppressed refusals); they stop when their handles are aborted.
    pub fn start(
        zone: &str,
        appends: Arc<GroupCommit>,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let (retry, pending) = tokio::sync::mpsc::channel(RETRY_RECORDS_MAX);
        let audit = Arc::new(Self {
            zone: zone.to_string(),
            appends,
            metrics,
            limiter: Mutex::default(),
            retry,
        });
        let tasks = vec![
            tokio::spawn(audit.clone().retry_failed(pending)),
            tokio::spawn(audit.clone().summarize()),
        ];
        (audit, tasks)
    }

    /// Records the event. Refusals are rate-limited per identity (see
    /// `limiter`); a record whose append fails is retried in the
    /// background; one that cannot be kept is counted and logged with its
    /// content. The answer given to the caller never waits for a retry.
    pub async fn record(&self, event: AuditEvent) {
        if event.decision == "refused" {
            let identity = identity_key(&event);
            let verdict =
                self.limiter
                    .lock()
                    .unwrap()
                    .admit(&identity, &event.reason, Instant::now());
            if verdict == Verdict::Suppress {
                self.metrics.audit_refusals_summarized_total.inc();
                return;
            }
        }
        let Some(record) = self.build(event) else {
            return;
        };
        match self
            .appends
            .append(record.envelope.clone(), record.valid.clone(), None)
            .await
        {
            Ok(_) => {}
            Err(r) if retriable(&r) => {
                tracing::warn!(error = %r, "could not append an audit record; retrying it in the background");
                if let Err(full) = self.retry.try_send(record) {
                    let record = match full {
                        TrySendError::Full(r) | TrySendError::Closed(r) => r,
                    };
                    self.dropped(&record, "the retry buffer is full");
                }
            }
            Err(r) => self.dropped(&record, &r.to_string()),
        }
        self.metrics
            .audit_records_pending
            .set((RETRY_RECORDS_MAX - self.retry.capacity()) as i64);
    }

    /// The record of an event, its text bounded (`bsfg_domain::bounded`):
    /// the certificate names here, the key by the caller (it is cut again
    /// only past `MESSAGE_BYTES_MAX`, so a bounded key keeps its length and
    /// hash), the detail as a message.
    fn build(&self, mut event: AuditEvent) -> Option<Record> {
        event.identity = bounded_owned(event.identity);
        for text in [&mut event.subject_key, &mut event.detail] {
            if text.len() > MESSAGE_BYTES_MAX {
                *text = bounded_to(text, MESSAGE_BYTES_MAX).into_owned();
            }
        }
        let now = now_unix_ms();
        let object = serde_json::json!({
            "principal": event.principal,
            "identity": event.identity,
            "certificate_sha256": event.fingerprint,
            "rpc": event.rpc,
            "key": event.subject_key,
            "decision": event.decision,
            "reason": event.reason,
            "detail": event.detail,
            "time_unix_ms": now,
        });
        let predicate = match event.decision {
            "accepted" => "crossing_accepted",
            "withheld" => "crossing_withheld",
            "quarantined" => "record_quarantined",
            "refusals_summarized" => "refusals_summarized",
            "operated" => "operator_action",
            _ => "access_refused",
        };
        let envelope = Envelope {
            message_id: format!("audit-{now}-{}", hex::encode(rand::random::<[u8; 8]>())),
            from_zone: self.zone.clone(),
            to_zone: self.zone.clone(),
            produced_at_unix_ms: now,
            ..Default::default()
        };
        let object_json = object.to_string();
        let fact = Fact {
            subject: format!("audit:{}/{}", token(&self.zone), token(&event.principal)),
            predicate: predicate.into(),
            object_json: object_json.clone(),
            ..Default::default()
        };
        tracing::info!(audit = true, principal = %event.principal, identity = %event.identity, rpc = event.rpc, key = %event.subject_key, decision = event.decision, reason = %event.reason, "audit");
        match bsfg_domain::validate::fact(fact, &bsfg_domain::limits::Limits::default()) {
            Ok(valid) => Some(Record {
                envelope,
                valid,
                object_json,
            }),
            Err(e) => {
                self.metrics.audit_records_dropped_total.inc();
                tracing::error!(error = %e, record = %object_json, "audit record invalid; not stored");
                None
            }
        }
    }

    fn dropped(&self, record: &Record, why: &str) {
        self.metrics.audit_records_dropped_total.inc();
        tracing::error!(why, record = %record.object_json, "audit record dropped");
    }

    /// Appends failed records again, in order, with backoff, until each is
    /// stored or refused for good.
    async fn retry_failed(self: Arc<Self>, mut pending: tokio::sync::mpsc::Receiver<Record>) {
        while let Some(record) = pending.recv().await {
            let mut backoff = RETRY_BACKOFF_MIN;
            loop {
                match self
                    .appends
                    .append(record.envelope.clone(), record.valid.clone(), None)
                    .await
                {
                    Ok(_) => break,
                    Err(r) if retriable(&r) => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    }
                    Err(r) => {
                        self.dropped(&record, &r.to_string());
                        break;
                    }
                }
            }
            self.metrics.audit_records_pending.set(pending.len() as i64);
        }
    }

    /// Every `SUMMARY_INTERVAL`, one record per identity whose refusals
    /// were suppressed, counting them by reason.
    async fn summarize(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SUMMARY_INTERVAL);
        loop {
            ticks.tick().await;
            let suppressed = self.limiter.lock().unwrap().take_suppressed(Instant::now());
            for s in suppressed {
                let detail = format!(
                    "{} further refusals of this identity in {:.1} s, by reason: {:?}",
                    s.count,
                    s.last.saturating_duration_since(s.first).as_secs_f64(),
                    s.by_reason
                );
                let event = AuditEvent {
                    principal: "summary".into(),
                    identity: s.identity,
                    rpc: "(several)",
                    decision: "refusals_summarized",
                    reason: "rate_limited".into(),
                    detail,
                    ..Default::default()
                };
                Box::pin(self.record(event)).await;
            }
        }
    }
}

/// Whom a refusal is counted against: the principal, else the certificate.
fn identity_key(event: &AuditEvent) -> String {
    if event.principal != "unknown" {
        return format!("principal:{}", event.principal);
    }
    if !event.fingerprint.is_empty() {
        return format!("certificate:{}", event.fingerprint);
    }
    format!("names:{}", bounded_to(&event.identity, 256))
}

/// A store failure that may pass (unavailable, full for now).
fn retriable(r: &Rejection) -> bool {
    matches!(
        r.code,
        Code::Unavailable | Code::ResourceExhausted | Code::Internal
    )
}
