//! The load the crossing phases (and the `ha` mode's catch-up) offer at
//! plant-a: facts appended through its boundary service.

use crate::{now_ms, object_json};
use anyhow::bail;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::{Envelope, Fact};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fact `i` of `kind` (subject `<kind>:B<i>`), its object `payload`.
pub(super) fn fact(kind: &str, i: u64, payload: &str) -> Fact {
    Fact {
        subject: format!("{kind}:B{i}"),
        predicate: "step_completed".into(),
        object_json: payload.to_string(),
        ..Default::default()
    }
}

/// Message `<tag>-<i>` from plant-a to `to`.
pub(super) fn envelope(tag: &str, i: u64, to: &str) -> Envelope {
    Envelope {
        message_id: format!("{tag}-{i}"),
        from_zone: "plant-a".into(),
        to_zone: to.into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    }
}

/// Appends `n` facts at plant-a with `concurrency` in flight. Returns facts/s.
pub(crate) async fn append_many(
    client: &BsfgClient,
    concurrency: usize,
    n: u64,
    tag: &str,
    kind: &str,
    to: &str,
    size: usize,
) -> anyhow::Result<f64> {
    let payload = Arc::new(object_json(size));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, payload, tag, kind, to) = (
            client.clone(),
            next.clone(),
            payload.clone(),
            tag.to_string(),
            kind.to_string(),
            to.to_string(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut tries = 0;
                while let Err(e) = client
                    .append(envelope(&tag, i, &to), fact(&kind, i, &payload))
                    .await
                {
                    tries += 1;
                    if tries > 20 {
                        bail!("append {tag}-{i}: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A message-id prefix: `name` and the time in hex milliseconds.
pub(crate) fn tag(name: &str) -> String {
    format!("{name}-{:x}", now_ms())
}
