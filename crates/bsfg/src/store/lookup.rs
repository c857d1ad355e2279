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
//!
//! Replies arrive on one long-lived wildcard subscription and are routed to
//! their request by the last subject token. A subscription per request would
//! cost a SUB and an UNSUB each, and every subscription change invalidates
//! nats-server's subject-match cache that every publish goes through.

use super::unavailable;
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::Rejection;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The server refuses multi-subject requests matching more subjects.
pub const SUBJECTS_PER_REQUEST_MAX: usize = 1024;

type Waiting = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<async_nats::Message>>>>;

pub struct KeyLookups {
    client: async_nats::Client,
    reply_prefix: String,
    waiting: Waiting,
    next_request: AtomicU64,
    timeout: Duration,
    /// Dropping it stops the reply router.
    _stop: oneshot::Sender<()>,
}

impl KeyLookups {
    pub async fn start(client: async_nats::Client, timeout: Duration) -> anyhow::Result<Self> {
        let reply_prefix = format!("{}.keys", client.new_inbox());
        let mut replies = client.subscribe(format!("{reply_prefix}.*")).await?;
        let waiting: Waiting = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let router_waiting = waiting.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => return,
                    message = replies.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                let request = message.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                if let Some(request) = request {
                    if let Some(tx) = router_waiting.lock().expect("router lock").get(&request) {
                        // The request may have timed out and gone: fine.
                        let _ = tx.send(message);
                    }
                }
            }
        });
        Ok(Self { client, reply_prefix, waiting, next_request: AtomicU64::new(1), timeout, _stop: stop })
    }

    /// The last stored message of every subject in `subjects` that exists in
    /// `stream`, keyed by its subject's last token (the key token).
    pub async fn last_by_key(&self, stream: &str, subjects: &[String]) -> Result<HashMap<String, StreamMessage>, Rejection> {
        let mut found = HashMap::new();
        for chunk in subjects.chunks(SUBJECTS_PER_REQUEST_MAX) {
            tokio::time::timeout(self.timeout, self.request(stream, chunk, &mut found))
                .await
                .map_err(|_| unavailable("looking up idempotency keys", format!("no complete answer within {:?}", self.timeout)))??;
        }
        Ok(found)
    }

    async fn request(&self, stream: &str, subjects: &[String], found: &mut HashMap<String, StreamMessage>) -> Result<(), Rejection> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut replies) = mpsc::unbounded_channel();
        // At most subjects.len() + 1 replies: the channel is bounded by the request.
        self.waiting.lock().expect("router lock").insert(id, tx);
        let _registered = Registered { waiting: &self.waiting, id };
        let body = serde_json::to_vec(&serde_json::json!({ "multi_last": subjects, "batch": subjects.len() })).expect("json");
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), format!("{}.{id}", self.reply_prefix), body.into())
            .await
            .map_err(|e| unavailable("requesting key look-ups", e))?;
        while let Some(message) = replies.recv().await {
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
        Err(unavailable("looking up idempotency keys", "the reply router stopped"))
    }
}

/// Unregisters a request however it ends (answer, error or timeout).
struct Registered<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiting.lock().expect("router lock").remove(&self.id);
    }
}
