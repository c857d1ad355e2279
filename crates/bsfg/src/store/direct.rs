//! Batched reads of stored messages (JetStream direct get with `batch`),
//! for object chunks. Why: async-nats' object reader is an ordered push
//! consumer that may read ahead of a slow receiver as far as JetStream flow
//! control lets it. Asking for a few chunks at a time bounds a GetObject
//! stream to its window.
//!
//! Replies arrive on one long-lived wildcard subscription
//! ([`super::reply_router::ReplyRouter`]) and are routed to their request by the last
//! subject token.

use super::failure::unavailable;
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::Rejection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Waiting = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<async_nats::Message>>>>;

pub struct DirectGets {
    client: async_nats::Client,
    replies: super::reply_router::ReplyRouter,
    waiting: Waiting,
    next_request: AtomicU64,
    timeout: Duration,
}

impl DirectGets {
    pub async fn start(client: async_nats::Client, timeout: Duration) -> anyhow::Result<Self> {
        let waiting: Waiting = Arc::default();
        let router_waiting = waiting.clone();
        let replies =
            super::reply_router::ReplyRouter::start(&client, "direct", move |tail, message| {
                if let Ok(request) = tail.parse::<u64>()
                    && let Some(tx) = router_waiting.lock().expect("router lock").get(&request)
                {
                    // The request may have timed out and gone: fine.
                    let _ = tx.send(message);
                }
            })
            .await?;
        Ok(Self {
            client,
            replies,
            waiting,
            next_request: AtomicU64::new(1),
            timeout,
        })
    }

    /// Up to `batch` messages of `subject` from sequence `from` on, at most
    /// about `bytes_max` bytes, in sequence order.
    pub async fn next_batch(
        &self,
        stream: &str,
        subject: &str,
        from: u64,
        batch: usize,
        bytes_max: usize,
    ) -> Result<Vec<StreamMessage>, Rejection> {
        let body = serde_json::json!({ "seq": from.max(1), "next_by_subj": subject, "batch": batch, "max_bytes": bytes_max });
        self.request(stream, body, "reading stored chunks").await
    }

    /// One direct-get request and all its replies, within the timeout.
    async fn request(
        &self,
        stream: &str,
        body: serde_json::Value,
        what: &str,
    ) -> Result<Vec<StreamMessage>, Rejection> {
        tokio::time::timeout(self.timeout, self.request_untimed(stream, body, what))
            .await
            .map_err(|_| {
                unavailable(
                    what,
                    format!("no complete answer within {:?}", self.timeout),
                )
            })?
    }

    async fn request_untimed(
        &self,
        stream: &str,
        body: serde_json::Value,
        what: &str,
    ) -> Result<Vec<StreamMessage>, Rejection> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        // Replies are bounded by the request (its batch, plus the marker).
        let (tx, mut replies) = mpsc::unbounded_channel();
        self.waiting.lock().expect("router lock").insert(id, tx);
        let _registered = Registered {
            waiting: &self.waiting,
            id,
        };
        let body = serde_json::to_vec(&body).expect("json");
        let reply = self.replies.reply_to(format_args!("{id}"));
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), reply, body.into())
            .await
            .map_err(|e| unavailable(what, e))?;
        let mut messages = Vec::new();
        while let Some(message) = replies.recv().await {
            match message.status.map(u16::from) {
                None | Some(200) => {
                    messages.push(
                        StreamMessage::try_from(message)
                            .map_err(|e| unavailable(what, format!("undecodable reply: {e}")))?,
                    );
                }
                // End of batch, or nothing matched at all.
                Some(204) | Some(404) => return Ok(messages),
                Some(code) => {
                    return Err(unavailable(
                        what,
                        format!("status {code} {}", message.description.unwrap_or_default()),
                    ));
                }
            }
        }
        Err(unavailable(what, "the reply router stopped"))
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
