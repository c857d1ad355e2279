//! AppendFacts: several facts in one request, each answered as its own
//! AppendFact would be.
//!
//! Why: at `sync_interval: always` a fact's cost on a 2-CPU node is mostly
//! its RPC (HTTP/2 stream, framing, tasks), not its commit; a producer that
//! has many facts at once (a historian's backlog, a batch record's steps)
//! pays that once per request here. The facts join the group commit as one
//! unit (`store::commit`), so they are stored in request order and share a
//! durable commit with whatever else is queued.
//!
//! Bounds: at most [`FACTS_PER_REQUEST_MAX`] facts and the route's message
//! size (`boundary::routes`), checked before anything is stored; one outcome
//! log line per request, and per refusal reason one audit record (the first
//! fact refused for it, with the count), so a request cannot make the node
//! log or audit a line per fact.

use super::service::{Boundary, append_timed_out};
use crate::metrics::labels;
use crate::node::call::Call;
use bsfg_domain::bounded::{MESSAGE_BYTES_MAX, bounded_owned};
use bsfg_domain::{Reason, Rejection};
use bsfg_proto::bsfg::v1::*;
use connectrpc::{ConnectError, RequestContext, Response, ServiceRequest};
use std::collections::BTreeMap;
use std::time::Instant;

/// Most facts in one AppendFacts request: about 300 KB of typical facts,
/// four group-commit batches; a larger backlog is sent as several requests.
pub const FACTS_PER_REQUEST_MAX: usize = 1000;

impl Boundary {
    /// The AppendFacts handler (see the module documentation).
    pub(super) async fn append_facts_call(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, AppendFactsRequest>,
    ) -> Result<Response<AppendFactsResponse>, ConnectError> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let call = (self.refusals)
            .identify(
                &self.auth,
                &ctx,
                "AppendFacts",
                request_key(&request),
                started,
            )
            .await?;
        if request.facts.len() > FACTS_PER_REQUEST_MAX {
            return call.finish(Err(too_many_facts(request.facts.len()))).await;
        }
        let keys: Vec<String> = request.facts.iter().map(fact_key).collect();
        let timeout = self.config.nats.request_timeout;
        let stored = tokio::time::timeout(timeout, self.append_all(call.caller(), request.facts));
        let Ok(answers) = stored.await else {
            return call.finish(Err(self.timed_out(started, keys.len()))).await;
        };
        self.metrics
            .append_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        let tally = self.count_outcomes(&answers);
        // A node that is not the zone's writer (a standby, or one that lost
        // the lease) refuses the whole request, as it refuses an AppendFact:
        // every client then sees `not_active` where it looks for it, the
        // request's status, and goes to the active node, where facts stored
        // before a lease loss answer `duplicate`.
        if let Some(r) = answers
            .iter()
            .find_map(|a| a.as_ref().err().filter(|r| r.reason == Reason::NotActive))
        {
            return call.finish(Err(r.clone())).await;
        }
        log_node_failures(call.key(), &answers);
        audit_refusals(&call, &tally, &answers, &keys).await;
        let mut call = call;
        call.detail(tally.detail());
        let results = answers.into_iter().map(result_message).collect();
        call.finish(Ok(AppendFactsResponse {
            results,
            ..Default::default()
        }))
        .await
        .map(Response::new)
    }

    /// A request not answered within the request timeout: counted as its
    /// facts' own AppendFact calls would be, each timed out
    /// (`bsfg_append_failures_total`, reason request_timeout), the latency
    /// observed.
    fn timed_out(&self, started: Instant, facts: usize) -> Rejection {
        let timeout = self.config.nats.request_timeout;
        let timed_out: Vec<_> = (0..facts).map(|_| Err(append_timed_out(timeout))).collect();
        self.metrics
            .append_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        self.count_outcomes(&timed_out);
        append_timed_out(timeout)
    }

    /// Counts each fact's outcome as an AppendFact's would be counted.
    fn count_outcomes(&self, answers: &[Result<AppendFactResponse, Rejection>]) -> Tally {
        let mut tally = Tally::default();
        for (i, answer) in answers.iter().enumerate() {
            let outcome = match answer {
                Ok(r) if r.duplicate => {
                    self.metrics.append_duplicates_total.inc();
                    tally.duplicates += 1;
                    "duplicate"
                }
                Ok(_) => {
                    tally.stored += 1;
                    "ok"
                }
                Err(r) => {
                    self.metrics
                        .append_failures_total
                        .get_or_create(&labels(&[("reason", r.reason.as_str())]))
                        .inc();
                    tally.refused.entry(r.reason.as_str()).or_insert((i, 0)).1 += 1;
                    "rejected"
                }
            };
            self.metrics
                .append_requests_total
                .get_or_create(&labels(&[("outcome", outcome)]))
                .inc();
        }
        tally
    }
}

/// One audit record per refusal reason of the request (by the service's
/// policy: authorization refusals): its first fact's key, and the count.
async fn audit_refusals(
    call: &Call<'_>,
    tally: &Tally,
    answers: &[Result<AppendFactResponse, Rejection>],
    keys: &[String],
) {
    for (reason, (first, count)) in &tally.refused {
        let r = answers[*first].as_ref().expect_err("tallied as refused");
        assert_eq!(r.reason.as_str(), *reason, "tallied under its own reason");
        let r = Rejection {
            message: format!("{} ({count} of the request's facts refused so)", r.message),
            ..r.clone()
        };
        call.refused_part(&keys[*first], &r).await;
    }
}

/// A request's facts by outcome; per refusal reason its first fact and count.
#[derive(Default)]
struct Tally {
    stored: usize,
    duplicates: usize,
    refused: BTreeMap<&'static str, (usize, usize)>,
}

impl Tally {
    /// The outcome line's detail: counts, and each refusal reason's count.
    fn detail(&self) -> String {
        let mut detail = format!("stored {}, duplicate {}", self.stored, self.duplicates);
        for (reason, (_, count)) in &self.refused {
            detail.push_str(&format!(", {reason} {count}"));
        }
        detail
    }
}

/// The call's key for logs and audit: how many facts, and the first's key.
fn request_key(request: &AppendFactsRequest) -> String {
    match request.facts.first() {
        Some(first) => bounded_owned(format!(
            "{} facts from {}",
            request.facts.len(),
            fact_key(first)
        )),
        None => "0 facts".to_string(),
    }
}

fn fact_key(request: &AppendFactRequest) -> String {
    bounded_owned(format!(
        "{}/{}",
        request.envelope.from_zone, request.envelope.message_id
    ))
}

fn result_message(answer: Result<AppendFactResponse, Rejection>) -> AppendFactResult {
    let result = match answer {
        Ok(appended) => append_fact_result::Result::from(appended),
        Err(r) => append_fact_result::Result::from(FactRefusal {
            code: crate::node::errors::connect_code(r.code)
                .as_str()
                .to_string(),
            reason: r.reason.as_str().to_string(),
            message: r.message,
            ..Default::default()
        }),
    };
    AppendFactResult {
        result: Some(result),
        ..Default::default()
    }
}

/// The node's own failures among a request's answers (the store
/// unavailable, say), as one error line: the outcome line says `ok`, as the
/// request was answered, but an operator looks for errors.
fn log_node_failures(key: &str, answers: &[Result<AppendFactResponse, Rejection>]) {
    let mut failures = answers
        .iter()
        .filter_map(|a| a.as_ref().err())
        .filter(|r| crate::node::call::is_node_failure(r));
    if let Some(first) = failures.next() {
        let (reason, count) = (first.reason.as_str(), 1 + failures.count());
        let message = bsfg_domain::bounded::bounded_to(&first.message, MESSAGE_BYTES_MAX);
        tracing::error!(
            rpc = "AppendFacts",
            key,
            reason,
            facts = count as u64,
            message = %message,
            "facts of the request not stored for the node's own failure"
        );
    }
}

fn too_many_facts(count: usize) -> Rejection {
    Rejection::invalid(
        Reason::TooManyFacts,
        format!(
            "the request carries {count} facts; an AppendFacts request carries at most \
             {FACTS_PER_REQUEST_MAX}: send them as several requests (nothing of this one was stored)"
        ),
    )
}
