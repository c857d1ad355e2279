//! The storage port and its JetStream adapter.
//!
//! Everything persistent lives in the zone's own JetStream domain:
//! * one stream per category (`facts_<category>`, subjects
//!   `facts.<category>.<kind>`), see [`facts`], written through
//!   [`publish`], AppendFact calls and audit records through group commit
//!   ([`commit`]) in front of it;
//! * the idempotency key index, a file derived from those streams, see
//!   [`key_index`];
//! * one durable pull consumer per configured consumer, see [`consumers`];
//! * one object store bucket per configured bucket, see [`objects`];
//! * retention and capacity accounting, see [`retention`], judging ages
//!   by the store's clock, see [`clock`];
//! * facts as served (stored bytes, checked and completed), see [`served`].
//!
//! Nothing outside the zone is touched: the node connects only to its own
//! nats-server, and its one file of its own (the key index) is derived.

mod bucket_room;
pub mod clock;
pub mod commit;
mod connect;
pub mod consumers;
pub mod direct;
pub mod disk;
pub mod facts;
mod failure;
pub mod health;
pub mod key_index;
mod leader_read;
pub mod objects;
pub mod publish;
mod regather;
pub mod replicas;
mod reply_router;
pub mod retention;
pub mod served;
pub mod statuses;
pub mod writer_gate;

use crate::config::ZoneConfig;
use std::sync::Arc;

pub use clock::now_unix_ms;
pub use connect::{Login, WrongDomain};
pub use consumers::Consumers;
pub use facts::FactLog;
pub use failure::unavailable;
pub use objects::Objects;
pub use reply_router::ReplyRouter;

/// Every storage handle the node needs, built once at start-up.
pub struct Store {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub facts: Arc<FactLog>,
    /// Group commit in front of `facts`: where AppendFact calls and audit
    /// records append (see [`commit`]).
    pub commit: Arc<commit::GroupCommit>,
    pub consumers: Arc<Consumers>,
    pub objects: Arc<Objects>,
    /// Free space of the store's and the key index's filesystems.
    pub disk: Arc<disk::DiskWatch>,
    /// Whether JetStream answers (see [`health`]).
    pub jetstream_health: Arc<health::JetStreamHealth>,
    /// The store's clock, for ages (see [`clock`]).
    pub clock: Arc<clock::StoreClock>,
    /// Where the fact streams' replicas stand (see [`replicas`]).
    pub replicas: Arc<replicas::StreamReplicas>,
}

impl Store {
    /// Connects to the zone's nats-server and provisions streams, consumers
    /// and buckets exactly as configured (every option set explicitly).
    /// `url`: one server, or a cluster's servers comma-separated.
    pub async fn open(
        url: &str,
        login: &Login,
        config: Arc<ZoneConfig>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let (client, jetstream) = connect::connect(url, login, &config).await?;
        let direct =
            Arc::new(direct::DirectGets::start(client.clone(), config.nats.request_timeout).await?);
        // An external server's store is not the node's to watch.
        let store_dir = config
            .nats
            .is_embedded()
            .then_some(config.nats.store_dir.as_path());
        let disk = disk::DiskWatch::new(
            store_dir,
            &config.key_index_path(),
            config.nats.store_free_bytes_min,
            metrics.clone(),
        );
        disk.spawn_poller();
        let objects = Arc::new(
            Objects::open(
                jetstream.clone(),
                config.clone(),
                direct.clone(),
                disk.clone(),
            )
            .await?,
        );
        let facts = FactLog::open(
            jetstream.clone(),
            config.clone(),
            objects.clone(),
            disk.clone(),
            metrics.clone(),
        )
        .await?;
        let commit = Arc::new(commit::GroupCommit::start(
            facts.clone(),
            config.commit.clone(),
            config.batches_in_flight_max(),
            metrics.clone(),
        ));
        let clock = Arc::new(clock::StoreClock::new(
            config.clock_skew_max,
            metrics.clone(),
        ));
        let consumers =
            Arc::new(Consumers::open(client.clone(), &facts, config.clone(), metrics).await?);
        let jetstream_health =
            health::JetStreamHealth::start(jetstream.clone(), facts.metrics().clone());
        let replicas = replicas::StreamReplicas::start(facts.clone(), facts.metrics().clone());
        Ok(Self {
            client,
            jetstream,
            facts,
            commit,
            consumers,
            objects,
            disk,
            jetstream_health,
            clock,
            replicas,
        })
    }

    /// Why the node cannot take appends now (a one-line reason that starts
    /// with a reason token), or None when it is ready: `/healthz`.
    pub fn not_ready(&self) -> Option<String> {
        if let state @ (async_nats::connection::State::Disconnected
        | async_nats::connection::State::Pending) = self.client.connection_state()
        {
            return Some(format!(
                "store_disconnected: the zone's nats-server is not connected ({state:?})"
            ));
        }
        if let Some(why) = self.jetstream_health.problem() {
            return Some(format!("jetstream_unavailable: {why}"));
        }
        if let Some(why) = self.jetstream_health.storage_fault() {
            return Some(format!("store_storage_error: {why}"));
        }
        if let Some(why) = self.disk.full() {
            return Some(format!("disk_full: {why}"));
        }
        if !self.facts.index_ready() {
            return Some("key_index_catching_up: the idempotency key index is still reading the stored facts (bsfg_key_index_ready 0)".into());
        }
        None
    }
}
