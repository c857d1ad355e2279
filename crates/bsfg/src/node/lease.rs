//! The writer lease of a zone of several nodes (`[ha]`): which node is the
//! zone's one writer now.
//!
//! A JetStream KV bucket (`bsfg_lease`, `[nats] replicas` replicas,
//! history 1, `max_age` = `lease_ttl`) holds one key, `writer`, whose value
//! is the holder's node id and boundary URL. A node takes the lease with a
//! create (only if no entry is there: none was written, or the last one
//! expired) and renews it every `lease_ttl / 3` with an update conditioned
//! on the revision it last wrote. It opens its writer gate
//! ([`WriterGate`]) until the send time of its last successful renewal
//! plus `lease_ttl` less a margin, on the monotonic clock: a node that
//! cannot renew (cut off, frozen, its store gone) stops acknowledging
//! before the entry can expire and another node take it. A node that took
//! the lease opens its gate only once its key index covers every stream
//! (it reads in what the previous writer stored), so a retry of a fact the
//! previous writer stored is answered as a duplicate.

use crate::metrics::Metrics;
use crate::node::audit::{Audit, AuditEvent};
use crate::store::FactLog;
use crate::store::writer_gate::{LeaseHolder, WriterGate};
use async_nats::jetstream::kv;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lease bucket.
pub const LEASE_BUCKET: &str = "bsfg_lease";
/// The lease's key.
const LEASE_KEY: &str = "writer";

/// One node's side of the lease.
pub struct Lease {
    kv: kv::Store,
    facts: Arc<FactLog>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    /// `<node_id> <url>`: what this node writes as the lease's value.
    value: String,
    /// This node as the lease names it.
    own: LeaseHolder,
    zone: String,
    ttl: Duration,
}

/// Where the lease loop stands.
struct Held {
    /// The revision this node last wrote, while it may still be its own.
    revision: Option<u64>,
    /// Send time of the last successful take or renewal.
    renewed_at: Option<Instant>,
    active: bool,
}

impl Lease {
    /// Opens (or creates) the lease bucket.
    pub async fn open(
        jetstream: &async_nats::jetstream::Context,
        config: &crate::config::ZoneConfig,
        ha: &crate::config::HaConfig,
        facts: Arc<FactLog>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> anyhow::Result<Self> {
        let kv = match jetstream.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => {
                jetstream
                    .create_key_value(kv::Config {
                        bucket: LEASE_BUCKET.into(),
                        description: format!("BSFG zone {} writer lease", config.zone),
                        history: 1,
                        max_age: ha.lease_ttl,
                        max_value_size: 1024,
                        storage: async_nats::jetstream::stream::StorageType::File,
                        num_replicas: config.nats.replicas,
                        ..Default::default()
                    })
                    .await?
            }
        };
        let url = ha
            .advertise_url
            .clone()
            .unwrap_or_else(|| default_url(config));
        Ok(Self {
            kv,
            facts,
            metrics,
            audit,
            value: format!("{} {url}", ha.node_id),
            own: LeaseHolder {
                node_id: ha.node_id.clone(),
                url,
            },
            zone: config.zone.clone(),
            ttl: ha.lease_ttl,
        })
    }

    /// Takes, renews and watches the lease until the task is aborted.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.ttl / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = Held {
            revision: None,
            renewed_at: None,
            active: false,
        };
        loop {
            ticker.tick().await;
            self.step(&mut held).await;
            let active = self.gate().is_open();
            if active != held.active {
                held.active = active;
                self.role_changed(active).await;
            }
            if let Some(at) = held.renewed_at {
                let age = at.elapsed().as_secs_f64();
                self.metrics.lease_renewal_age_seconds.set(age);
            }
        }
    }

    fn gate(&self) -> &WriterGate {
        self.facts.gate()
    }

    /// One attempt: renew what this node holds, else take a free lease,
    /// else learn who holds it.
    async fn step(&self, held: &mut Held) {
        let sent = Instant::now();
        let attempt = match held.revision {
            Some(revision) => self.renew(revision).await,
            None => self.take().await,
        };
        match attempt {
            Attempt::Held(revision) => {
                held.revision = Some(revision);
                held.renewed_at = Some(sent);
                self.gate().renewed(sent, self.own.clone());
                self.open_gate(sent).await;
            }
            Attempt::HeldByOther => {
                held.revision = None;
                let holder = self.holder().await;
                self.gate().close(holder);
            }
            // The store did not answer: the gate closes by itself when
            // its deadline passes; the revision is kept (the entry may
            // still be this node's).
            Attempt::Unknown => {}
        }
    }

    /// Opens the gate until `sent + ttl − margin`, once the key index
    /// covers every stream.
    async fn open_gate(&self, sent: Instant) {
        if !self.gate().is_open() {
            match self.facts.index_covers_streams().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the streams before writing; retrying");
                    return;
                }
            }
            // Another node may have written since this node last did: each
            // category's end is read again before its next append.
            self.facts.forget_stream_ends();
        }
        self.gate().open_until(sent + self.ttl - self.margin());
    }

    /// How much earlier than the lease's expiry this node stops writing: a
    /// sixth of the lease (500 ms for 3 s), for the other node's clock
    /// running faster and the store expiring the entry early.
    fn margin(&self) -> Duration {
        self.ttl / 6
    }

    async fn renew(&self, revision: u64) -> Attempt {
        let update = self
            .kv
            .update(LEASE_KEY, self.value.clone().into(), revision);
        match tokio::time::timeout(self.ttl / 3, update).await {
            Ok(Ok(revision)) => Attempt::Held(revision),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Attempt::HeldByOther
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "renewing the writer lease failed");
                Attempt::Unknown
            }
            Err(_) => Attempt::Unknown,
        }
    }

    async fn take(&self) -> Attempt {
        let create = self.kv.create(LEASE_KEY, self.value.clone().into());
        match tokio::time::timeout(self.ttl / 3, create).await {
            Ok(Ok(revision)) => Attempt::Held(revision),
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Attempt::HeldByOther,
            Ok(Err(e)) => {
                tracing::info!(error = %e, "taking the writer lease failed");
                Attempt::Unknown
            }
            Err(_) => Attempt::Unknown,
        }
    }

    /// The holder as the lease names it, if it can be read.
    async fn holder(&self) -> Option<LeaseHolder> {
        let entry = self.kv.entry(LEASE_KEY).await.ok()??;
        let value = String::from_utf8_lossy(&entry.value).into_owned();
        value.split_once(' ').map(|(node_id, url)| LeaseHolder {
            node_id: node_id.to_string(),
            url: url.to_string(),
        })
    }

    /// A WARN line, the metrics and (when this node became the writer) an
    /// audit record.
    async fn role_changed(&self, active: bool) {
        self.metrics.lease_held.set(i64::from(active));
        self.metrics.lease_role_changes_total.inc();
        let role = if active { "active" } else { "standby" };
        tracing::warn!(node_id = %self.own.node_id, zone = %self.zone, role, "writer role changed");
        if active {
            self.audit
                .record(AuditEvent {
                    principal: "node".into(),
                    identity: self.own.node_id.clone(),
                    fingerprint: String::new(),
                    rpc: "WriterLease",
                    subject_key: self.zone.clone(),
                    decision: "operated",
                    reason: "lease_taken".into(),
                    detail: format!("node {} became the zone's writer", self.own.node_id),
                })
                .await;
        }
    }
}

enum Attempt {
    Held(u64),
    HeldByOther,
    Unknown,
}

/// `https://<listen>` (`http://` in plaintext-dev).
fn default_url(config: &crate::config::ZoneConfig) -> String {
    let scheme = match config.tls.mode {
        crate::config::TlsMode::PlaintextDev => "http",
        _ => "https",
    };
    format!("{scheme}://{}", config.listen)
}
