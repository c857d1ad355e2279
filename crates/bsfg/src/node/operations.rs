//! OperationsService: link and consumer status, and consumer replay. Same
//! port, same mutual TLS and principals as the boundary; a principal may
//! read status, and may reset only a consumer it is allowed to use.

use crate::config::{StartPosition, ZoneConfig};
use crate::node::auth::Auth;
use crate::node::errors::to_connect;
use crate::replicator::Replicator;
use crate::store::Store;
use bsfg_domain::Rejection;
use bsfg_proto::bsfg::v1::*;
use connectrpc::{RequestContext, Response, ServiceRequest, ServiceResult};
use std::sync::Arc;

pub struct Operations {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub auth: Auth,
    pub replicator: Arc<Replicator>,
}

impl Operations {
    pub async fn status(&self) -> GetStatusResponse {
        let links = self
            .replicator
            .links
            .iter()
            .map(|l| {
                let s = l.status();
                LinkStatus {
                    peer: s.peer,
                    url: s.url,
                    consumer: s.consumer,
                    mode: s.mode.as_str().into(),
                    remote_frontier: s.remote_frontier,
                    backlog: s.backlog,
                    lag_seconds: s.lag_seconds,
                    lag_seconds_high_watermark: s.lag_seconds_high_watermark,
                    last_confirm_age_seconds: s.last_confirm_at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(-1.0),
                    facts_replicated: s.facts_replicated,
                    facts_refused: s.facts_refused,
                    objects_pulled: s.objects_pulled,
                    last_error: s.last_error,
                    ..Default::default()
                }
            })
            .collect();
        let consumers = self
            .store
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
        let mut categories: Vec<CategoryStatus> = self
            .store
            .facts
            .categories()
            .map(|c| CategoryStatus { name: c.config.name.clone(), fill_percent: c.fill_percent(), ..Default::default() })
            .collect();
        categories.sort_by(|a, b| a.name.cmp(&b.name));
        GetStatusResponse { zone: self.config.zone.clone(), links, consumers, categories, ..Default::default() }
    }
}

#[allow(refining_impl_trait)]
impl OperationsService for Operations {
    async fn get_status(&self, ctx: RequestContext, _request: ServiceRequest<'_, GetStatusRequest>) -> ServiceResult<GetStatusResponse> {
        self.auth.caller(&ctx).map_err(|u| to_connect(u.rejection))?;
        Ok(Response::new(self.status().await))
    }

    async fn reset_consumer(&self, ctx: RequestContext, request: ServiceRequest<'_, ResetConsumerRequest>) -> ServiceResult<ResetConsumerResponse> {
        let caller = self.auth.caller(&ctx).map_err(|u| to_connect(u.rejection))?;
        let request = request.to_owned_message();
        let result = async {
            let consumer = self.store.consumers.config(&request.consumer_name)?;
            self.auth.check_consumer(&caller, &consumer.name, &consumer.category)?;
            let start = match request.position {
                Some(reset_consumer_request::Position::Offset(o)) => StartPosition::Offset(o),
                Some(reset_consumer_request::Position::TimeUnixMs(ms)) => {
                    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                        .map_err(|e| Rejection::invalid("bad_time", e.to_string()))?;
                    StartPosition::Time(t.format(&time::format_description::well_known::Rfc3339).map_err(|e| Rejection::invalid("bad_time", e.to_string()))?)
                }
                None => return Err(Rejection::invalid("missing_field", "offset or time_unix_ms is required")),
            };
            tracing::warn!(principal = %caller.principal.name, consumer = %request.consumer_name, ?start, "consumer reset requested");
            self.store.consumers.reset(&request.consumer_name, start).await
        }
        .await;
        result.map(|frontier| Response::new(ResetConsumerResponse { frontier, ..Default::default() })).map_err(to_connect)
    }
}
