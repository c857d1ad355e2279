//! The operations console: `GET /console`, one self-contained HTML page
//! (inline CSS and JavaScript, nothing fetched from elsewhere), and
//! `GET /console/status.json`, the data it polls every second. Both are on
//! the operations port next to `/metrics`, so an operator can see the zone
//! and its links in a browser without Prometheus or a client certificate.
//!
//! The data is the operator's GetStatus answer
//! ([`operations::zone_status`](super::operations::zone_status), of which
//! the writer part shows the role and the active node), the
//! categories' refusal thresholds from the configuration, the certificates'
//! expiry from the live TLS state, and the charts' history (see
//! [`history`]), which [`sample`] fills. The fleet view (`/console/fleet`,
//! `/console/fleet.json`) is in [`fleet`].

pub mod fleet;
pub mod history;

use crate::config::ZoneConfig;
use crate::replicator::Replicator;
use crate::store::Store;
use crate::store::statuses::LastStatus;
use crate::tls::server::ReloadingTls;
use bsfg_proto::bsfg::v1::{GetStatusResponse, LinkStatus};
use history::{History, Sample};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The console page, with the scripts both pages share.
pub fn page() -> &'static str {
    static PAGE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| assemble(include_str!("page.html")));
    &PAGE
}

/// A page of the console with `common.js` (helpers and the polling loop
/// both pages use) put where its script says `/* common.js */`.
pub fn assemble(page: &str) -> String {
    const MARK: &str = "/* common.js */";
    assert_eq!(
        page.matches(MARK).count(),
        1,
        "a console page includes common.js once"
    );
    page.replace(MARK, include_str!("common.js"))
}

/// What the console reads, and the charts' history.
pub struct Console {
    pub config: Arc<ZoneConfig>,
    pub store: Arc<Store>,
    pub replicator: Arc<Replicator>,
    /// The boundary port's TLS (None in plaintext-dev mode).
    pub tls: Option<Arc<ReloadingTls>>,
    history: Mutex<History>,
}

impl Console {
    pub fn new(
        config: Arc<ZoneConfig>,
        store: Arc<Store>,
        replicator: Arc<Replicator>,
        tls: Option<Arc<ReloadingTls>>,
    ) -> Console {
        let history = History::new(replicator.links.iter().map(|l| l.name.as_str()));
        Console {
            config,
            store,
            replicator,
            tls,
            history: Mutex::new(history),
        }
    }

    /// Records one sample of every link.
    pub fn record_sample(&self) {
        let now = crate::store::now_unix_ms();
        let mut history = self.history.lock().unwrap();
        for link in &self.replicator.links {
            let s = link.status();
            let sample = Sample {
                unix_ms: now,
                lag_seconds: s.lag_seconds,
                backlog: s.backlog,
            };
            history.record(&s.peer, sample);
        }
    }

    /// The body of `/console/status.json`.
    pub async fn status_json(&self) -> String {
        let status =
            super::operations::zone_status(&self.config, &self.store, &self.replicator).await;
        self.to_json(&status).to_string()
    }

    /// The body of `/console/fleet.json` (see [`fleet`]): this zone's live
    /// status and the last status facts stored of the others.
    pub async fn fleet_json(&self) -> String {
        let status =
            super::operations::zone_status(&self.config, &self.store, &self.replicator).await;
        let now = crate::store::now_unix_ms();
        let object = super::status::status_object(&self.config, self.tls.as_deref(), &status, now);
        let own = LastStatus {
            zone: self.config.zone.clone(),
            produced_unix_ms: now,
            interval_ms: self.config.status.interval.as_millis() as i64,
            object,
        };
        let others = self.store.facts.statuses.all();
        fleet::fleet_json(&self.config, own, others, now).to_string()
    }

    fn to_json(&self, status: &GetStatusResponse) -> Value {
        let history = self.history.lock().unwrap();
        let links: Vec<Value> = status
            .links
            .iter()
            .map(|l| link_json(l, history.samples(&l.peer)))
            .collect();
        drop(history);
        let consumers: Vec<Value> = status
            .consumers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "category": c.category, "frontier": c.frontier,
                    "pending": c.pending, "unconfirmed": c.unconfirmed,
                })
            })
            .collect();
        let certificates = self.tls.as_ref().map(|t| {
            let (node_days, ca_days) = t.expiry_days();
            json!({ "node_days": node_days, "ca_days": ca_days })
        });
        json!({
            "zone": status.zone,
            "now_unix_ms": crate::store::now_unix_ms(),
            "history_span_seconds": history::SPAN.as_secs(),
            "history_interval_seconds": history::SAMPLE_INTERVAL.as_secs(),
            "links": links,
            "consumers": consumers,
            "categories": self.categories_json(status),
            "certificates": certificates,
            "store_clock_skew_seconds": status.store_clock_skew_seconds,
            "writer": writer_json(status),
        })
    }

    /// Each category's fill and the fill at which it refuses appends.
    fn categories_json(&self, status: &GetStatusResponse) -> Vec<Value> {
        status
            .categories
            .iter()
            .map(|c| {
                let threshold = self
                    .config
                    .categories
                    .iter()
                    .find(|k| k.name == c.name)
                    .map(|k| k.fill_threshold_percent);
                json!({
                    "name": c.name, "fill_percent": c.fill_percent,
                    "refusal_threshold_percent": threshold,
                })
            })
            .collect()
    }
}

/// This node's writer role and the active node as the lease names it.
fn writer_json(status: &GetStatusResponse) -> Value {
    let ha = status.ha.as_option();
    json!({
        "role": ha.map_or("single", |h| h.role.as_str()),
        "node_id": ha.map_or("", |h| h.node_id.as_str()),
        "active_node_id": ha.map_or("", |h| h.lease_holder_node_id.as_str()),
    })
}

/// One link with its chart samples (`[unix_ms, lag_seconds, backlog]`).
fn link_json<'a>(l: &LinkStatus, samples: impl Iterator<Item = &'a Sample>) -> Value {
    let history: Vec<Value> = samples
        .map(|s| json!([s.unix_ms, s.lag_seconds, s.backlog]))
        .collect();
    json!({
        "peer": l.peer,
        "url": l.url,
        "mode": l.mode,
        "lag_seconds": l.lag_seconds,
        "backlog": l.backlog,
        "backlog_age_seconds": l.backlog_age_seconds,
        "last_confirm_age_seconds": l.last_confirm_age_seconds,
        "facts_replicated": l.facts_replicated,
        "facts_refused": l.facts_refused,
        "last_error": l.last_error,
        "history": history,
    })
}

/// Samples every link each [`history::SAMPLE_INTERVAL`], the first at once.
pub async fn sample(console: Arc<Console>) {
    let mut ticker = tokio::time::interval(history::SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        console.record_sample();
    }
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        // Links between the two console pages are navigation, not fetches.
        let pages = [page(), super::fleet::page()];
        for page in pages.map(|p| {
            p.replace("href=\"/console/fleet\"", "")
                .replace("href=\"/console\"", "")
        }) {
            for reference in ["src=", "href=", "@import", "url("] {
                assert!(!page.contains(reference), "{reference}");
            }
        }
        assert!(page().contains("href=\"/console/fleet\""));
        assert!(super::fleet::page().contains("href=\"/console\""));
        let fleet = super::fleet::page();
        assert_eq!(
            fleet.matches("http").count(),
            fleet.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(fleet.contains("poll(\"/console/fleet.json\""));
        // The one absolute URL names the SVG namespace; it is never fetched.
        let svg = "http://www.w3.org/2000/svg";
        assert_eq!(page().matches("http").count(), page().matches(svg).count());
        assert!(page().contains("poll(\"/console/status.json\""));
    }
}
