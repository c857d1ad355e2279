//! The BoundaryService: maps the Connect contract onto the store.
//!
//! Each handler validates (pure domain checks), calls the store, records the
//! outcome in metrics and a structured log line, and turns a [`Rejection`]
//! into a Connect error with a precise code and an actionable message.

use crate::metrics::{Metrics, labels};
use crate::node::errors::to_connect;
use crate::store::Store;
use crate::store::consumers::FetchBounds;
use crate::store::objects::PutHeader;
use crate::config::ZoneConfig;
use bsfg_domain::{Code, Rejection, validate};
use bsfg_proto::bsfg::v1::*;
use buffa::MessageField;
use connectrpc::{RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Boundary {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
}

impl Boundary {
    /// AppendFact without the transport: validation, then the durable write.
    pub async fn append(&self, request: AppendFactRequest) -> Result<AppendFactResponse, Rejection> {
        let envelope = request.envelope.into_option().ok_or_else(|| Rejection::invalid("missing_field", "envelope is required"))?;
        let fact = request.fact.into_option().ok_or_else(|| Rejection::invalid("missing_field", "fact is required"))?;
        validate::envelope(&envelope, &self.config.limits)?;
        let valid = validate::fact(&fact, &self.config.limits)?;
        let appended = self.store.facts.append(envelope, valid, None).await?;
        Ok(AppendFactResponse { offset: appended.offset, duplicate: appended.duplicate, category: appended.category, ..Default::default() })
    }

    fn fetch_bounds(&self, request: &FetchFactsRequest) -> FetchBounds {
        let f = &self.config.fetch;
        let limit = if request.limit == 0 { f.limit_default } else { request.limit.min(f.limit_max) };
        let bytes = if request.max_bytes == 0 { f.bytes_default } else { request.max_bytes.min(f.bytes_max) };
        FetchBounds {
            limit: limit as usize,
            bytes_max: bytes as usize,
            wait: Duration::from_millis(u64::from(request.wait_ms.min(f.wait_ms_max))),
        }
    }
}

fn log_outcome<T>(rpc: &'static str, key: &str, started: Instant, result: &Result<T, Rejection>) {
    let elapsed_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(_) => tracing::info!(rpc, key, elapsed_us, outcome = "ok"),
        Err(r) if matches!(r.code, Code::Unavailable | Code::Internal | Code::DataLoss) => {
            tracing::error!(rpc, key, elapsed_us, outcome = "error", reason = r.reason, message = %r.message)
        }
        Err(r) => tracing::info!(rpc, key, elapsed_us, outcome = "rejected", reason = r.reason, message = %r.message),
    }
}

#[allow(refining_impl_trait)]
impl BoundaryService for Boundary {
    async fn append_fact(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, AppendFactRequest>,
    ) -> ServiceResult<AppendFactResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = format!("{}/{}", request.envelope.from_zone, request.envelope.message_id);
        let result = self.append(request).await;
        self.metrics.append_latency_seconds.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(r) if r.duplicate => {
                self.metrics.append_duplicates_total.inc();
                tracing::info!(rpc = "AppendFact", key, offset = r.offset, outcome = "duplicate", "identical retry answered with the original offset");
                "duplicate"
            }
            Ok(_) => "ok",
            Err(r) => {
                self.metrics.append_failures_total.get_or_create(&labels(&[("reason", r.reason)])).inc();
                "rejected"
            }
        };
        self.metrics.append_requests_total.get_or_create(&labels(&[("outcome", outcome)])).inc();
        log_outcome("AppendFact", &key, started, &result);
        result.map(Response::new).map_err(to_connect)
    }

    async fn fetch_facts(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, FetchFactsRequest>,
    ) -> ServiceResult<FetchFactsResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let bounds = self.fetch_bounds(&request);
        let result = self.store.consumers.fetch(&request.consumer_name, bounds).await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics.fetch_requests_total.get_or_create(&labels(&[("consumer", &request.consumer_name), ("outcome", outcome)])).inc();
        log_outcome("FetchFacts", &request.consumer_name, started, &result);
        result
            .map(|(facts, frontier)| Response::new(FetchFactsResponse { facts, frontier, ..Default::default() }))
            .map_err(to_connect)
    }

    async fn confirm_receipt(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ConfirmReceiptRequest>,
    ) -> ServiceResult<ConfirmReceiptResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let result = self.store.consumers.confirm(&request.consumer_name, request.offset).await;
        let outcome = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics.confirm_requests_total.get_or_create(&labels(&[("consumer", &request.consumer_name), ("outcome", outcome)])).inc();
        log_outcome("ConfirmReceipt", &format!("{}@{}", request.consumer_name, request.offset), started, &result);
        result.map(|frontier| Response::new(ConfirmReceiptResponse { frontier, ..Default::default() })).map_err(to_connect)
    }

    async fn put_object(
        &self,
        _ctx: RequestContext,
        mut requests: connectrpc::InboundStream<PutObjectRequest>,
    ) -> ServiceResult<PutObjectResponse> {
        let started = Instant::now();
        let first = match requests.next().await {
            Some(Ok(m)) => m.to_owned_message(),
            Some(Err(e)) => return Err(e),
            None => return Err(to_connect(Rejection::invalid("missing_header", "PutObject needs a header message first"))),
        };
        let header = match first.part {
            Some(put_object_request::Part::Header(h)) => PutHeader {
                bucket: h.bucket,
                key: h.key,
                media_type: h.media_type,
                expected_digest: h.expected_digest,
                expected_size_bytes: h.expected_size_bytes,
            },
            _ => return Err(to_connect(Rejection::invalid("missing_header", "the first PutObject message must carry the header (bucket, key)"))),
        };
        let key = format!("{}/{}", header.bucket, header.key);
        let chunks = requests.map(|item| match item {
            Ok(m) => match m.to_owned_message().part {
                Some(put_object_request::Part::Chunk(bytes)) => Ok(bytes::Bytes::from(bytes)),
                Some(put_object_request::Part::Header(_)) => Err(Rejection::invalid("duplicate_header", "only the first PutObject message may carry a header")),
                None => Ok(bytes::Bytes::new()),
            },
            Err(e) => Err(Rejection::new(Code::Unavailable, "upload_interrupted", format!("the upload stream broke: {e}"))),
        });
        let result = self.store.objects.put(header, Box::pin(chunks)).await;
        if let Ok(o) = &result {
            self.metrics.object_bytes_total.get_or_create(&labels(&[("direction", "in")])).inc_by(o.size_bytes);
            tracing::info!(rpc = "PutObject", key, digest = %o.digest, size_bytes = o.size_bytes, outcome = "ok");
        }
        log_outcome("PutObject", &key, started, &result);
        result
            .map(|o| Response::new(PutObjectResponse { bucket: o.bucket, key: o.key, digest: o.digest, size_bytes: o.size_bytes, ..Default::default() }))
            .map_err(to_connect)
    }

    async fn get_object(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetObjectRequest>,
    ) -> ServiceResult<ServiceStream<GetObjectResponse>> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let key = format!("{}/{}", request.bucket, request.key);
        let result = self.store.objects.get(&request.bucket, &request.key, request.start_offset_bytes).await;
        log_outcome("GetObject", &key, started, &result.as_ref().map(|_| ()).map_err(Clone::clone));
        let (info, chunks) = result.map_err(to_connect)?;
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
                metrics.object_bytes_total.get_or_create(&labels(&[("direction", "out")])).inc_by(bytes.len() as u64);
                GetObjectResponse { offset_bytes: offset, chunk: bytes.to_vec(), ..Default::default() }
            })
            .map_err(to_connect)
        });
        Ok(Response::new(Box::pin(first.chain(rest)) as ServiceStream<GetObjectResponse>))
    }
}
