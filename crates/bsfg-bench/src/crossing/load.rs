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
    let (client, facts) = (client.clone(), Facts::new(tag, (kind, to), size));
    drive((concurrency, 1), n, move |ids| {
        let (client, facts) = (client.clone(), facts.clone());
        async move {
            let i = ids[0];
            let mut tries = 0;
            while let Err(e) = client.append(facts.envelope(i), facts.fact(i)).await {
                tries += 1;
                if tries > 20 {
                    bail!("append {}-{i}: {e:?}", facts.tag);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
    })
    .await
}

/// What the loaders append: fact `i` is `<tag>-<i>`, of `kind`, to `to`.
#[derive(Clone)]
struct Facts {
    tag: Arc<str>,
    kind: Arc<str>,
    to: Arc<str>,
    payload: Arc<str>,
}

impl Facts {
    fn new(tag: &str, (kind, to): (&str, &str), size: usize) -> Self {
        Self {
            tag: tag.into(),
            kind: kind.into(),
            to: to.into(),
            payload: object_json(size).into(),
        }
    }

    fn envelope(&self, i: u64) -> Envelope {
        envelope(&self.tag, i, &self.to)
    }

    fn fact(&self, i: u64) -> Fact {
        fact(&self.kind, i, &self.payload)
    }
}

/// `workers` tasks, each taking the next `step` ids below `n` and awaiting
/// `append` on them until none are left. Returns facts/s.
async fn drive<F, Fut>((workers, step): (usize, usize), n: u64, append: F) -> anyhow::Result<f64>
where
    F: Fn(Vec<u64>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, append) = (next.clone(), append.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(step as u64, std::sync::atomic::Ordering::Relaxed);
                if first >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                append((first..n.min(first + step as u64)).collect()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
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
    let (client, facts) = (client.clone(), Facts::new(tag, (kind, to), size));
    drive((concurrency, batch), n, move |ids| {
        let (client, facts) = (client.clone(), facts.clone());
        async move {
            let build = |ids: &[u64]| -> Vec<(Envelope, Fact)> {
                ids.iter()
                    .map(|&i| (facts.envelope(i), facts.fact(i)))
                    .collect()
            };
            send_batch(&client, ids, &build).await
        }
    })
    .await
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
