//! The BoundaryService: maps the Connect contract onto the store.
//!
//! Each handler keeps only its own logic: validation (pure domain checks),
//! authorization, the store call and its own metrics. What every RPC does
//! around that (identifying the caller, auditing refusals, the outcome log
//! line, mapping a [`Rejection`] to a Connect error) is `node::call`.

use crate::config::ZoneConfig;
use crate::metrics::{Metrics, labels};
use crate::node::audit::{Audit, AuditEvent};
use crate::node::auth::{Auth, Caller};
use crate::node::call::Refusals;
use crate::node::errors::to_connect;
use crate::store::Store;
use crate::store::consumers::{FetchBounds, Fetched, Quarantined};
use crate::store::objects::PutHeader;
use crate::store::served::ServedFacts;
use bsfg_domain::bounded::{bounded, bounded_owned};
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
    /// Refusals audited: authorization and policy ones (see `node::call`).
    pub refusals: Refusals,
}

impl Boundary {
    /// AppendFact without the transport: validation, authorization, then
    /// the durable write.
    pub async fn append(
        &self,
        caller: &Caller,
        request: AppendFactRequest,
    ) -> Result<AppendFactResponse, Rejection> {
        let (envelope, valid) = self.check_append(caller, request)?;
        let appended = self.store.commit.append(envelope, valid, None).await?;
        Ok(appended_response(appended))
    }

    /// AppendFacts without the transport: each fact checked as its own
    /// AppendFact, the accepted ones stored together in request order, one
    /// answer per fact by position.
    pub async fn append_all(
        &self,
        caller: &Caller,
        requests: Vec<AppendFactRequest>,
    ) -> Vec<Result<AppendFactResponse, Rejection>> {
        let mut answers: Vec<Option<Result<AppendFactResponse, Rejection>>> = Vec::new();
        let mut items = Vec::with_capacity(requests.len());
        let mut slots = Vec::with_capacity(requests.len());
        for request in requests {
            match self.check_append(caller, request) {
                Ok((envelope, valid)) => {
                    slots.push(answers.len());
                    answers.push(None);
                    items.push((envelope, valid));
                }
                Err(r) => answers.push(Some(Err(r))),
            }
        }
        let stored = self.store.commit.append_all(items).await;
        for (slot, result) in slots.into_iter().zip(stored) {
            answers[slot] = Some(result.map(appended_response));
        }
        answers
            .into_iter()
            .map(|a| a.expect("every fact was answered"))
            .collect()
    }

    /// An AppendFact request's checks before the store: shape, validity,
    /// authorization, route and attachments' buckets.
    fn check_append(
        &self,
        caller: &Caller,
        request: AppendFactRequest,
    ) -> Result<(bsfg_proto::bsfg::v1::Envelope, validate::ValidFact), Rejection> {
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
        let reserved = [
            (AUDIT_KIND, "audit records"),
            (crate::store::statuses::STATUS_KIND, "status facts"),
        ];
        if let Some((kind, what)) = reserved.iter().find(|(k, _)| valid.subject_kind == *k) {
            return Err(Rejection::new(
                Code::PermissionDenied,
                Reason::KindReserved,
                format!(
                    "subject kind {kind:?} is reserved for this node's own {what}; use another kind"
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
        Ok((envelope, valid))
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
        let call = (self.refusals)
            .identify(&self.auth, &ctx, "AppendFact", key, started)
            .await?;
        // The request timeout covers the whole append, queueing included:
        // a caller that gave up is not published for (see store::commit).
        let timeout = self.config.nats.request_timeout;
        let result = tokio::time::timeout(timeout, self.append(call.caller(), request))
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
                    key = call.key(),
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
                "rejected"
            }
        };
        self.metrics
            .append_requests_total
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
        call.finish(result).await.map(Response::new)
    }

    async fn append_facts(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, AppendFactsRequest>,
    ) -> ServiceResult<AppendFactsResponse> {
        self.append_facts_call(ctx, request).await
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
        let call = (self.refusals)
            .identify(&self.auth, &ctx, "FetchFacts", key.into_owned(), started)
            .await?;
        let result = self.fetch(call.caller(), &request).await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .fetch_requests_total
            .get_or_create(&labels(&[
                ("consumer", self.consumer_label(name)),
                ("outcome", outcome),
            ]))
            .inc();
        let result = call.finish(result).await;
        // `None` defers to the server's policy (gzip above 1 KiB).
        let compress = if self.config.fetch.compress {
            None
        } else {
            Some(false)
        };
        result.map(|r| Response::new(r).compress(compress))
    }

    async fn confirm_receipt(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConfirmReceiptRequest>,
    ) -> ServiceResult<ConfirmReceiptResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = bounded_owned(format!("{}@{}", request.consumer_name, request.offset));
        let call = (self.refusals)
            .identify(&self.auth, &ctx, "ConfirmReceipt", key, started)
            .await?;
        let result = async {
            self.store.facts.gate().check()?;
            let consumer = self.store.consumers.config(&request.consumer_name)?;
            self.auth
                .check_consumer(call.caller(), &consumer.name, &consumer.category)?;
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
        call.finish(result).await.map(|frontier| {
            Response::new(ConfirmReceiptResponse {
                frontier,
                ..Default::default()
            })
        })
    }

    async fn put_object(
        &self,
        ctx: RequestContext,
        mut requests: connectrpc::InboundStream<PutObjectRequest>,
    ) -> ServiceResult<PutObjectResponse> {
        let started = Instant::now();
        let header = put_header(&mut requests).await?;
        let key = bounded_owned(format!("{}/{}", header.bucket, header.key));
        let mut call = (self.refusals)
            .identify(&self.auth, &ctx, "PutObject", key, started)
            .await?;
        if let Err(r) = self.check_put(call.caller(), &header) {
            return call.finish(Err(r)).await;
        }
        let chunks = upload_chunks(requests);
        let result = self.store.objects.put(header, Box::pin(chunks)).await;
        if let Ok(o) = &result {
            self.metrics
                .object_bytes_total
                .get_or_create(&labels(&[("direction", "in")]))
                .inc_by(o.size_bytes);
            call.detail(format!("{} bytes, {}", o.size_bytes, o.digest));
        }
        call.finish(result).await.map(|o| {
            Response::new(PutObjectResponse {
                bucket: o.bucket,
                key: o.key,
                digest: o.digest,
                size_bytes: o.size_bytes,
                ..Default::default()
            })
        })
    }

    async fn get_object(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetObjectRequest>,
    ) -> ServiceResult<ServiceStream<GetObjectResponse>> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = bounded_owned(format!("{}/{}", request.bucket, request.key));
        let call = (self.refusals)
            .identify(&self.auth, &ctx, "GetObject", key, started)
            .await?;
        let caller = call.caller();
        let result = self.open_object(caller, &request).await;
        let (info, chunks) = call.finish(result).await?;
        if caller.principal.kind == crate::config::PrincipalKind::Peer {
            self.audit
                .record(AuditEvent::about(
                    caller,
                    "GetObject",
                    "accepted",
                    format!("{} {}", call.key(), info.digest),
                    "object_served".into(),
                    format!(
                        "{} bytes from offset {}",
                        info.size_bytes, request.start_offset_bytes
                    ),
                ))
                .await;
        }
        let info_message = ObjectInfo {
            bucket: info.bucket.clone(),
            key: info.key.clone(),
            digest: info.digest.clone(),
            size_bytes: info.size_bytes,
            media_type: info.media_type.clone(),
            ..Default::default()
        };
        Ok(Response::new(object_stream(
            self.metrics.clone(),
            info_message,
            request.start_offset_bytes,
            chunks,
        )))
    }
}

/// The header PutObject's first message must carry.
async fn put_header(
    requests: &mut connectrpc::InboundStream<PutObjectRequest>,
) -> Result<PutHeader, connectrpc::ConnectError> {
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
    match first.part {
        Some(put_object_request::Part::Header(h)) => Ok(PutHeader {
            bucket: h.bucket,
            key: h.key,
            media_type: h.media_type,
            expected_digest: h.expected_digest,
            expected_size_bytes: h.expected_size_bytes,
        }),
        _ => Err(to_connect(Rejection::invalid(
            Reason::MissingHeader,
            "the first PutObject message must carry the header (bucket, key)",
        ))),
    }
}

/// The chunks of an upload after its header.
fn upload_chunks(
    requests: connectrpc::InboundStream<PutObjectRequest>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, Rejection>> + Send {
    requests.map(|item| match item {
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
    })
}

/// GetObject's answer: the object's info first, then its chunks (counted
/// in `bsfg_object_bytes_total{direction="out"}`).
fn object_stream(
    metrics: Arc<Metrics>,
    info: ObjectInfo,
    start_offset_bytes: u64,
    chunks: impl futures::Stream<Item = Result<(u64, bytes::Bytes), Rejection>> + Send + 'static,
) -> ServiceStream<GetObjectResponse> {
    let first = futures::stream::once(futures::future::ready(Ok(GetObjectResponse {
        info: MessageField::some(info),
        offset_bytes: start_offset_bytes,
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
    Box::pin(first.chain(rest))
}

impl Boundary {
    /// PutObject's rights: writing the bucket, and for a peer its import
    /// policy's object size.
    fn check_put(&self, caller: &Caller, header: &PutHeader) -> Result<(), Rejection> {
        self.auth.check_bucket(caller, &header.bucket, true)?;
        if self.auth.export_policy(caller).is_some() {
            caller
                .principal
                .import
                .check_object_size(header.expected_size_bytes)
                .map_err(|r| Rejection::new(Code::PermissionDenied, r.reason, r.message))?;
        }
        Ok(())
    }

    /// GetObject's rights and the object opened at `start_offset_bytes`:
    /// reading the bucket, and for a peer its export policy's object size.
    async fn open_object(
        &self,
        caller: &Caller,
        request: &GetObjectRequest,
    ) -> Result<
        (
            crate::store::objects::StoredObject,
            impl futures::Stream<Item = Result<(u64, bytes::Bytes), Rejection>> + Send + 'static,
        ),
        Rejection,
    > {
        self.auth.check_bucket(caller, &request.bucket, false)?;
        let opened = self
            .store
            .objects
            .get(&request.bucket, &request.key, request.start_offset_bytes)
            .await?;
        if let Some(policy) = self.auth.export_policy(caller) {
            policy
                .check_object_size(opened.0.size_bytes)
                .map_err(|r| Rejection::new(Code::PermissionDenied, r.reason, r.message))?;
        }
        Ok(opened)
    }

    /// FetchFacts after identification: authorization, the fetch, and the
    /// export policy (facts a peer may not see are withheld and audited; the
    /// caller moves past them by confirming `last_delivered_offset`).
    async fn fetch(
        &self,
        caller: &Caller,
        request: &FetchFactsRequest,
    ) -> Result<ServedFacts, Rejection> {
        self.store.facts.gate().check()?;
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
        let served = self.export(caller, policy, facts).await;
        Ok(ServedFacts {
            facts: served,
            frontier,
            last_delivered_offset,
            backlog,
            answered_at_unix_ms: crate::store::now_unix_ms(),
        })
    }

    /// What of `facts` a peer is served: only facts routed through it, and
    /// of those what its export `policy` allows; a fact withheld by the
    /// policy is counted and audited.
    async fn export(
        &self,
        caller: &Caller,
        policy: &bsfg_domain::policy::FactPolicy,
        facts: Vec<crate::store::served::ServedFact>,
    ) -> Vec<crate::store::served::ServedFact> {
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
        served
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
fn appended_response(appended: crate::store::facts::Appended) -> AppendFactResponse {
    AppendFactResponse {
        offset: appended.offset,
        duplicate: appended.duplicate,
        category: appended.category,
        ..Default::default()
    }
}

pub(super) fn append_timed_out(timeout: std::time::Duration) -> Rejection {
    Rejection::new(
        Code::DeadlineExceeded,
        Reason::RequestTimeout,
        format!(
            "the append was not acknowledged by the store within {timeout:?} ([nats] request_timeout) of its arrival; it may be stored: retry with the same message_id (a stored fact answers duplicate=true)"
        ),
    )
}
