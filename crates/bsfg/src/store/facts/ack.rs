//! A fact's answer from JetStream's acknowledgement: stored, a retry the
//! duplicate window knew, the stream full, an earlier fact of an ordered
//! batch missing, an error, or none in time.

use super::append::{InFlight, fill_slots};
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
    /// Answers a round's facts in slot order from their acknowledgements.
    /// Only the unusual ones (a duplicate, an error, none in time) are
    /// finished concurrently afterwards.
    pub(super) async fn answer_round(
        &self,
        in_flight: Vec<InFlight>,
        mut acks: Vec<Option<Ack>>,
    ) -> Vec<Finished> {
        let mut finished: Vec<Option<Finished>> = Vec::with_capacity(in_flight.len());
        let mut unusual = Vec::new();
        for (slot, f) in in_flight.into_iter().enumerate() {
            match f {
                InFlight::Done(result) => finished.push(Some((result, None))),
                InFlight::Sent(ready, ticket) => match acks.get_mut(slot).and_then(Option::take) {
                    Some(Ack::Stored {
                        sequence,
                        duplicate: false,
                    }) => {
                        ticket.stored();
                        finished.push(Some(self.stored(sequence, ready)))
                    }
                    other => {
                        // Not stored as this node predicted: its fence
                        // reads the stream's end again.
                        drop(ticket);
                        unusual.push((finished.len(), self.finish(other, ready)));
                        finished.push(None);
                    }
                },
            }
        }
        fill_slots(&mut finished, unusual).await;
        finished
            .into_iter()
            .map(|f| f.expect("every fact was finished"))
            .collect()
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
        // The stream did not end where the fence expected
        // (`JSStreamWrongLastSequenceErr`, `JSStreamWrongLastMsgIDErrF`):
        // another node wrote there, or an earlier publish of this node did
        // not land.
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => {
            super::append::fenced(&ready.category)
        }
        _ => unavailable(
            "storing the fact",
            format_args!("JetStream error {}: {description}", err_code.0),
        ),
    }
}
