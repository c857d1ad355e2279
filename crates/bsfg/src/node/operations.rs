//! OperationsService: link, consumer and writer status, and consumer
//! replay. Same port, same mutual TLS and principals as the boundary. An
//! operator (`operator = true`) sees every link, consumer and store server
//! and may replay any consumer; any other principal sees only the consumers
//! it is granted and the zone's writer role (no links, no servers) and may
//! replay none. Every refusal is audited and logged; those
//! of authorization are counted in `bsfg_access_refusals`.

use crate::config::{StartPosition, ZoneConfig};
use crate::metrics::Metrics;
use crate::node::audit::{Audit, AuditEvent};
use crate::node::auth::{Auth, Caller};
use crate::node::call::Refusals;
use crate::replicator::Replicator;
use crate::store::Store;
use bsfg_domain::bounded::bounded_owned;
use bsfg_domain::{Reason, Rejection};
use bsfg_proto::bsfg::v1::*;
use connectrpc::{RequestContext, Response, ServiceRequest, ServiceResult};
use std::sync::Arc;
use std::time::Instant;

pub struct Operations {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub audit: Arc<Audit>,
    pub replicator: Arc<Replicator>,
    /// Refusals audited: every one but the node's own failures (see
    /// `node::call`).
    pub refusals: Refusals,
}

impl Operations {
    /// The zone's status as `caller` may see it: everything for an
    /// operator; for anyone else the consumers it is granted, no links and
    /// no store servers (the role and the lease it sees).
    pub async fn status(&self, caller: &Caller) -> GetStatusResponse {
        let mut status = zone_status(&self.config, &self.store, &self.replicator).await;
        if !caller.principal.operator {
            status.links.clear();
            if let Some(ha) = status.ha.as_option_mut() {
                ha.servers.clear();
            }
            status
                .consumers
                .retain(|c| caller.principal.consumers.contains(&c.name));
        }
        status
    }

    /// ResetConsumer after identification: the operator right, then the
    /// consumer, the position and the reset.
    async fn reset(
        &self,
        caller: &Caller,
        request: &ResetConsumerRequest,
    ) -> Result<u64, Rejection> {
        self.auth
            .check_operator(caller, "replaying a consumer (ResetConsumer)")?;
        let consumer = self.store.consumers.config(&request.consumer_name)?;
        let start = match request.position {
            Some(reset_consumer_request::Position::Offset(o)) => StartPosition::Offset(o),
            Some(reset_consumer_request::Position::TimeUnixMs(ms)) => {
                let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|e| Rejection::invalid(Reason::BadTime, e.to_string()))?;
                StartPosition::Time(
                    t.format(&time::format_description::well_known::Rfc3339)
                        .map_err(|e| Rejection::invalid(Reason::BadTime, e.to_string()))?,
                )
            }
            None => {
                return Err(Rejection::invalid(
                    Reason::MissingField,
                    "offset or time_unix_ms is required",
                ));
            }
        };
        tracing::warn!(principal = %caller.principal.name, consumer = %consumer.name, ?start, "consumer reset requested");
        self.store.consumers.reset(&consumer.name, start).await
    }
}

#[allow(refining_impl_trait)]
impl OperationsService for Operations {
    async fn get_status(
        &self,
        ctx: RequestContext,
        _request: ServiceRequest<'_, GetStatusRequest>,
    ) -> ServiceResult<GetStatusResponse> {
        let started = Instant::now();
        let call = (self.refusals)
            .identify(
                &self.auth,
                &ctx,
                "GetStatus",
                self.config.zone.clone(),
                started,
            )
            .await?;
        let status = self.status(call.caller()).await;
        call.finish(Ok(status)).await.map(Response::new)
    }

    async fn reset_consumer(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ResetConsumerRequest>,
    ) -> ServiceResult<ResetConsumerResponse> {
        let started = Instant::now();
        let request = request.to_owned_message();
        let position = match request.position {
            Some(reset_consumer_request::Position::Offset(o)) => format!("offset {o}"),
            Some(reset_consumer_request::Position::TimeUnixMs(ms)) => format!("time_unix_ms {ms}"),
            None => "no position".into(),
        };
        let key = bounded_owned(format!("{} {position}", request.consumer_name));
        let call = (self.refusals)
            .identify(&self.auth, &ctx, "ResetConsumer", key, started)
            .await?;
        let result = self.reset(call.caller(), &request).await;
        // A replay changes what a consumer has been delivered: on the trail.
        if let Ok(frontier) = &result {
            self.audit
                .record(AuditEvent::about(
                    call.caller(),
                    "ResetConsumer",
                    "operated",
                    call.key().to_string(),
                    "consumer_reset".into(),
                    format!("frontier now {frontier}"),
                ))
                .await
        }
        call.finish(result).await.map(|frontier| {
            Response::new(ResetConsumerResponse {
                frontier,
                ..Default::default()
            })
        })
    }
}

/// The zone's whole status: every link, consumer and category, the writer
/// role and the store's servers (`node::ha_status`). The one
/// assembly behind GetStatus (filtered there by the caller's rights) and the
/// operations console (`node::console`).
pub async fn zone_status(
    config: &ZoneConfig,
    store: &Store,
    replicator: &Replicator,
) -> GetStatusResponse {
    let links = replicator
        .links
        .iter()
        .map(|l| link_status(l.status()))
        .collect();
    let consumers = store
        .consumers
        .status()
        .await
        .into_iter()
        .map(|c| ConsumerStatus {
            name: c.name,
            category: c.category,
            frontier: c.frontier,
            delivered_max: c.delivered_max,
            unconfirmed: c.unconfirmed as u64,
            pending: c.pending.unwrap_or(0),
            ..Default::default()
        })
        .collect();
    let mut categories: Vec<CategoryStatus> = store
        .facts
        .categories()
        .map(|c| CategoryStatus {
            name: c.config.name.clone(),
            fill_percent: c.fill_percent(),
            ..Default::default()
        })
        .collect();
    categories.sort_by(|a, b| a.name.cmp(&b.name));
    GetStatusResponse {
        zone: config.zone.clone(),
        links,
        consumers,
        categories,
        store_clock_skew_seconds: store.clock.skew_ms().unwrap_or(0) as f64 / 1000.0,
        clock_skew_max_seconds: config.clock_skew_max.as_secs_f64(),
        ha: buffa::MessageField::some(super::ha_status::ha_status(config, store)),
        ..Default::default()
    }
}

/// A link as the status answer shows it.
fn link_status(s: crate::replicator::LinkStatus) -> LinkStatus {
    LinkStatus {
        peer: s.peer,
        url: s.url,
        consumer: s.consumer,
        mode: s.mode.as_str().into(),
        remote_frontier: s.remote_frontier,
        backlog: s.backlog,
        lag_seconds: s.lag_seconds,
        lag_seconds_high_watermark: s.lag_seconds_high_watermark,
        last_confirm_age_seconds: s
            .last_confirm_at
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(-1.0),
        facts_replicated: s.facts_replicated,
        facts_refused: s.facts_refused,
        objects_pulled: s.objects_pulled,
        last_error: s.last_error,
        backlog_age_seconds: s
            .backlog_reported_at
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(-1.0),
        peer_clock_skew_seconds: s.peer_clock_skew_ms.unwrap_or(0) as f64 / 1000.0,
        ..Default::default()
    }
}
