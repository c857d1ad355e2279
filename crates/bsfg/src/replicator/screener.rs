//! The screener: the verdict on each fetched fact (validation, origin,
//! import policy), its artifacts made present here. A refusal is audited
//! and passed; a failure of the link or of this zone's store is retried.

use super::Context;
use super::appender::refuse;
use super::artifacts::pull_object;
use super::backoff::Backoff;
use super::fetcher::Batch;
use super::link::{Link, Stage};
use crate::client::BsfgClient;
use bsfg_domain::policy::Crossing;
use bsfg_domain::validate::ValidFact;
use bsfg_domain::{Code, Reason, Rejection, validate};
use bsfg_proto::bsfg::v1::__buffa::view::StoredFactView;
use bsfg_proto::bsfg::v1::{AttachmentRef, Envelope, Fact, Provenance};
use buffa::DecodeError;
use buffa::MessageView as _;
use std::sync::Arc;

/// Refusals of this zone's own store (not the peer's, not the fact's): the
/// link is stalled on them, not cut.
fn is_local_store_refusal(r: &Rejection) -> bool {
    matches!(
        r.reason,
        Reason::DiskFull | Reason::BucketFull | Reason::SpoolUnavailable
    )
}

/// Whether a failure is worth retrying (link or local store) rather than a
/// verdict on the fact.
pub(super) fn retriable(r: &Rejection) -> bool {
    matches!(
        r.code,
        Code::Unavailable | Code::ResourceExhausted | Code::Internal
    )
}

/// A batch as received, with the facts screened in to append and their
/// positions in the batch.
pub(super) struct Screened {
    pub(super) received: Batch,
    pub(super) pending: Vec<crate::store::facts::AppendItem>,
    pub(super) pending_at: Vec<usize>,
}

/// Screens each fact of each batch (validation, origin, import policy,
/// artifacts), in order; a refusal is audited and passed, a link or store
/// error is retried.
pub(super) async fn screener(
    link: Arc<Link>,
    client: BsfgClient,
    cx: Arc<Context>,
    mut batches: tokio::sync::mpsc::Receiver<Batch>,
    screened: tokio::sync::mpsc::Sender<Screened>,
) {
    let mut backoff = link.backoff(2);
    while let Some(received) = batches.recv().await {
        let batch = received.reborrow();
        let mut pending = Vec::with_capacity(batch.facts.len());
        let mut pending_at = Vec::with_capacity(batch.facts.len());
        for (at, fact) in batch.facts.iter().enumerate() {
            if let Some(item) = screen_until_settled(&link, &client, &cx, fact, &mut backoff).await
            {
                pending.push(item);
                pending_at.push(at);
            }
        }
        backoff.reset();
        if screened
            .send(Screened {
                received,
                pending,
                pending_at,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `screen`, retried with backoff until it settles: the fact to append, or
/// None if it was refused (and audited). The caller resets the backoff.
pub(super) async fn screen_until_settled(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    stored: &StoredFactView<'_>,
    backoff: &mut Backoff,
) -> Option<crate::store::facts::AppendItem> {
    loop {
        match screen(link, client, cx, stored).await {
            Ok(item) => {
                link.set_stall(Stage::Screen, None, &cx.metrics);
                return item;
            }
            Err(r) if is_local_store_refusal(&r) => {
                tracing::warn!(
                    link = %link.name,
                    error = %r,
                    "could not store an artifact; retrying"
                );
                link.set_stall(
                    Stage::Screen,
                    Some(format!("local store: {r}")),
                    &cx.metrics,
                );
                backoff.wait().await;
            }
            Err(r) => {
                link.status.lock().unwrap().last_error = r.to_string();
                tracing::warn!(
                    link = %link.name,
                    error = %r,
                    "could not fetch an artifact yet; retrying"
                );
                backoff.wait().await;
            }
        }
    }
}

/// Decides whether a pulled fact may enter this zone and makes its
/// artifacts present. `Ok(Some)` to append, `Ok(None)` refused and audited,
/// `Err` retriable (link or local store).
async fn screen(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    stored: &StoredFactView<'_>,
) -> Result<Option<crate::store::facts::AppendItem>, Rejection> {
    let origin_offset = stored.provenance.as_option().map_or(0, |p| p.origin_offset);
    let (envelope, fact, provenance) = match decode(stored) {
        Ok(decoded) => decoded,
        Err(e) => {
            let id = format!("offset {}", stored.offset);
            let r = Rejection::new(Code::DataLoss, Reason::UndecodableFact, e.to_string());
            refuse(link, cx, &id, origin_offset, r).await;
            return Ok(None);
        }
    };
    let id = format!("{}/{}", envelope.from_zone, envelope.message_id);
    let valid = match admit(link, cx, &envelope, fact) {
        Ok(v) => v,
        Err(r) => {
            refuse(link, cx, &id, origin_offset, r).await;
            return Ok(None);
        }
    };
    for attachment in &valid.fact.attachments {
        match make_present(link, client, cx, attachment).await {
            Ok(()) => {}
            Err(r) if retriable(&r) => return Err(r),
            Err(r) => {
                refuse(link, cx, &id, origin_offset, r).await;
                return Ok(None);
            }
        }
    }
    Ok(Some(crate::store::facts::AppendItem {
        envelope,
        valid,
        provenance,
    }))
}

/// Makes an attachment present here, if the import policy admits its size.
async fn make_present(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    attachment: &AttachmentRef,
) -> Result<(), Rejection> {
    match link
        .principal
        .import
        .check_object_size(attachment.size_bytes)
    {
        Err(p) => Err(Rejection::new(Code::PermissionDenied, p.reason, p.message)),
        Ok(()) => pull_object(link, client, cx, attachment).await,
    }
}

/// Copies the fact's envelope, content and provenance out of the received
/// bytes; the first of them that does not decode fails it.
fn decode(
    stored: &StoredFactView<'_>,
) -> Result<(Envelope, Fact, Option<Provenance>), DecodeError> {
    let envelope = stored
        .envelope
        .as_option()
        .map(|e| e.to_owned_message())
        .transpose();
    let fact = stored
        .fact
        .as_option()
        .map(|f| f.to_owned_message())
        .transpose();
    let provenance = stored
        .provenance
        .as_option()
        .map(|p| p.to_owned_message())
        .transpose();
    match (envelope, fact, provenance) {
        (Ok(envelope), Ok(fact), Ok(provenance)) => Ok((
            envelope.unwrap_or_default(),
            fact.unwrap_or_default(),
            provenance,
        )),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
    }
}

/// The verdict on a decoded fact, from this zone's own rules: its envelope
/// and content valid here, its origin one this peer may relay, the import
/// policy. `Err` is a refusal, never retried.
fn admit(
    link: &Link,
    cx: &Context,
    envelope: &Envelope,
    fact: Fact,
) -> Result<ValidFact, Rejection> {
    // Defence in depth: the peer should not have served it, but this zone
    // decides for itself.
    validate::envelope(envelope, &cx.zone.limits)?;
    let valid = validate::fact(fact, &cx.zone.limits)?;
    if !link
        .principal
        .origins
        .iter()
        .any(|o| o == &envelope.from_zone)
    {
        let detail = format!(
            "peer {} may relay origins {:?}, not {}",
            link.principal.name, link.principal.origins, envelope.from_zone
        );
        return Err(Rejection::new(
            Code::PermissionDenied,
            Reason::FromZoneNotAllowed,
            detail,
        ));
    }
    let category = cx.zone.category_for_kind(&valid.subject_kind).name.clone();
    let crossing = Crossing {
        category: &category,
        origin_zone: &envelope.from_zone,
        kind: &valid.subject_kind,
        predicate: &valid.fact.predicate,
        fact_bytes: valid.fact.object_json.len(),
    };
    link.principal
        .import
        .check(&crossing)
        .map_err(|p| Rejection::new(Code::PermissionDenied, p.reason, p.message))?;
    Ok(valid)
}
