//! Batched idempotency-key look-ups (JetStream "multi last" direct get).
//!
//! Why: a key may already live in a category other than the one a fact is
//! routed to (same key, different kind), and JetStream's atomic
//! expected-last-subject-sequence guard only covers one stream. Looking each
//! key up with its own direct get cost a NATS round trip per fact and per
//! other category, more than the publish itself. One `multi_last` request
//! per category answers for a whole batch of keys: the server replies with
//! the last message of every matching subject, then an end-of-batch marker
//! (`204 EOB`), or a single `404` when nothing matches.

use super::unavailable;
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::Rejection;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::time::Duration;

/// The server refuses multi-subject requests matching more subjects.
pub const SUBJECTS_PER_REQUEST_MAX: usize = 1024;

/// The last stored message of every subject in `subjects` that exists in
/// `stream`, keyed by its subject's last token (the key token).
pub async fn last_by_key(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    timeout: Duration,
) -> Result<HashMap<String, StreamMessage>, Rejection> {
    let mut found = HashMap::new();
    for chunk in subjects.chunks(SUBJECTS_PER_REQUEST_MAX) {
        tokio::time::timeout(timeout, request(client, stream, chunk, &mut found))
            .await
            .map_err(|_| unavailable("looking up idempotency keys", format!("no complete answer within {timeout:?}")))??;
    }
    Ok(found)
}

async fn request(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    found: &mut HashMap<String, StreamMessage>,
) -> Result<(), Rejection> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| unavailable("subscribing for key look-ups", e))?;
    let body = serde_json::to_vec(&serde_json::json!({ "multi_last": subjects, "batch": subjects.len() })).expect("json");
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
        .await
        .map_err(|e| unavailable("requesting key look-ups", e))?;
    while let Some(message) = replies.next().await {
        match message.status.map(u16::from) {
            None | Some(200) => {
                let message = StreamMessage::try_from(message).map_err(|e| unavailable("decoding a key look-up reply", e))?;
                let token = message.subject.rsplit('.').next().unwrap_or_default().to_string();
                found.insert(token, message);
            }
            // End of batch, or no subject matched at all.
            Some(204) | Some(404) => return Ok(()),
            Some(code) => {
                return Err(unavailable(
                    "looking up idempotency keys",
                    format!("status {code} {}", message.description.unwrap_or_default()),
                ));
            }
        }
    }
    Err(unavailable("looking up idempotency keys", "the reply subscription closed"))
}
