//! The zone's status facts: every `[status] interval` the node appends one
//! small fact (kind `status`, subject `zone:<zone>`) to `[status] to_zone`,
//! routed like any fact. Why: the fleet view at enterprise is built from
//! these facts, never by reaching into a zone, so it crosses the same
//! one-way links and shows a cut as staleness.
//!
//! The fact goes through group commit like an audit record. One that
//! cannot be appended is logged and not kept: the next tick appends a
//! fresh one, so a failing store never grows memory here. Its size is
//! bounded: links and consumers are those of the configuration, each
//! error text cut to [`ERROR_BYTES_MAX`], the whole at most
//! [`STATUS_BYTES_MAX`] (a larger one is logged and skipped).

use crate::config::ZoneConfig;
use crate::replicator::Replicator;
use crate::store::Store;
use crate::store::now_unix_ms;
use crate::store::statuses::{STATUS_BYTES_MAX, STATUS_KIND};
use crate::tls::server::ReloadingTls;
use bsfg_domain::bounded::bounded_to;
use bsfg_proto::bsfg::v1::{Envelope, Fact, GetStatusResponse};
use serde_json::{Value, json};
use std::sync::Arc;

/// Longest last-error text a link's entry carries.
pub const ERROR_BYTES_MAX: usize = 256;
/// The predicate of status facts.
pub const STATUS_PREDICATE: &str = "zone_status";

/// What a status fact is made of.
pub struct StatusSource {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub replicator: Arc<Replicator>,
    pub tls: Option<Arc<ReloadingTls>>,
}

/// Appends a status fact every interval, the first at once; returns at
/// once when `[status] to_zone` is unset.
pub async fn run(source: StatusSource) {
    let Some(to_zone) = source.config.status.to_zone.clone() else {
        return;
    };
    let mut ticker = tokio::time::interval(source.config.status.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = source.append(&to_zone).await {
            tracing::warn!(
                error = %e,
                "could not append this zone's status fact; the next tick appends a fresh one"
            );
        }
    }
}

impl StatusSource {
    async fn append(&self, to_zone: &str) -> anyhow::Result<()> {
        let status =
            super::operations::zone_status(&self.config, &self.store, &self.replicator).await;
        let now = now_unix_ms();
        let object_json =
            status_object(&self.config, self.tls.as_deref(), &status, now).to_string();
        if object_json.len() > STATUS_BYTES_MAX {
            anyhow::bail!(
                "status of {} bytes, over {STATUS_BYTES_MAX}",
                object_json.len()
            );
        }
        let zone = &self.config.zone;
        let fact = Fact {
            subject: format!("{STATUS_KIND}:{zone}"),
            predicate: STATUS_PREDICATE.into(),
            object_json,
            ..Default::default()
        };
        let valid = bsfg_domain::validate::fact(fact, &self.config.limits)?;
        let envelope = Envelope {
            message_id: format!("status-{zone}-{now}"),
            from_zone: zone.clone(),
            to_zone: to_zone.to_string(),
            produced_at_unix_ms: now,
            ..Default::default()
        };
        self.store.commit.append(envelope, valid, None).await?;
        Ok(())
    }
}

/// The status object: links, consumers, category fill, certificate expiry,
/// version, produced time and interval. Also the fleet view's entry for
/// the node's own zone (`node::console::fleet`).
pub fn status_object(
    config: &ZoneConfig,
    tls: Option<&ReloadingTls>,
    status: &GetStatusResponse,
    now: i64,
) -> Value {
    let links: Vec<Value> = status
        .links
        .iter()
        .map(|l| {
            json!({
                "peer": l.peer, "mode": l.mode, "lag_seconds": l.lag_seconds,
                "backlog": l.backlog,
                "last_confirm_age_seconds": l.last_confirm_age_seconds,
                "last_error": bounded_to(&l.last_error, ERROR_BYTES_MAX),
            })
        })
        .collect();
    let consumers: Vec<Value> = status
        .consumers
        .iter()
        .map(|c| json!({ "name": c.name, "frontier": c.frontier, "pending": c.pending }))
        .collect();
    let categories: Vec<Value> = status
        .categories
        .iter()
        .map(|c| json!({ "name": c.name, "fill_percent": c.fill_percent }))
        .collect();
    let certificates = tls.map(|t| {
        let (node_days, ca_days) = t.expiry_days();
        json!({ "node_days": node_days, "ca_days": ca_days })
    });
    json!({
        "zone": status.zone,
        "links": links,
        "consumers": consumers,
        "categories": categories,
        "certificate_expiry_days": certificates,
        "version": env!("CARGO_PKG_VERSION"),
        "produced_unix_ms": now,
        "interval_ms": config.status.interval.as_millis() as i64,
    })
}
