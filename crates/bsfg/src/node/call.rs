//! What every RPC of the boundary and operations services does around its
//! own logic, written once:
//!
//! 1. the caller identified before anything else is done for it (an
//!    identity that names no principal is refused, counted and audited —
//!    the gate refuses it first; this is the second line);
//! 2. the call timed from the handler's start;
//! 3. a refusal of an identified caller audited and counted, by the
//!    service's policy ([`Audited`]);
//! 4. one outcome log line (`rpc`, `key`, `principal`, `elapsed_us`,
//!    `outcome`, and `reason` and `message` for a refusal);
//! 5. a [`Rejection`] mapped to a Connect error (`errors::to_connect`).
//!
//! A handler keeps only its own logic and its own metrics.

use crate::metrics::{Metrics, labels};
use crate::node::audit::{Audit, AuditEvent};
use crate::node::auth::{Auth, Caller, Unidentified};
use crate::node::errors::to_connect;
use bsfg_domain::bounded::{MESSAGE_BYTES_MAX, bounded_to};
use bsfg_domain::{Code, Rejection};
use connectrpc::{ConnectError, RequestContext};
use std::sync::Arc;
use std::time::Instant;

/// Which refusals of an identified caller go on the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    /// Authorization and policy refusals (`permission_denied`): the
    /// boundary's data calls, where bad input is the caller's own affair.
    Authorization,
    /// Every refusal but the node's own failures: operations calls, where
    /// a refused replay is worth a trail.
    EveryRefusal,
}

/// Where a service's refusals are counted and audited.
pub struct Refusals {
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub audited: Audited,
}

/// One RPC in progress, its caller identified.
pub struct Call<'a> {
    refusals: &'a Refusals,
    rpc: &'static str,
    /// From the request, bounded where it was built (it also goes into
    /// audit records).
    key: String,
    started: Instant,
    caller: Caller,
    /// Extra words for the outcome line of a call that succeeded.
    detail: Option<String>,
}

impl Refusals {
    /// Identifies the caller of `rpc` (`key` names what it is about;
    /// `started` is when the handler began), or refuses it.
    pub async fn identify(
        &self,
        auth: &Auth,
        ctx: &RequestContext,
        rpc: &'static str,
        key: String,
        started: Instant,
    ) -> Result<Call<'_>, ConnectError> {
        match auth.caller(ctx) {
            Ok(caller) => Ok(Call {
                refusals: self,
                rpc,
                key,
                started,
                caller,
                detail: None,
            }),
            Err(unidentified) => Err(self.unidentified(rpc, &key, unidentified).await),
        }
    }

    async fn unidentified(&self, rpc: &'static str, key: &str, u: Unidentified) -> ConnectError {
        self.metrics
            .access_refusals_total
            .get_or_create(&labels(&[("reason", u.rejection.reason.as_str())]))
            .inc();
        self.audit
            .record(AuditEvent::unidentified(rpc, key.to_string(), &u))
            .await;
        to_connect(u.rejection)
    }

    /// Counts an authorization refusal and audits what the policy says.
    async fn refused(&self, caller: &Caller, rpc: &'static str, key: &str, r: &Rejection) {
        let audited = match self.audited {
            Audited::Authorization => r.code == Code::PermissionDenied,
            Audited::EveryRefusal => !is_node_failure(r) && r.code != Code::DeadlineExceeded,
        };
        if audited {
            self.metrics.count_access_refusal(r);
            self.audit
                .record(AuditEvent::refusal(caller, rpc, key, r))
                .await;
        }
    }
}

impl Call<'_> {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Adds `detail` to the outcome line if the call succeeds.
    pub fn detail(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    /// Audits and counts, by the service's policy, the refusal of one part
    /// of the call (a fact of an AppendFacts request, named by `key`),
    /// without ending it.
    pub async fn refused_part(&self, key: &str, r: &Rejection) {
        self.refusals.refused(&self.caller, self.rpc, key, r).await;
    }

    /// Ends the call with `result`: a refusal audited and counted, the
    /// outcome logged, a rejection mapped.
    pub async fn finish<T>(&self, result: Result<T, Rejection>) -> Result<T, ConnectError> {
        if let Err(r) = &result {
            self.refusals
                .refused(&self.caller, self.rpc, &self.key, r)
                .await;
        }
        self.log(&result);
        result.map_err(to_connect)
    }

    /// The outcome line. The key and message are cut again at
    /// `MESSAGE_BYTES_MAX` (a guard that leaves a bounded key as it is): a
    /// line never carries a request's full size.
    fn log<T>(&self, result: &Result<T, Rejection>) {
        let rpc = self.rpc;
        let elapsed_us = self.started.elapsed().as_micros() as u64;
        let bounded_key = bounded_to(&self.key, MESSAGE_BYTES_MAX);
        let key: &str = &bounded_key;
        let principal = self.caller.principal.name.as_str();
        let message = |r: &Rejection| bounded_to(&r.message, MESSAGE_BYTES_MAX).into_owned();
        match result {
            Ok(_) => match &self.detail {
                Some(detail) => {
                    tracing::info!(rpc, key, principal, elapsed_us, outcome = "ok", detail)
                }
                None => tracing::info!(rpc, key, principal, elapsed_us, outcome = "ok"),
            },
            Err(r) if is_node_failure(r) => {
                tracing::error!(rpc, key, principal, elapsed_us, outcome = "error", reason = r.reason.as_str(), message = %message(r))
            }
            Err(r) => {
                tracing::info!(rpc, key, principal, elapsed_us, outcome = "rejected", reason = r.reason.as_str(), message = %message(r))
            }
        }
    }
}

/// The node's own failures, not the caller's: logged as errors, never
/// audited as the caller's refusal.
pub(crate) fn is_node_failure(r: &Rejection) -> bool {
    matches!(r.code, Code::Unavailable | Code::Internal | Code::DataLoss)
}
