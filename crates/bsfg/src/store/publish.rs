//! JetStream publishes whose acknowledgements come back on one subscription.
//!
//! Why: async-nats' `jetstream::Context::publish` gives every message its
//! own inbox subject, a request-multiplexer entry, a oneshot channel, a
//! semaphore permit and a boxed acknowledgement future with its own timer,
//! and parses each acknowledgement into owned strings. A profile of a
//! replicating node put that machinery at about 6 % of its CPU
//! (BENCHMARKS.md, "Where the node's CPU goes"). Here an append *round*
//! registers once; its messages carry the reply subjects
//! `<prefix>.<round>.<slot>`; one router task reads every acknowledgement
//! without allocating for it and files it in the round's slot; the round is
//! woken once, when its last acknowledgement is in (or its caller's
//! deadline passes).
//!
//! A JetStream atomic batch (ADR-50) is one round of one slot: its staged
//! messages go out without a reply subject ([`Round::publish_unanswered`]),
//! its commit with the slot's, and its one acknowledgement counts the batch.
//!
//! This module only routes and reads what JetStream answers
//! (`{"stream":…,"seq":…}`, with `"batch"` and `"count"` for an atomic
//! batch; an API error; or a no-responders status); what an answer means
//! for an append is decided in `facts`.

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// Messages the router's subscription can hold undelivered; async-nats
/// drops what does not fit (a "slow consumer"), so it is set explicitly on
/// the node's connection and kept well above [`ACKS_IN_FLIGHT_MAX`].
pub const SUBSCRIPTION_CAPACITY: usize = 64 * 1024;

/// Acknowledgements awaited at once, over all rounds. A round takes one
/// permit per message (at most this many) before it publishes.
pub const ACKS_IN_FLIGHT_MAX: usize = 16 * 1024;

/// JetStream's answer to one publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    Stored {
        sequence: u64,
        duplicate: bool,
    },
    /// An atomic batch committed: `count` messages, the last at
    /// `last_sequence`, the others at the sequences before it.
    BatchStored {
        last_sequence: u64,
        count: u64,
    },
    /// A JetStream API error; `err_code` as in nats-server's errors.
    Refused {
        err_code: ErrorCode,
        description: String,
    },
    /// Nothing listens on the subject: no stream takes it.
    NoResponders,
    /// An answer that is none of the above.
    Unreadable(String),
}

#[derive(serde::Deserialize)]
struct Reply<'a> {
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    /// Set on the acknowledgement of an atomic batch's commit.
    #[serde(borrow, default)]
    batch: Option<Cow<'a, str>>,
    #[serde(default)]
    count: u64,
    #[serde(borrow)]
    error: Option<ApiError<'a>>,
}

#[derive(serde::Deserialize)]
struct ApiError<'a> {
    #[serde(default)]
    err_code: ErrorCode,
    #[serde(borrow, default)]
    description: Cow<'a, str>,
}

impl Ack {
    /// Reads a JetStream publish acknowledgement (status, then JSON body).
    pub fn read(status: Option<u16>, payload: &[u8]) -> Ack {
        match status {
            Some(503) => return Ack::NoResponders,
            Some(code) if code != 200 => return Ack::Unreadable(format!("status {code}")),
            _ => {}
        }
        match serde_json::from_slice::<Reply<'_>>(payload) {
            Ok(Reply { error: Some(e), .. }) => Ack::Refused {
                err_code: e.err_code,
                description: e.description.into_owned(),
            },
            Ok(Reply {
                seq: Some(sequence),
                batch: Some(_),
                count,
                error: None,
                ..
            }) if sequence > 0 => Ack::BatchStored {
                last_sequence: sequence,
                count,
            },
            Ok(Reply {
                seq: Some(sequence),
                duplicate,
                error: None,
                ..
            }) if sequence > 0 => Ack::Stored {
                sequence,
                duplicate,
            },
            Ok(_) => Ack::Unreadable(format!(
                "no sequence in {:?}",
                String::from_utf8_lossy(payload)
            )),
            Err(e) => Ack::Unreadable(format!("{e} in {:?}", String::from_utf8_lossy(payload))),
        }
    }
}

/// The slots of one round, filled by the router.
struct RoundAcks {
    filed: Mutex<Filed>,
    complete: Notify,
}

struct Filed {
    slots: Vec<Option<Ack>>,
    received: usize,
    /// How many were published; `usize::MAX` until the round has sent all.
    expected: usize,
}

impl RoundAcks {
    fn file(&self, slot: usize, ack: Ack) {
        let mut filed = self.filed.lock().expect("round lock");
        let filed = &mut *filed;
        // Not a slot of this round, or delivered twice: ignored.
        let Some(empty @ None) = filed.slots.get_mut(slot) else {
            return;
        };
        *empty = Some(ack);
        filed.received += 1;
        if filed.received == filed.expected {
            self.complete.notify_one();
        }
    }
}

type Rounds = Arc<Mutex<HashMap<u64, Arc<RoundAcks>>>>;

/// Publishes to JetStream with acknowledgements routed per round.
pub struct Publisher {
    client: async_nats::Client,
    acks: super::reply_router::ReplyRouter,
    rounds: Rounds,
    next_round: AtomicU64,
    permits: Semaphore,
}

impl Publisher {
    pub async fn start(client: async_nats::Client) -> anyhow::Result<Self> {
        let rounds: Rounds = Arc::default();
        let acks =
            super::reply_router::ReplyRouter::start(&client, "acks", filer(rounds.clone())).await?;
        Ok(Self {
            client,
            acks,
            rounds,
            next_round: AtomicU64::new(1),
            permits: Semaphore::new(ACKS_IN_FLIGHT_MAX),
        })
    }

    /// A round of up to `slots` publishes; waits while too many
    /// acknowledgements are awaited already.
    pub async fn round(&self, slots: usize) -> Round<'_> {
        let permits = u32::try_from(slots.clamp(1, ACKS_IN_FLIGHT_MAX)).expect("bounded");
        let permits = self
            .permits
            .acquire_many(permits)
            .await
            .expect("the semaphore is never closed");
        let id = self.next_round.fetch_add(1, Ordering::Relaxed);
        let acks = Arc::new(RoundAcks {
            filed: Mutex::new(Filed {
                slots: vec![None; slots],
                received: 0,
                expected: usize::MAX,
            }),
            complete: Notify::new(),
        });
        self.rounds
            .lock()
            .expect("rounds lock")
            .insert(id, acks.clone());
        Round {
            publisher: self,
            id,
            acks,
            sent: 0,
            _permits: permits,
        }
    }
}

/// One round's publishes and their acknowledgements. Dropping it forgets
/// the round: acknowledgements arriving later are ignored.
pub struct Round<'p> {
    publisher: &'p Publisher,
    id: u64,
    acks: Arc<RoundAcks>,
    sent: usize,
    _permits: SemaphorePermit<'p>,
}

impl Round<'_> {
    /// Hands one message to the NATS client; its acknowledgement goes to
    /// `slot`.
    pub async fn publish(
        &mut self,
        slot: usize,
        subject: async_nats::Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        let reply = self
            .publisher
            .acks
            .reply_to(format_args!("{}.{slot}", self.id));
        self.publisher
            .client
            .publish_with_reply_and_headers(subject, reply, headers, payload)
            .await?;
        self.sent += 1;
        Ok(())
    }

    /// Hands one message to the NATS client without a reply subject: a
    /// staged message of an atomic batch, whose commit (published with
    /// [`Round::publish`]) is acknowledged for the whole batch.
    pub async fn publish_unanswered(
        &mut self,
        subject: async_nats::Subject,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        self.publisher
            .client
            .publish_with_headers(subject, headers, payload)
            .await
    }

    /// Waits until every message published in this round is acknowledged.
    /// Call it once, after the last publish; bound it with a deadline.
    pub async fn acknowledged(&self) {
        {
            let mut filed = self.acks.filed.lock().expect("round lock");
            filed.expected = self.sent;
            if filed.received >= filed.expected {
                return;
            }
        }
        // The router's notify_one is kept if it comes before this wait.
        self.acks.complete.notified().await;
    }

    /// Each slot's acknowledgement; None where none arrived (yet).
    pub fn into_acks(self) -> Vec<Option<Ack>> {
        std::mem::take(&mut self.acks.filed.lock().expect("round lock").slots)
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.publisher
            .rounds
            .lock()
            .expect("rounds lock")
            .remove(&self.id);
    }
}

/// `<round>.<slot>` after the reply prefix.
fn round_and_slot(tail: &str) -> Option<(u64, usize)> {
    let (round, slot) = tail.split_once('.')?;
    Some((round.parse().ok()?, slot.parse().ok()?))
}

/// Files every acknowledgement (by its subject's tail) in its round's
/// slot. Consecutive acknowledgements nearly always belong to the same
/// round, so the last round found is kept instead of looked up again.
fn filer(rounds: Rounds) -> impl FnMut(&str, async_nats::Message) + Send + 'static {
    let mut current: Option<(u64, Arc<RoundAcks>)> = None;
    move |tail, message| {
        let Some((round, slot)) = round_and_slot(tail) else {
            tracing::warn!(subject = %message.subject, "acknowledgement on an unexpected subject; ignored");
            return;
        };
        if current.as_ref().map(|(id, _)| *id) != Some(round) {
            current = rounds
                .lock()
                .expect("rounds lock")
                .get(&round)
                .map(|acks| (round, acks.clone()));
        }
        // No round: it ended (its deadline passed) before this arrived.
        if let Some((_, acks)) = &current {
            acks.file(
                slot,
                Ack::read(message.status.map(u16::from), &message.payload),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_read_as_jetstream_writes_them() {
        let stored = br#"{"stream":"facts_operational","domain":"plant-a","seq":42}"#;
        assert_eq!(
            Ack::read(None, stored),
            Ack::Stored {
                sequence: 42,
                duplicate: false
            }
        );
        let duplicate = br#"{"stream":"facts_operational","seq":7,"duplicate":true}"#;
        assert_eq!(
            Ack::read(None, duplicate),
            Ack::Stored {
                sequence: 7,
                duplicate: true
            }
        );
        let refused = br#"{"error":{"code":400,"err_code":10070,"description":"wrong last msg ID: \"abc\""}}"#;
        assert_eq!(
            Ack::read(None, refused),
            Ack::Refused {
                err_code: ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID,
                description: "wrong last msg ID: \"abc\"".into()
            }
        );
        let batch = br#"{"stream":"facts_operational","seq":300,"batch":"b1f","count":256}"#;
        assert_eq!(
            Ack::read(None, batch),
            Ack::BatchStored {
                last_sequence: 300,
                count: 256
            }
        );
        let batch_refused = concat!(
            r#"{"error":{"code":400,"err_code":10201,"#,
            r#""description":"atomic publish batch contains duplicate message id"}}"#
        )
        .as_bytes();
        assert!(matches!(
            Ack::read(None, batch_refused),
            Ack::Refused {
                err_code: ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE,
                ..
            }
        ));
        assert_eq!(Ack::read(Some(503), b""), Ack::NoResponders);
        assert!(matches!(Ack::read(Some(408), b""), Ack::Unreadable(_)));
        assert!(
            matches!(Ack::read(None, b"{\"stream\":\"x\"}"), Ack::Unreadable(_)),
            "an acknowledgement without a sequence is not a stored fact"
        );
        assert!(
            matches!(Ack::read(None, b"{\"seq\":0}"), Ack::Unreadable(_)),
            "sequence 0 is no offset"
        );
        assert!(matches!(Ack::read(None, b"+OK"), Ack::Unreadable(_)));
    }

    #[test]
    fn reply_subjects_name_their_round_and_slot() {
        assert_eq!(round_and_slot("17.3"), Some((17, 3)));
        assert_eq!(round_and_slot("17"), None);
        assert_eq!(round_and_slot("17.x"), None);
        assert_eq!(round_and_slot("a.3"), None);
    }

    #[test]
    fn a_round_completes_once_every_published_slot_is_filed_and_ignores_strays() {
        let acks = RoundAcks {
            filed: Mutex::new(Filed {
                slots: vec![None; 3],
                received: 0,
                expected: usize::MAX,
            }),
            complete: Notify::new(),
        };
        acks.file(0, Ack::NoResponders);
        acks.file(
            0,
            Ack::Stored {
                sequence: 1,
                duplicate: false,
            },
        );
        acks.file(9, Ack::NoResponders);
        let filed = acks.filed.lock().unwrap();
        assert_eq!(
            filed.received, 1,
            "a second answer for a slot and a slot out of range are ignored"
        );
        assert_eq!(filed.slots[0], Some(Ack::NoResponders));
    }
}
