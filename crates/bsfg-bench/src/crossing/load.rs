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

/// Appends `n` facts at plant-a as AppendFacts requests of `batch` facts,
/// `concurrency` requests in flight; a refused fact is sent again with its
/// batch's other refused facts. Returns facts/s.
pub(crate) async fn append_batched(
    client: &BsfgClient,
    (concurrency, batch): (usize, usize),
    n: u64,
    tag: &str,
    (kind, to): (&str, &str),
    size: usize,
) -> anyhow::Result<f64> {
    let payload = Arc::new(object_json(size));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, payload) = (client.clone(), next.clone(), payload.clone());
        let (tag, kind, to) = (tag.to_string(), kind.to_string(), to.to_string());
        workers.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch as u64, std::sync::atomic::Ordering::Relaxed);
                if first >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let ids: Vec<u64> = (first..n.min(first + batch as u64)).collect();
                let facts = |ids: &[u64]| -> Vec<(Envelope, Fact)> {
                    let f = |&i: &u64| (envelope(&tag, i, &to), fact(&kind, i, &payload));
                    ids.iter().map(f).collect()
                };
                send_batch(&client, ids, &facts).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One AppendFacts batch until every fact of it is acknowledged (at most
/// 20 tries).
async fn send_batch(
    client: &BsfgClient,
    mut ids: Vec<u64>,
    facts: &impl Fn(&[u64]) -> Vec<(Envelope, Fact)>,
) -> anyhow::Result<()> {
    for _ in 0..20 {
        let refused: Vec<u64> = match client.append_facts(facts(&ids)).await {
            Ok(results) => ids
                .iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|(&i, _)| i)
                .collect(),
            Err(_) => ids.clone(),
        };
        if refused.is_empty() {
            return Ok(());
        }
        ids = refused;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} facts of a batch still refused after 20 tries",
        ids.len()
    )
}
