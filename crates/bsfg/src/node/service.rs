//! The BoundaryService: maps the Connect contract onto the store.
//!
//! Each handler validates (pure domain checks), calls the store, records the
//! outcome in metrics and a structured log line, and turns a [`Rejection`]
//! into a Connect error with a precise code and an actionable message.

use crate::config::ZoneConfig;
use crate::metrics::{Metrics, labels};
use crate::node::audit::{Audit, AuditEvent};
use crate::node::auth::{Auth, Caller, Unidentified};
use crate::node::errors::to_connect;
use crate::store::Store;
use crate::store::consumers::{FetchBounds, Fetched, Quarantined};
use crate::store::objects::PutHeader;
use crate::store::served::ServedFacts;
use bsfg_domain::bounded::{MESSAGE_BYTES_MAX, bounded, bounded_owned, bounded_to};
use bsfg_domain::policy::Crossing;
use bsfg_domain::{Code, Reason, Rejection, validate};
use bsfg_proto::bsfg::v1::*;
use buffa::MessageField;
use connectrpc::{RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The subject kind of audit records: written by the node only.
pub const AUDIT_KIND: &str = "audit";

pub struct Boundary {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub audit: Arc<Audit>,
}

impl Boundary {
    /// AppendFact without the transport: validation, authorization, then
    /// the durable write.
    pub async fn append(
        &self,
        caller: &Caller,
        request: AppendFactRequest,
    ) -> Result<AppendFactResponse, Rejection> {
        let envelope = request
            .envelope
            .into_option()
            .ok_or_else(|| Rejection::invalid(Reason::MissingField, "envelope is required"))?;
        let fact = request
            .fact
            .into_option()
            .ok_or_else(|| Rejection::invalid(Reason::MissingField, "fact is required"))?;
        validate::envelope(&envelope, &self.config.limits)?;
        let valid = validate::fact(fact, &self.config.limits)?;
        if valid.subject_kind == AUDIT_KIND {
            return Err(Rejection::new(
                Code::PermissionDenied,
                Reason::KindReserved,
                format!(
                    "subject kind {AUDIT_KIND:?} is reserved for this node's own audit records; use another kind"
                ),
            ));
        }
        self.auth.check_from_zone(caller, &envelope.from_zone)?;
        let category = &self.config.category_for_kind(&valid.subject_kind).name;
        let crossing = Crossing {
            category,
            origin_zone: &envelope.from_zone,
            kind: &valid.subject_kind,
            predicate: &valid.fact.predicate,
            fact_bytes: valid.fact.object_json.len(),
        };
        self.auth.check_import(caller, &crossing)?;
        self.config.check_route(&envelope.to_zone, category)?;
        // Referencing an object needs read access to its bucket, checked
        // before the object store is consulted: otherwise the answer
        // (attachment_missing / attachment_mismatch) would disclose whether
        // it exists, its digest and size, and the reference would freeze it.
        // An unconfigured bucket holds nothing: attachment_missing, as before.
        for (i, a) in valid.fact.attachments.iter().enumerate() {
            self.auth
                .check_bucket(caller, &a.bucket, false)
                .map_err(|r| match r.code {
                    Code::NotFound => Rejection::new(
                        Code::FailedPrecondition,
                        Reason::AttachmentMissing,
                        format!("attachments[{i}]: {}", r.message),
                    ),
                    _ => Rejection {
                        message: format!("attachments[{i}]: {}", r.message),
                        ..r
                    },
                })?;
        }
        let appended = self.store.commit.append(envelope, valid, None).await?;
        Ok(AppendFactResponse {
            offset: appended.offset,
            duplicate: appended.duplicate,
            category: appended.category,
            ..Default::default()
        })
    }

    /// Identifies the caller; an unknown identity is refused and audited.
    async fn caller(
        &self,
        ctx: &RequestContext,
        rpc: &'static str,
        key: &str,
    ) -> Result<Caller, connectrpc::ConnectError> {
        match self.auth.caller(ctx) {
            Ok(caller) => Ok(caller),
            Err(Unidentified {
                names,
                fingerprint,
                rejection,
            }) => {
                self.metrics
                    .access_refusals_total
                    .get_or_create(&labels(&[("reason", rejection.reason.as_str())]))
                    .inc();
                self.audit
                    .record(AuditEvent {
                        principal: "unknown".into(),
                        identity: names.join(","),
                        fingerprint,
                        rpc,
                        subject_key: key.to_string(),
                        decision: "refused",
                        reason: rejection.reason.to_string(),
                        detail: rejection.message.clone(),
                    })
                    .await;
                Err(to_connect(rejection))
            }
        }
    }

    /// Records a refusal of an identified caller (authorization or policy)
    /// in the audit stream and metrics; other rejections only count.
    async fn refused(&self, caller: &Caller, rpc: &'static str, key: &str, r: &Rejection) {
        if r.code == Code::PermissionDenied {
            self.metrics.count_access_refusal(r);
            self.audit
                .record(AuditEvent::refusal(caller, rpc, key, r))
                .await;
        }
    }

    /// A request's consumer name as a metric label value: itself if it is a
    /// configured consumer, otherwise [`crate::metrics::UNKNOWN_CONSUMER`]
    /// (request values never become labels).
    fn consumer_label<'a>(&self, name: &'a str) -> &'a str {
        if self.config.consumers.iter().any(|c| c.name == name) {
            name
        } else {
            crate::metrics::UNKNOWN_CONSUMER
        }
    }

    fn fetch_bounds(&self, request: &FetchFactsRequest) -> FetchBounds {
        let f = &self.config.fetch;
        let limit = if request.limit == 0 {
            f.facts_default
        } else {
            request.limit.min(f.facts_max)
        };
        let bytes = if request.max_bytes == 0 {
            f.bytes_default
        } else {
            request.max_bytes.min(f.bytes_max)
        };
        FetchBounds {
            restart_from_frontier: request.restart_from_frontier,
            limit: limit as usize,
            bytes_max: bytes as usize,
            wait: Duration::from_millis(u64::from(request.wait_ms)).min(f.wait_max),
        }
    }
}

/// One log line per RPC outcome. `key` comes from the request: callers
/// bound it (`bounded_owned`) where they build it, since it also goes into
/// audit records. Key and message are cut again at `MESSAGE_BYTES_MAX` (a
/// guard that leaves a bounded key as it is): a line never carries a
/// request's full size.
pub(crate) fn log_outcome<T>(
    rpc: &'static str,
    key: &str,
    started: Instant,
    result: &Result<T, Rejection>,
) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    let bounded_key = bounded_to(key, MESSAGE_BYTES_MAX);
    let key: &str = &bounded_key;
    let message = |r: &Rejection| bounded_to(&r.message, MESSAGE_BYTES_MAX).into_owned();
    match result {
        Ok(_) => tracing::info!(rpc, key, elapsed_us, outcome = "ok"),
        Err(r) if matches!(r.code, Code::Unavailable | Code::Internal | Code::DataLoss) => {
            tracing::error!(rpc, key, elapsed_us, outcome = "error", reason = r.reason.as_str(), message = %message(r))
        }
        Err(r) => {
            tracing::info!(rpc, key, elapsed_us, outcome = "rejected", reason = r.reason.as_str(), message = %message(r))
        }
    }
}

#[allow(refining_impl_trait)]
impl BoundaryService for Boundary {
    async fn append_fact(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, AppendFactRequest>,
    ) -> ServiceResult<AppendFactResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = bounded_owned(format!(
            "{}/{}",
            request.envelope.from_zone, request.envelope.message_id
        ));
        let caller = self.caller(&ctx, "AppendFact", &key).await?;
        // The request timeout covers the whole append, queueing included:
        // a caller that gave up is not published for (see store::commit).
        let timeout = self.config.nats.request_timeout;
        let result = tokio::time::timeout(timeout, self.append(&caller, request))
            .await
            .unwrap_or_else(|_| Err(append_timed_out(timeout)));
        self.metrics
            .append_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(r) if r.duplicate => {
                self.metrics.append_duplicates_total.inc();
                tracing::info!(
                    rpc = "AppendFact",
                    key,
                    offset = r.offset,
                    outcome = "duplicate",
                    "identical retry answered with the original offset"
                );
                "duplicate"
            }
            Ok(_) => "ok",
            Err(r) => {
                self.metrics
                    .append_failures_total
                    .get_or_create(&labels(&[("reason", r.reason.as_str())]))
                    .inc();
                self.refused(&caller, "AppendFact", &key, r).await;
                "rejected"
            }
        };
        self.metrics
            .append_requests_total
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
        log_outcome("AppendFact", &key, started, &result);
        result.map(Response::new).map_err(to_connect)
    }

    async fn fetch_facts(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, FetchFactsRequest>,
    ) -> ServiceResult<ServedFacts> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let name = request.consumer_name.as_str();
        let key = bounded(name);
        let caller = self.caller(&ctx, "FetchFacts", &key).await?;
        let result = self.fetch(&caller, &request).await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .fetch_requests_total
            .get_or_create(&labels(&[
                ("consumer", self.consumer_label(name)),
                ("outcome", outcome),
            ]))
            .inc();
        if let Err(r) = &result {
            self.refused(&caller, "FetchFacts", &key, r).await;
        }
        log_outcome("FetchFacts", &key, started, &result);
        // `None` defers to the server's policy (gzip above 1 KiB).
        let compress = if self.config.fetch.compress {
            None
        } else {
            Some(false)
        };
        result
            .map(|r| Response::new(r).compress(compress))
            .map_err(to_connect)
    }

    async fn confirm_receipt(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConfirmReceiptRequest>,
    ) -> ServiceResult<ConfirmReceiptResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = bounded_owned(format!("{}@{}", request.consumer_name, request.offset));
        let caller = self.caller(&ctx, "ConfirmReceipt", &key).await?;
        let result = async {
            let consumer = self.store.consumers.config(&request.consumer_name)?;
            self.auth
                .check_consumer(&caller, &consumer.name, &consumer.category)?;
            self.store
                .consumers
                .confirm(&request.consumer_name, request.offset)
                .await
        }
        .await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .confirm_requests_total
            .get_or_create(&labels(&[
                ("consumer", self.consumer_label(&request.consumer_name)),
                ("outcome", outcome),
            ]))
            .inc();
        if let Err(r) = &result {
            self.refused(&caller, "ConfirmReceipt", &key, r).await;
        }
        log_outcome("ConfirmReceipt", &key, started, &result);
        result
            .map(|frontier| {
                Response::new(ConfirmReceiptResponse {
                    frontier,
                    ..Default::default()
                })
            })
            .map_err(to_connect)
    }

    async fn put_object(
        &self,
        ctx: RequestContext,
        mut requests: connectrpc::InboundStream<PutObjectRequest>,
    ) -> ServiceResult<PutObjectResponse> {
        let started = Instant::now();
        let first = match requests.next().await {
            Some(Ok(m)) => m.to_owned_message(),
            Some(Err(e)) => return Err(e),
            None => {
                return Err(to_connect(Rejection::invalid(
                    Reason::MissingHeader,
                    "PutObject needs a header message first",
                )));
            }
        };
        let header = match first.part {
            Some(put_object_request::Part::Header(h)) => PutHeader {
                bucket: h.bucket,
                key: h.key,
                media_type: h.media_type,
                expected_digest: h.expected_digest,
                expected_size_bytes: h.expected_size_bytes,
            },
            _ => {
                return Err(to_connect(Rejection::invalid(
                    Reason::MissingHeader,
                    "the first PutObject message must carry the header (bucket, key)",
                )));
            }
        };
        let key = bounded_owned(format!("{}/{}", header.bucket, header.key));
        let caller = self.caller(&ctx, "PutObject", &key).await?;
        let allowed = self
            .auth
            .check_bucket(&caller, &header.bucket, true)
            .and_then(|()| match self.auth.export_policy(&caller) {
                Some(_) => caller
                    .principal
                    .import
                    .check_object_size(header.expected_size_bytes)
                    .map_err(|r| Rejection::new(Code::PermissionDenied, r.reason, r.message)),
                None => Ok(()),
            });
        if let Err(r) = allowed {
            self.refused(&caller, "PutObject", &key, &r).await;
            log_outcome("PutObject", &key, started, &Err::<(), _>(r.clone()));
            return Err(to_connect(r));
        }
        let chunks = requests.map(|item| match item {
            Ok(m) => match m.to_owned_message().part {
                Some(put_object_request::Part::Chunk(bytes)) => Ok(bytes::Bytes::from(bytes)),
                Some(put_object_request::Part::Header(_)) => Err(Rejection::invalid(
                    Reason::DuplicateHeader,
                    "only the first PutObject message may carry a header",
                )),
                None => Ok(bytes::Bytes::new()),
            },
            Err(e) => Err(Rejection::new(
                Code::Unavailable,
                Reason::UploadInterrupted,
                format!("the upload stream broke: {e}"),
            )),
        });
        let result = self.store.objects.put(header, Box::pin(chunks)).await;
        if let Ok(o) = &result {
            self.metrics
                .object_bytes_total
                .get_or_create(&labels(&[("direction", "in")]))
                .inc_by(o.size_bytes);
            tracing::info!(rpc = "PutObject", key, principal = %caller.principal.name, digest = %o.digest, size_bytes = o.size_bytes, outcome = "ok");
        }
        log_outcome("PutObject", &key, started, &result);
        result
            .map(|o| {
                Response::new(PutObjectResponse {
                    bucket: o.bucket,
                    key: o.key,
                    digest: o.digest,
                    size_bytes: o.size_bytes,
                    ..Default::default()
                })
            })
            .map_err(to_connect)
    }

    async fn get_object(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetObjectRequest>,
    ) -> ServiceResult<ServiceStream<GetObjectResponse>> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = bounded_owned(format!("{}/{}", request.bucket, request.key));
        let caller = self.caller(&ctx, "GetObject", &key).await?;
        let result = async {
            self.auth.check_bucket(&caller, &request.bucket, false)?;
            let opened = self
                .store
                .objects
                .get(&request.bucket, &request.key, request.start_offset_bytes)
                .await?;
            if let Some(policy) = self.auth.export_policy(&caller) {
                policy
                    .check_object_size(opened.0.size_bytes)
                    .map_err(|r| Rejection::new(Code::PermissionDenied, r.reason, r.message))?;
            }
            Ok(opened)
        }
        .await;
        log_outcome(
            "GetObject",
            &key,
            started,
            &result.as_ref().map(|_| ()).map_err(Clone::clone),
        );
        if let Err(r) = &result {
            self.refused(&caller, "GetObject", &key, r).await;
        }
        let (info, chunks) = result.map_err(to_connect)?;
        if caller.principal.kind == crate::config::PrincipalKind::Peer {
            self.audit
                .record(AuditEvent::about(
                    &caller,
                    "GetObject",
                    "accepted",
                    format!("{key} {}", info.digest),
                    "object_served".into(),
                    format!(
                        "{} bytes from offset {}",
                        info.size_bytes, request.start_offset_bytes
                    ),
                ))
                .await;
        }
        let metrics = self.metrics.clone();
        let info_message = ObjectInfo {
            bucket: info.bucket.clone(),
            key: info.key.clone(),
            digest: info.digest.clone(),
            size_bytes: info.size_bytes,
            media_type: info.media_type.clone(),
            ..Default::default()
        };
        let first = futures::stream::once(futures::future::ready(Ok(GetObjectResponse {
            info: MessageField::some(info_message),
            offset_bytes: request.start_offset_bytes,
            ..Default::default()
        })));
        let rest = chunks.map(move |item| {
            item.map(|(offset, bytes)| {
                metrics
                    .object_bytes_total
                    .get_or_create(&labels(&[("direction", "out")]))
                    .inc_by(bytes.len() as u64);
                GetObjectResponse {
                    offset_bytes: offset,
                    chunk: bytes.to_vec(),
                    ..Default::default()
                }
            })
            .map_err(to_connect)
        });
        Ok(Response::new(
            Box::pin(first.chain(rest)) as ServiceStream<GetObjectResponse>
        ))
    }
}

impl Boundary {
    /// FetchFacts after identification: authorization, the fetch, and the
    /// export policy (facts a peer may not see are withheld and audited; the
    /// caller moves past them by confirming `last_delivered_offset`).
    async fn fetch(
        &self,
        caller: &Caller,
        request: &FetchFactsRequest,
    ) -> Result<ServedFacts, Rejection> {
        let consumer = self.store.consumers.config(&request.consumer_name)?;
        self.auth
            .check_consumer(caller, &consumer.name, &consumer.category)?;
        let bounds = self.fetch_bounds(request);
        let fetched = self
            .store
            .consumers
            .fetch(&request.consumer_name, bounds)
            .await?;
        self.quarantine(caller, &consumer.name, &fetched.quarantined)
            .await;
        let Fetched {
            facts,
            frontier,
            last_delivered_offset,
            backlog,
            ..
        } = fetched;
        let Some(policy) = self.auth.export_policy(caller) else {
            return Ok(ServedFacts {
                facts,
                frontier,
                last_delivered_offset,
                backlog,
                answered_at_unix_ms: crate::store::now_unix_ms(),
            });
        };
        let peer_zone = caller.principal.zone.as_deref().unwrap_or_default();
        let mut served = Vec::with_capacity(facts.len());
        for f in facts {
            let withheld = {
                let v = f.view();
                // Routing: a peer is served only what is addressed to it or
                // routed through it. Not a refusal: just not its traffic.
                if self.config.next_hop(v.envelope.to_zone) != Some(peer_zone) {
                    continue;
                }
                let kind = v
                    .fact
                    .subject
                    .split_once(':')
                    .map(|(k, _)| k)
                    .unwrap_or_default();
                let crossing = Crossing {
                    category: v.category,
                    origin_zone: v.provenance.origin_zone,
                    kind,
                    predicate: v.fact.predicate,
                    fact_bytes: v.fact.object_json.len(),
                };
                policy.check(&crossing).err().map(|refusal| {
                    (
                        refusal,
                        format!(
                            "{}/{} offset {}",
                            v.envelope.from_zone, v.envelope.message_id, f.offset
                        ),
                    )
                })
            };
            let Some((refusal, subject_key)) = withheld else {
                served.push(f);
                continue;
            };
            self.metrics
                .crossing_refusals_total
                .get_or_create(&labels(&[
                    ("peer", &caller.principal.name),
                    ("direction", "export"),
                    ("reason", refusal.reason.as_str()),
                ]))
                .inc();
            self.audit
                .record(AuditEvent::about(
                    caller,
                    "FetchFacts",
                    "withheld",
                    subject_key,
                    refusal.reason.to_string(),
                    refusal.message,
                ))
                .await;
        }
        Ok(ServedFacts {
            facts: served,
            frontier,
            last_delivered_offset,
            backlog,
            answered_at_unix_ms: crate::store::now_unix_ms(),
        })
    }
}

impl Boundary {
    /// Audits and counts stored records a fetch could not serve.
    async fn quarantine(&self, caller: &Caller, consumer: &str, records: &[Quarantined]) {
        for q in records {
            self.metrics
                .quarantined_facts_total
                .get_or_create(&labels(&[("consumer", consumer)]))
                .inc();
            tracing::error!(consumer, offset = q.offset, reason = %q.reason, "stored record cannot be served; quarantined (skipped)");
            self.audit
                .record(AuditEvent::about(
                    caller,
                    "FetchFacts",
                    "quarantined",
                    format!("{consumer} offset {}", q.offset),
                    Reason::CorruptRecord.to_string(),
                    q.reason.clone(),
                ))
                .await;
        }
    }
}

/// FetchFacts answers are encoded from the served records' bytes (see
/// `store::served`); JSON callers get the same answer decoded first.
impl connectrpc::Encodable<FetchFactsResponse> for ServedFacts {
    fn encode(
        &self,
        codec: connectrpc::CodecFormat,
    ) -> Result<bytes::Bytes, connectrpc::ConnectError> {
        match codec {
            connectrpc::CodecFormat::Proto => Ok(self.to_proto()),
            other => {
                let message = self.to_message().map_err(|e| {
                    connectrpc::ConnectError::internal(format!(
                        "a served FetchFacts answer does not decode: {e}"
                    ))
                })?;
                <FetchFactsResponse as connectrpc::Encodable<FetchFactsResponse>>::encode(
                    &message, other,
                )
            }
        }
    }
}

/// An AppendFact not answered within `[nats] request_timeout` of its arrival.
fn append_timed_out(timeout: std::time::Duration) -> Rejection {
    Rejection::new(
        Code::DeadlineExceeded,
        Reason::RequestTimeout,
        format!(
            "the append was not acknowledged by the store within {timeout:?} ([nats] request_timeout) of its arrival; it may be stored: retry with the same message_id (a stored fact answers duplicate=true)"
        ),
    )
}
