//! Provisioning a consumer: its JetStream consumer kept (limits and filter
//! applied with an update) or created, from its configuration.

use super::*;

/// One configured consumer's cursor: its JetStream consumer, kept or
/// created, with its frontier published.
pub(super) async fn open_cursor(
    c: &ConsumerConfig,
    stream: &async_nats::jetstream::stream::Stream,
    config: &ZoneConfig,
    metrics: &Metrics,
) -> anyhow::Result<Cursor> {
    let mut consumer_config = consumer_template(c, config);
    let mut consumer = attach_consumer(c, stream, &mut consumer_config).await?;
    let info = consumer.info().await?.clone();
    let frontier = info.ack_floor.stream_sequence;
    metrics
        .frontier_offset
        .get_or_create(&vec![("consumer".to_string(), c.name.clone())])
        .set(frontier as i64);
    let delivery = Delivery {
        frontier,
        unconfirmed: BTreeMap::new(),
        delivered_max: frontier,
        ..Default::default()
    };
    Ok(Cursor {
        config: c.clone(),
        puller: tokio::sync::Mutex::new(Puller::new(
            consumer,
            info.delivered.consumer_sequence,
            config.nats.request_timeout,
        )),
        template: consumer_config,
        stream: stream.clone(),
        delivery: Mutex::new(delivery),
    })
}

/// The JetStream consumer configuration of a configured consumer.
fn consumer_template(c: &ConsumerConfig, config: &ZoneConfig) -> pull::Config {
    let filter_subjects = c
        .kinds
        .iter()
        .map(|k| crate::store::facts::fact_subject(&c.category, k))
        .collect();
    pull::Config {
        durable_name: Some(c.name.clone()),
        description: Some(format!("BSFG consumer {} of zone {}", c.name, config.zone)),
        // Replaced in attach_consumer: the configured start for a new
        // consumer, the existing one's (immutable) policy for a kept one.
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::All,
        ack_wait: c.redeliver_after,
        max_deliver: -1,
        filter_subjects,
        replay_policy: ReplayPolicy::Instant,
        max_waiting: 64,
        max_ack_pending: i64::from(c.unconfirmed_max),
        max_batch: i64::from(config.fetch.facts_max),
        max_bytes: config.fetch.bytes_max as i64,
        max_expires: config.fetch.wait_max + Duration::from_secs(1),
        inactive_threshold: Duration::ZERO,
        // One replica even on a replicated stream: a replicated consumer
        // (nats-server 2.15.1, R3) numbers its deliveries with jumps of a
        // pull's size and answers a reset with delivered sequence 0, which
        // the puller's no-lost-delivery check (see `puller`) reads as gaps
        // on every fetch. The cursor lives on one of the stream's servers.
        num_replicas: 1,
        memory_storage: false,
        headers_only: false,
        ..Default::default()
    }
}

/// Keeps the existing JetStream consumer (its deliver policy, the
/// configuration applied, its unconfirmed facts redelivered) or creates it
/// from the configured start. Sets `consumer_config`'s deliver policy.
async fn attach_consumer(
    c: &ConsumerConfig,
    stream: &async_nats::jetstream::stream::Stream,
    consumer_config: &mut pull::Config,
) -> anyhow::Result<consumer::Consumer<pull::Config>> {
    match stream.consumer_info(&c.name).await {
        Ok(existing) => {
            consumer_config.deliver_policy = existing.config.deliver_policy;
            let mut kept = stream
                .update_consumer(consumer_config.clone())
                .await
                .with_context(|| format!("applying the configuration of consumer {} to its existing JetStream consumer", c.name))?;
            kept.reset(None).await.with_context(|| {
                format!("redelivering the unconfirmed facts of consumer {}", c.name)
            })?;
            Ok(kept)
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            let last_sequence = stream.clone().info().await?.state.last_sequence;
            consumer_config.deliver_policy = deliver_policy(&c.start, last_sequence)?;
            Ok(stream.create_consumer(consumer_config.clone()).await?)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading consumer {}", c.name))),
    }
}

/// The delivery policy of a new consumer. `latest` starts after the last
/// fact stored now (a start sequence rather than JetStream's `New`, so a
/// later replay can be a reset).
fn deliver_policy(start: &StartPosition, last_sequence: u64) -> anyhow::Result<DeliverPolicy> {
    Ok(match start {
        StartPosition::Earliest => DeliverPolicy::All,
        StartPosition::Latest => DeliverPolicy::ByStartSequence {
            start_sequence: last_sequence + 1,
        },
        StartPosition::Offset(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: (*seq).max(1),
        },
        StartPosition::Time(text) => DeliverPolicy::ByStartTime {
            start_time: parse_start_time(text)?,
        },
    })
}

pub(super) fn parse_start_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("consumer start time {text:?} is not RFC 3339: {e}"))
}
