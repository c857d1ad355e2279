//! The bare bridge: one async-nats client moving a stream from the hub's
//! domain into the leaf's, the substrate's ceiling for a crossing that
//! stores one JetStream message per fact.

use crate::publish::create_plain_stream;
use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use std::time::Instant;

/// Acknowledgements of the bridge's publishes awaited at once. 1,024 was
/// 0.03–0.06× of native sourcing's rate faster than 256 here; the bridge is
/// a ceiling, so it gets the faster one.
const BRIDGE_WINDOW: usize = 1024;

/// Messages per pull of the bridge. async-nats asks for the next batch when
/// half of one is left, so half a batch must outlast a round trip: 2,500
/// messages are ~60 ms at the bridge's rate, three 20 ms round trips.
const BRIDGE_PULL_BATCH: usize = 5000;

/// Moves `count` messages of the hub's `SRC` into a new stream `name` of
/// the leaf's domain: a pipelined pull (batches of [`BRIDGE_PULL_BATCH`]), one publish per
/// message with the source sequence as `Nats-Msg-Id`, and the pull
/// acknowledged cumulatively (every 500 messages) only once the publishes
/// before it are acknowledged, as a receiver-pulled crossing must. Returns
/// messages/s, counted until the last publish is acknowledged.
pub(super) async fn bare_bridge(
    hub: &jetstream::Context,
    leaf: &jetstream::Context,
    name: &str,
    count: u64,
) -> anyhow::Result<f64> {
    use async_nats::jetstream::consumer;
    create_plain_stream(leaf, name).await?;
    let consumer: consumer::PullConsumer = hub
        .get_stream("SRC")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.into()),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BRIDGE_PULL_BATCH)
        .messages()
        .await?;
    let t = Instant::now();
    let mut inflight = std::collections::VecDeque::with_capacity(BRIDGE_WINDOW);
    let settle = |(ack, source): (
        jetstream::context::PublishAckFuture,
        Option<jetstream::Message>,
    )| async move {
        ack.await?;
        if let Some(m) = source {
            m.ack()
                .await
                .map_err(|e| anyhow::anyhow!("ack on the hub: {e}"))?;
        }
        Ok::<_, anyhow::Error>(())
    };
    for taken in 1..=count {
        let m = messages
            .next()
            .await
            .context("the hub's pull ended")?
            .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
        let sequence = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", sequence.to_string().as_str());
        let ack = leaf
            .publish_with_headers(format!("{name}.{}", m.subject), headers, m.payload.clone())
            .await?;
        inflight.push_back((ack, (taken % 500 == 0 || taken == count).then_some(m)));
        if inflight.len() >= BRIDGE_WINDOW {
            settle(inflight.pop_front().expect("window is not empty")).await?;
        }
    }
    while let Some(next) = inflight.pop_front() {
        settle(next).await?;
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let stored = leaf.get_stream(name).await?.info().await?.state.messages;
    anyhow::ensure!(
        stored == count,
        "the bridge stored {stored} of {count} messages"
    );
    Ok(rate)
}
