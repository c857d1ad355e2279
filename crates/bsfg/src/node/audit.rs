//! The crossing audit: every crossing and every refusal becomes a fact in
//! the zone's own `audit` category (subject kind `audit`), so operators read
//! it with the same tools as any other fact (`bsfg fetch` on an audit
//! consumer) and it is retained, replicated and confirmed like one.

use crate::store::{FactLog, now_unix_ms};
use bsfg_domain::bounded::{MESSAGE_BYTES_MAX, bounded_owned, bounded_to};
use bsfg_proto::bsfg::v1::{Envelope, Fact};
use std::sync::Arc;

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
    /// accepted | refused | withheld | quarantined
    pub decision: &'static str,
    pub reason: String,
    pub detail: String,
}

pub struct Audit {
    zone: String,
    facts: Arc<FactLog>,
}

fn token(s: &str) -> String {
    let t: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).take(64).collect();
    if t.is_empty() { "unknown".into() } else { t }
}

impl Audit {
    pub fn new(zone: &str, facts: Arc<FactLog>) -> Self {
        Self { zone: zone.to_string(), facts }
    }

    /// Appends the event. A failure to audit is logged, never hidden, and
    /// does not change the answer given to the caller.
    /// Request-controlled text is bounded first (`bsfg_domain::bounded`),
    /// in the log line and in the record: the certificate names here, the
    /// key by the caller (it is cut again only past `MESSAGE_BYTES_MAX`, so
    /// a bounded key keeps its length and hash), the detail as a message.
    pub async fn record(&self, mut event: AuditEvent) {
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
            _ => "access_refused",
        };
        let envelope = Envelope {
            message_id: format!("audit-{now}-{}", hex::encode(rand::random::<[u8; 8]>())),
            from_zone: self.zone.clone(),
            to_zone: self.zone.clone(),
            produced_at_unix_ms: now,
            ..Default::default()
        };
        let fact = Fact {
            subject: format!("audit:{}/{}", token(&self.zone), token(&event.principal)),
            predicate: predicate.into(),
            object_json: object.to_string(),
            ..Default::default()
        };
        tracing::info!(audit = true, principal = %event.principal, identity = %event.identity, rpc = event.rpc, key = %event.subject_key, decision = event.decision, reason = %event.reason, "audit");
        let valid = match bsfg_domain::validate::fact(fact, &bsfg_domain::limits::Limits::default()) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "audit record invalid; not stored");
                return;
            }
        };
        if let Err(e) = self.facts.append(envelope, valid, None).await {
            tracing::error!(error = %e, "could not append the audit record");
        }
    }
}
