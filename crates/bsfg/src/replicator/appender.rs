//! The appender: appends the screened facts to the local log and audits
//! them (accepted, refused), then hands the batch's offset to the
//! confirmer.

use super::Context;
use super::link::{Link, Stage};
use super::screener::{Screened, retriable, screen_until_settled};
use crate::client::BsfgClient;
use crate::metrics::labels;
use bsfg_domain::Rejection;
use bsfg_proto::bsfg::v1::__buffa::view::FetchFactsResponseView;
use std::sync::Arc;

/// Appends each screened batch, in order, retrying from the first fact a
/// failure that may pass stopped; audits what it accepted and hands the
/// batch's `last_delivered_offset` to the confirmer.
pub(super) async fn appender(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut batches: tokio::sync::mpsc::Receiver<Screened>,
    confirms: tokio::sync::watch::Sender<u64>,
) {
    let c = link.config.clone();
    let mut backoff = link.backoff(3);
    while let Some(Screened {
        received,
        mut pending,
        mut pending_at,
    }) = batches.recv().await
    {
        let batch = received.reborrow();
        // Append the screened facts in one pipelined batch. On a retriable
        // failure, retry from the first failed fact on: what follows it was
        // either refused too or is answered as a duplicate, and JetStream
        // failures of one connection come in order.
        let mut accepted = Vec::new();
        while !pending.is_empty() {
            // The appends take the items (no copy per attempt); a retry
            // screens the facts it needs again from the batch.
            let (settled, retry_reason) =
                append_settled(&link, &cx, std::mem::take(&mut pending), &mut accepted).await;
            pending_at.drain(..settled);
            if pending_at.is_empty() {
                break;
            }
            let reason = retry_reason.unwrap_or_default();
            tracing::warn!(
                link = %c.peer,
                remaining = pending_at.len(),
                error = %reason,
                "local append failed; retrying"
            );
            link.set_stall(Stage::Append, Some(reason), &cx.metrics);
            backoff.wait().await;
            let mut still_at = Vec::with_capacity(pending_at.len());
            for at in pending_at {
                if let Some(item) =
                    screen_until_settled(&link, &client, &cx, &batch.facts[at], &mut backoff).await
                {
                    pending.push(item);
                    still_at.push(at);
                }
            }
            pending_at = still_at;
        }
        backoff.reset();
        link.set_stall(Stage::Append, None, &cx.metrics);
        if !accepted.is_empty() {
            record_accepted(&link, &cx, &accepted, batch).await;
        }
        // This batch is through: the pipeline's oldest.
        link.freshness.lock().unwrap().in_pipeline.pop_front();
        link.refresh_lag(Some(&cx.metrics));
        // Everything up to last_delivered_offset is durable here (or was
        // refused and audited): confirm it, cumulatively. The confirm runs
        // beside the next batch's append, not before it, so a round trip to
        // the peer does not stall the pipeline.
        confirms.send_modify(|target| *target = (*target).max(batch.last_delivered_offset));
    }
}

/// Appends `pending` in one pipelined batch, in order, and settles each
/// result up to the first retriable failure: accepted (counted, its id
/// added to `accepted`) or refused (audited). Returns how many settled and,
/// if a retriable failure stopped it, why.
async fn append_settled(
    link: &Link,
    cx: &Context,
    pending: Vec<crate::store::facts::AppendItem>,
    accepted: &mut Vec<String>,
) -> (usize, Option<String>) {
    let ids: Vec<String> = pending
        .iter()
        .map(|i| format!("{}/{}", i.envelope.from_zone, i.envelope.message_id))
        .collect();
    let origin_offsets: Vec<u64> = pending
        .iter()
        .map(|i| i.provenance.as_ref().map(|p| p.origin_offset).unwrap_or(0))
        .collect();
    let results = cx
        .store
        .facts
        .append_batch(pending, crate::store::facts::Order::AsGiven)
        .await;
    let first_retriable = results
        .iter()
        .position(|r| matches!(r, Err(e) if retriable(e)));
    let settled = first_retriable.unwrap_or(results.len());
    // Shown by `bsfg status`: a link stuck on its own zone's store
    // reads "normal" otherwise.
    let retry_reason = first_retriable
        .and_then(|at| results[at].as_ref().err())
        .map(|e| format!("local append: {e}"));
    for ((result, id), origin_offset) in results
        .into_iter()
        .zip(ids)
        .zip(origin_offsets)
        .take(settled)
    {
        match result {
            Ok(_) => {
                link.status.lock().unwrap().facts_replicated += 1;
                cx.metrics
                    .replicated_facts_total
                    .get_or_create(&labels(&[("link", &link.name)]))
                    .inc();
                accepted.push(id);
            }
            Err(r) => refuse(link, cx, &id, origin_offset, r).await,
        }
    }
    (settled, retry_reason)
}

/// Audits and counts a fact this zone refuses; the link moves past it.
pub(super) async fn refuse(link: &Link, cx: &Context, id: &str, origin_offset: u64, r: Rejection) {
    cx.metrics
        .crossing_refusals_total
        .get_or_create(&labels(&[
            ("peer", &link.name),
            ("direction", "import"),
            ("reason", r.reason.as_str()),
        ]))
        .inc();
    link.status.lock().unwrap().facts_refused += 1;
    cx.audit
        .record(link.audit_event(
            format!("{id} origin offset {origin_offset}"),
            "refused",
            r.reason.to_string(),
            r.message,
        ))
        .await;
}

/// Most bytes of fact keys named by one audit record. An audit record is a
/// fact like any other (object_json ≤ 192 KiB by default); a batch of up to
/// 10,000 keys of up to 128-byte message ids, doubled by JSON escaping in
/// the worst case, would not fit in one, and a record that does not fit is
/// not stored. 48 KiB, doubled, leaves room for the other fields.
const AUDIT_KEYS_BYTES_MAX: usize = 48 * 1024;

/// Audits the accepted facts of a batch: one record per chunk of keys.
async fn record_accepted(
    link: &Link,
    cx: &Context,
    ids: &[String],
    batch: &FetchFactsResponseView<'_>,
) {
    let chunks = key_chunks(ids, AUDIT_KEYS_BYTES_MAX);
    let parts = chunks.len();
    for (part, (keys, count)) in chunks.into_iter().enumerate() {
        let detail = if parts == 1 {
            format!(
                "{count} facts through peer offset {}",
                batch.last_delivered_offset
            )
        } else {
            format!(
                "{count} facts (part {} of {parts}) through peer offset {}",
                part + 1,
                batch.last_delivered_offset
            )
        };
        cx.audit
            .record(link.audit_event(keys, "accepted", "replicated".into(), detail))
            .await;
    }
}

/// `ids` joined by spaces, in order, in chunks of at most `bytes_max`
/// bytes (an id longer than that gets a chunk of its own); each with the
/// number of ids it holds.
fn key_chunks(ids: &[String], bytes_max: usize) -> Vec<(String, usize)> {
    let mut chunks: Vec<(String, usize)> = Vec::new();
    for id in ids {
        match chunks.last_mut() {
            Some((keys, count)) if keys.len() + 1 + id.len() <= bytes_max => {
                keys.push(' ');
                keys.push_str(id);
                *count += 1;
            }
            _ => chunks.push((id.clone(), 1)),
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::key_chunks;

    #[test]
    fn audited_keys_are_chunked_in_order_within_the_bound() {
        let ids: Vec<String> = (0..1000)
            .map(|i| format!("plant-a/{}-{i}", "\"".repeat(100)))
            .collect();
        let chunks = key_chunks(&ids, 10_000);
        assert!(
            chunks.len() > 1,
            "1000 ids of ~110 bytes need several chunks of 10,000 bytes"
        );
        assert!(
            chunks.iter().all(|(keys, _)| keys.len() <= 10_000),
            "every chunk within the bound"
        );
        let rejoined: Vec<&str> = chunks
            .iter()
            .flat_map(|(keys, _)| keys.split(' '))
            .collect();
        assert_eq!(
            rejoined,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "every id once, in order"
        );
        assert_eq!(chunks.iter().map(|(_, n)| n).sum::<usize>(), ids.len());
        assert_eq!(
            key_chunks(&ids[..3], 10_000).len(),
            1,
            "a small batch is one record"
        );
        assert_eq!(key_chunks(&[], 10_000), vec![]);
    }
}
