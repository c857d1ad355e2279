//! Pulling a consumer's facts from JetStream without ever losing sight of
//! one: the node serves a fact only if it took in every delivery JetStream
//! made to the consumer before it.
//!
//! Why: confirms are cumulative (`AckPolicy::All`). A message JetStream
//! delivered but this node never took in (a pull that ended on the client
//! library's timer while the node was frozen, a pull whose fetch was
//! cancelled, a subscription that overflowed) is still *delivered* as far
//! as JetStream knows, and the confirm of any later offset would
//! acknowledge it: a fact confirmed without ever being served, i.e. lost.
//!
//! **Invariants** (asserted in [`Puller::take_in`] and relied on by
//! `Consumers::confirm`):
//! 1. JetStream numbers each delivery of a consumer (its consumer
//!    sequence), one more than the last, redeliveries included; a reset
//!    starts again after the sequence its answer reports.
//! 2. `taken_in` is the consumer sequence of the last delivery this node
//!    took in, and every delivery up to it was taken in, in order. A
//!    delivery whose sequence is not `taken_in + 1` is a gap (or JetStream
//!    lost state): nothing of it is served and the consumer is reset to its
//!    frontier, which makes JetStream deliver everything unconfirmed again.
//! 3. A pull that may have lost deliveries without a later delivery
//!    showing it (it failed, timed out, ended on the client's timer, or its
//!    fetch was dropped mid-pull) leaves the puller `suspect`; before the
//!    next pull the node compares JetStream's delivered sequence with
//!    `taken_in` and resets on a difference.
//!
//! From 1–3: a confirm of an offset that was served cannot acknowledge an
//! unserved fact. A first delivery never taken in comes after every served
//! one in delivery order, so its offset is above every first-delivered
//! offset served; a redelivery was taken in at its first delivery.

use bsfg_domain::Rejection;
use futures::StreamExt as _;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::store::failure::unavailable;
use async_nats::jetstream::consumer::{self, pull};

pub type JsMessage = async_nats::jetstream::Message;

/// How much longer than its `expires` a long poll may take before it is
/// treated as ended by the client library's own timer (which fires 5 s
/// after `expires`) rather than by JetStream's answer.
const LONG_POLL_SLACK: Duration = Duration::from_secs(2);

/// Facts pulled from JetStream for the next fetch (see `consumers`).
#[derive(Default)]
enum ReadAhead {
    #[default]
    Empty,
    /// A no-wait pull in flight.
    Pulling(tokio::task::JoinHandle<Result<Vec<JsMessage>, Rejection>>),
    /// Taken in and not yet served, in delivery order.
    Ready(VecDeque<JsMessage>),
}

/// Deliveries did not follow each other: some were never taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryGap {
    pub expected: u64,
    pub got: u64,
}

/// Why a pull gave nothing to serve.
#[derive(Debug)]
pub enum PullError {
    Gap(DeliveryGap),
    Store(Rejection),
}

impl From<Rejection> for PullError {
    fn from(r: Rejection) -> Self {
        PullError::Store(r)
    }
}

/// The JetStream consumer, what was read ahead, and the delivery check.
/// Behind the cursor's lock: pulls never overlap, so deliveries arrive in
/// the order they are taken in.
pub struct Puller {
    pub consumer: consumer::Consumer<pull::Config>,
    ahead: ReadAhead,
    /// Consumer sequence of the last delivery taken in (invariant 2).
    taken_in: u64,
    /// A pull may have lost deliveries (invariant 3).
    suspect: bool,
    /// Bound on a no-wait pull (the library has none of its own).
    request_timeout: Duration,
}

impl Puller {
    /// `delivered` is JetStream's delivered consumer sequence now, read
    /// with nothing pulling (at start-up, after a reset).
    pub fn new(
        consumer: consumer::Consumer<pull::Config>,
        delivered: u64,
        request_timeout: Duration,
    ) -> Self {
        Self {
            consumer,
            ahead: ReadAhead::Empty,
            taken_in: delivered,
            suspect: false,
            request_timeout,
        }
    }

    pub fn is_suspect(&self) -> bool {
        self.suspect
    }

    /// Checks that each delivery follows the last one taken in, in order,
    /// and carries its delivery info and acknowledgement subject, and takes
    /// them in (invariant 2).
    fn take_in(&mut self, messages: Vec<JsMessage>) -> Result<Vec<JsMessage>, PullError> {
        for message in &messages {
            let info = message
                .info()
                .map_err(|e| unavailable("reading delivery info", e))?;
            if message.reply.is_none() {
                return Err(unavailable(
                    "reading delivery info",
                    "a delivery without its acknowledgement subject",
                )
                .into());
            }
            let expected = self.taken_in + 1;
            if info.consumer_sequence != expected {
                self.suspect = true;
                return Err(PullError::Gap(DeliveryGap {
                    expected,
                    got: info.consumer_sequence,
                }));
            }
            self.taken_in = expected;
        }
        Ok(messages)
    }

    /// Runs one pull; the puller stays suspect if the pull fails, times out
    /// or is dropped before it returns (invariant 3).
    async fn guarded<F>(&mut self, pull: F) -> Result<Vec<JsMessage>, PullError>
    where
        F: std::future::Future<Output = Result<Vec<JsMessage>, Rejection>>,
    {
        self.suspect = true;
        let pulled = pull.await?;
        self.suspect = false;
        self.take_in(pulled)
    }

    /// What is ready now: up to `limit` facts and `bytes_max` bytes.
    pub async fn pull_now(
        &mut self,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<JsMessage>, PullError> {
        let consumer = self.consumer.clone();
        let timeout = self.request_timeout;
        self.guarded(pull_now(consumer, limit, bytes_max, timeout))
            .await
    }

    /// Waits up to `wait` for one fact. A poll that outlasts `wait` by more
    /// than [`LONG_POLL_SLACK`] was ended by the library's timer, which
    /// drops deliveries it already received: the puller stays suspect.
    pub async fn long_poll(&mut self, wait: Duration) -> Result<Vec<JsMessage>, PullError> {
        let started = Instant::now();
        let consumer = self.consumer.clone();
        let pulled = self
            .guarded(async move {
                let batch = consumer
                    .batch()
                    .max_messages(1)
                    .expires(wait)
                    .messages()
                    .await
                    .map_err(|e| unavailable("waiting for facts", e))?;
                Ok(collect(batch).await)
            })
            .await?;
        if pulled.is_empty() && started.elapsed() > wait + LONG_POLL_SLACK {
            tracing::warn!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                wait_ms = wait.as_millis() as u64,
                "a long poll outlasted its wait (the node or its store stalled); checking for lost deliveries"
            );
            self.suspect = true;
        }
        Ok(pulled)
    }

    /// Whether JetStream has delivered nothing this node did not take in.
    /// Settles a read-ahead in flight first (its deliveries are taken in).
    pub async fn verify(&mut self) -> Result<bool, Rejection> {
        self.settle_ahead().await;
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| unavailable("reading the consumer", e))?;
        let delivered = info.delivered.consumer_sequence;
        if delivered == self.taken_in {
            self.suspect = false;
            return Ok(true);
        }
        tracing::warn!(
            delivered,
            taken_in = self.taken_in,
            "JetStream delivered facts this node never took in"
        );
        Ok(false)
    }

    /// Makes JetStream deliver again everything after the consumer's ack
    /// floor (a consumer reset); drops what was read ahead. Returns the ack
    /// floor.
    pub async fn reset(
        &mut self,
        start: Option<u64>,
    ) -> Result<u64, async_nats::jetstream::stream::ConsumerResetError> {
        self.drop_ahead().await;
        let response = self.consumer.reset(start).await?;
        self.restarted(response.info.delivered.consumer_sequence);
        Ok(response.info.ack_floor.stream_sequence)
    }

    /// After the consumer was reset or re-created: JetStream's delivered
    /// sequence is `delivered` and nothing is pulled or read ahead.
    pub fn restarted(&mut self, delivered: u64) {
        assert!(
            matches!(self.ahead, ReadAhead::Empty),
            "a consumer restarts with nothing read ahead"
        );
        self.taken_in = delivered;
        self.suspect = false;
    }

    /// Up to `limit` facts and `bytes_max` bytes (at least one fact) from
    /// the read-ahead, in delivery order; the rest stays for the next fetch.
    /// Empty if nothing was read ahead or the pull failed (the caller then
    /// pulls itself).
    pub async fn take_ahead(
        &mut self,
        limit: usize,
        bytes_max: usize,
    ) -> Result<Vec<JsMessage>, PullError> {
        if let Some(gap) = self.settle_ahead().await {
            return Err(PullError::Gap(gap));
        }
        let ReadAhead::Ready(ready) = &mut self.ahead else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = ready.front() {
            let taken_enough =
                out.len() >= limit || (!out.is_empty() && bytes + next.payload.len() > bytes_max);
            if taken_enough {
                break;
            }
            bytes += next.payload.len();
            out.push(ready.pop_front().expect("front exists"));
        }
        if ready.is_empty() {
            self.ahead = ReadAhead::Empty;
        }
        Ok(out)
    }

    /// Whether what was read ahead has all been served.
    pub fn ahead_is_empty(&self) -> bool {
        matches!(self.ahead, ReadAhead::Empty)
    }

    /// Awaits a read-ahead pull in flight and takes its deliveries in.
    /// Awaited in place: if the fetch is dropped meanwhile, the pulled
    /// facts stay for the next one.
    async fn settle_ahead(&mut self) -> Option<DeliveryGap> {
        let ReadAhead::Pulling(task) = &mut self.ahead else {
            return None;
        };
        let pulled = task.await;
        self.ahead = ReadAhead::Empty;
        let messages = match pulled {
            Ok(Ok(messages)) => messages,
            Ok(Err(rejection)) => {
                tracing::debug!(error = %rejection.message, "read-ahead pull failed; pulling again");
                self.suspect = true;
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "read-ahead task ended without an answer; pulling again");
                self.suspect = true;
                return None;
            }
        };
        match self.take_in(messages) {
            Ok(messages) => {
                if !messages.is_empty() {
                    self.ahead = ReadAhead::Ready(messages.into());
                }
                None
            }
            Err(PullError::Gap(gap)) => Some(gap),
            Err(PullError::Store(r)) => {
                tracing::warn!(error = %r.message, "read-ahead deliveries unreadable");
                self.suspect = true;
                None
            }
        }
    }

    /// Starts pulling the next batch, unless something is already ahead.
    pub fn read_ahead(&mut self, limit: usize, bytes_max: usize) {
        if matches!(self.ahead, ReadAhead::Empty) && limit > 0 && bytes_max > 0 {
            let consumer = self.consumer.clone();
            let timeout = self.request_timeout;
            self.ahead =
                ReadAhead::Pulling(tokio::spawn(pull_now(consumer, limit, bytes_max, timeout)));
        }
    }

    /// Before a reset: lets a pull in flight finish (a no-wait pull, quick)
    /// so JetStream has delivered whatever it will before the reset makes it
    /// deliver them again, then drops what was read ahead.
    async fn drop_ahead(&mut self) {
        if let ReadAhead::Pulling(task) = &mut self.ahead
            && tokio::time::timeout(self.request_timeout, &mut *task)
                .await
                .is_err()
        {
            task.abort();
        }
        self.ahead = ReadAhead::Empty;
    }
}

/// A no-wait pull, bounded by `timeout`.
async fn pull_now(
    consumer: consumer::Consumer<pull::Config>,
    limit: usize,
    bytes_max: usize,
    timeout: Duration,
) -> Result<Vec<JsMessage>, Rejection> {
    let pull = async {
        let batch = consumer
            .fetch()
            .max_messages(limit)
            .max_bytes(bytes_max)
            .messages()
            .await
            .map_err(|e| unavailable("fetching facts", e))?;
        Ok(collect(batch).await)
    };
    tokio::time::timeout(timeout, pull).await.map_err(|_| {
        unavailable(
            "fetching facts",
            "JetStream did not answer the pull in time",
        )
    })?
}

/// Every delivery of a batch until it ends. A batch ends on JetStream's
/// terminal status (no messages, request timeout, size limit), which comes
/// after its deliveries; it may also end on the library's own timer, which
/// the caller detects.
async fn collect(mut batch: pull::Batch) -> Vec<JsMessage> {
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        match message {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::debug!(error = %e, "pull batch ended");
                break;
            }
        }
    }
    out
}
