//! A fact's answer from JetStream's acknowledgement: stored, a retry the
//! duplicate window knew, the stream full, an earlier fact of an ordered
//! batch missing, an error, or none in time.

use super::append::{InFlight, Pass, fill_slots};
use super::prepare::Ready;
use super::record::{compare_existing, decode_record};
use super::{Appended, Category, FactLog};
use crate::store::failure::unavailable;
use crate::store::key_index::Token;
use crate::store::publish::Ack;
use async_nats::jetstream::ErrorCode;
use bsfg_domain::identity::content_digest;
use bsfg_domain::{Code, Reason, Rejection};

/// An answer plus the key-index entry it stored, if any.
/// The entry is `(category position, token, offset)`.
pub(super) type Finished = (Result<Appended, Rejection>, Option<(usize, Token, u64)>);

impl FactLog {
    /// Answers a round's facts in slot order from their acknowledgements;
    /// a fact the fence refused is handed back (`Pass::Fenced`). Only the
    /// unusual ones (a duplicate, an error, none in time) are finished
    /// concurrently afterwards.
    pub(super) async fn answer_round(
        &self,
        in_flight: Vec<InFlight>,
        mut acks: Vec<Option<Ack>>,
    ) -> Vec<Pass> {
        let mut passes: Vec<Option<Pass>> = Vec::with_capacity(in_flight.len());
        let mut unusual = Vec::new();
        for (slot, f) in in_flight.into_iter().enumerate() {
            let pass = match f {
                InFlight::Done(result) => Pass::Done((result, None)),
                InFlight::Fenced(ready) => Pass::Fenced(ready),
                InFlight::Sent(ready, ticket) => match acks.get_mut(slot).and_then(Option::take) {
                    Some(Ack::Stored {
                        sequence,
                        duplicate: false,
                    }) => {
                        ticket.stored();
                        Pass::Done(self.stored(sequence, ready))
                    }
                    // Not stored as this node predicted: the ticket,
                    // dropped, has its fence read the stream's end again.
                    Some(Ack::Refused { err_code, .. }) if fence_refused(err_code) => {
                        drop(ticket);
                        self.count_fence_refusal(&ready.category);
                        Pass::Fenced(ready)
                    }
                    other => {
                        drop(ticket);
                        let finish = async { Pass::Done(self.finish(other, ready).await) };
                        unusual.push((passes.len(), finish));
                        passes.push(None);
                        continue;
                    }
                },
            };
            passes.push(Some(pass));
        }
        fill_slots(&mut passes, unusual).await;
        passes
            .into_iter()
            .map(|p| p.expect("every fact was finished"))
            .collect()
    }

    /// Counts a publish (or an atomic batch) the fence refused.
    pub(super) fn count_fence_refusal(&self, category: &str) {
        self.metrics
            .fence_refusals_total
            .get_or_create(&crate::metrics::labels(&[("category", category)]))
            .inc();
    }

    /// The answer for a fact JetStream has just stored, and its key-index
    /// entry.
    pub(super) fn stored(&self, offset: u64, ready: Ready) -> Finished {
        let log = &self.categories[&ready.category];
        log.fill.add_appended(ready.payload.len() as u64 + 100);
        (
            Ok(Appended {
                offset,
                duplicate: false,
                category: ready.category,
            }),
            Some((log.position, ready.raw_token, offset)),
        )
    }

    /// Turns a JetStream acknowledgement (None: none within the request
    /// timeout) into the append's answer and the key-index entry to record.
    pub(super) async fn finish(&self, ack: Option<Ack>, ready: Ready) -> Finished {
        let log = &self.categories[&ready.category];
        match ack {
            Some(Ack::Stored {
                sequence,
                duplicate: false,
            }) => self.stored(sequence, ready),
            // The duplicate window knew the key: an earlier attempt was
            // stored (its acknowledgement lost) but may not be indexed yet.
            Some(Ack::Stored {
                sequence,
                duplicate: true,
            }) => self.finish_duplicate(log, sequence, ready).await,
            Some(Ack::Refused {
                err_code,
                description,
            }) => (Err(refused(log, err_code, &description, &ready)), None),
            Some(Ack::NoResponders) => (
                Err(unavailable(
                    "storing the fact",
                    format_args!("no stream takes the subject of category {}", ready.category),
                )),
                None,
            ),
            Some(Ack::BatchStored { .. }) => (
                Err(unavailable(
                    "reading the JetStream acknowledgement",
                    "an atomic batch's acknowledgement for a single publish",
                )),
                None,
            ),
            Some(Ack::Unreadable(what)) => (
                Err(unavailable("reading the JetStream acknowledgement", what)),
                None,
            ),
            None => (
                Err(unavailable(
                    "waiting for the JetStream acknowledgement",
                    "none within the request timeout",
                )),
                None,
            ),
        }
    }

    /// The answer for a fact the duplicate window reported as stored at
    /// `sequence` (of `log`, its category): the fact stored there, read
    /// back and compared.
    async fn finish_duplicate(&self, log: &Category, sequence: u64, ready: Ready) -> Finished {
        let raw = ready.raw_token;
        match self.stored_under(&ready.category, sequence, &raw).await {
            Ok(Some(existing)) => {
                let entry = Some((log.position, raw, existing.sequence));
                // Rare (a retry raced its own lost acknowledgement):
                // the digest comes from the record about to be published.
                let compared = decode_record(&ready.payload, 0).and_then(|record| {
                    compare_existing(
                        existing,
                        &content_digest(&record.fact),
                        &ready.envelope,
                        &ready.category,
                    )
                });
                (compared, entry)
            }
            Ok(None) => (
                Err(Rejection::new(
                    Code::Internal,
                    Reason::KeyLookupFailed,
                    format!(
                        "JetStream reported message_id {} as stored at offset {sequence}, but that \
                         fact cannot be read back",
                        ready.envelope.message_id
                    ),
                )),
                None,
            ),
            Err(r) => (Err(r), None),
        }
    }
}

/// Whether JetStream refused a publish because the stream did not end where
/// the fence expected (`JSStreamWrongLastSequenceErr`,
/// `JSStreamWrongLastMsgIDErrF`): another node wrote there, or an earlier
/// publish of this node did not land. Nothing of it was stored.
pub(super) fn fence_refused(err_code: ErrorCode) -> bool {
    err_code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
        || err_code == ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID
}

/// The answer for a fact JetStream refused to store in `log`, its
/// category: full (the fill estimate is raised to the capacity until the
/// next report), an earlier fact of an ordered batch missing, or another
/// error.
fn refused(log: &Category, err_code: ErrorCode, description: &str, ready: &Ready) -> Rejection {
    match err_code {
        // nats-server's `JSStreamStoreFailedF` wrapping "maximum bytes exceeded".
        _ if description.contains("maximum bytes")
            || err_code == ErrorCode::STREAM_STORE_FAILED =>
        {
            log.fill
                .set_reported(log.config.capacity_bytes, log.fill.appended_counter());
            Rejection::new(
                Code::ResourceExhausted,
                Reason::CategoryFull,
                format!(
                    "category {} reached its capacity; appends are refused until confirmed facts \
                     are truncated",
                    ready.category
                ),
            )
        }
        _ if fence_refused(err_code) => super::append::fenced(&ready.category),
        _ => unavailable(
            "storing the fact",
            format_args!("JetStream error {}: {description}", err_code.0),
        ),
    }
}
