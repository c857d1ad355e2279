//! Everything before a fact is published: the answer for a key already
//! stored, the capacity checks, the attachments' presence, and the
//! encoded record.

use super::append::fill_slots;
use super::record::compare_existing;
use super::{AppendItem, Appended, FactLog, MSG_ID_HEADER, fact_subject};
use crate::config::CategoryConfig;
use crate::store::clock::now_unix_ms;
use crate::store::key_index::{Token, token_bytes};
use async_nats::HeaderMap;
use bsfg_domain::identity::content_digest;
use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::{Envelope, Provenance, StoredFact};
use buffa::Message as _;

/// A fact after preparation: ready to publish, or answered already.
// Nearly every fact is `Ready`: boxing it would allocate once per fact.
#[allow(clippy::large_enum_variant)]
pub(super) enum Prepared {
    /// To be published.
    Ready(Ready),
    /// Its final answer without a publish: the original of a duplicate,
    /// or a rejection (a conflict, a full category, a failed read-back).
    Answered(Result<Appended, Rejection>),
}

/// What the preparing functions return, `?` taking them to an answer:
/// `Ok` ready, `Err` answered.
type Preparing = Result<Ready, Result<Appended, Rejection>>;

impl From<Preparing> for Prepared {
    fn from(preparing: Preparing) -> Self {
        match preparing {
            Ok(ready) => Prepared::Ready(ready),
            Err(answer) => Prepared::Answered(answer),
        }
    }
}

/// A fact ready to publish.
pub(super) struct Ready {
    /// Shared bytes: a fact the fence refused is published again under it.
    pub(super) subject: async_nats::Subject,
    pub(super) category: String,
    pub(super) token: String,
    pub(super) raw_token: Token,
    pub(super) envelope: Envelope,
    pub(super) payload: bytes::Bytes,
}

impl Ready {
    pub(super) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // A retry whose first acknowledgement was lost is answered by the
        // duplicate window before the key index has read the fact in.
        headers.insert(MSG_ID_HEADER, self.token.as_str());
        headers
    }
}

impl FactLog {
    /// Prepares a round's facts, one slot each in item order, after looking
    /// their keys up (`Err`: the look-up failed, for every fact).
    pub(super) async fn prepare_round(
        &self,
        items: Vec<(AppendItem, String)>,
    ) -> Result<Vec<Option<Prepared>>, Rejection> {
        // Each fact's category, resolved once.
        let homes: Vec<&CategoryConfig> = items
            .iter()
            .map(|(item, _)| self.config.category_for_kind(&item.valid.subject_kind))
            .collect();
        let tokens: Vec<Token> = items
            .iter()
            .map(|(_, t)| token_bytes(t).expect("key tokens are 32 hex digits"))
            .collect();
        let found = self.look_up(&tokens)?;
        // A new key without attachments (nearly every append) is prepared
        // without waiting for anything; only the others (a key already
        // stored, attachments to check) wait, concurrently. Preparing the
        // common case inline, not as one future per fact, spares boxing and
        // moving those futures (6 % of a receiving node's CPU in a profile).
        let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(items.len());
        let mut waiting = Vec::new();
        for ((((item, token), home), raw), found) in
            items.into_iter().zip(homes).zip(tokens).zip(found)
        {
            if found.is_none() && item.valid.fact.attachments.is_empty() {
                prepared.push(Some(
                    self.refuse_if_full(home)
                        .map_err(Err)
                        .and_then(|()| self.encode(item, token, raw, home))
                        .into(),
                ));
            } else {
                let preparing = self.prepare(item, token, raw, home, found);
                waiting.push((prepared.len(), async { Prepared::from(preparing.await) }));
                prepared.push(None);
            }
        }
        fill_slots(&mut prepared, waiting).await;
        Ok(prepared)
    }

    /// Everything before the publish that may wait: the answer for a key
    /// already stored, the attachments' presence; then `encode`. `Err`
    /// carries a final answer (a duplicate, or a rejection).
    async fn prepare(
        &self,
        item: AppendItem,
        token: String,
        raw_token: Token,
        category: &CategoryConfig,
        found: Option<(usize, u64)>,
    ) -> Preparing {
        if let Some((position, offset)) = found {
            let home = &self.index.categories()[position];
            if let Some(existing) = self
                .stored_under(home, offset, &raw_token)
                .await
                .map_err(Err)?
            {
                return Err(compare_existing(
                    existing,
                    &content_digest(&item.valid.fact),
                    &item.envelope,
                    home,
                ));
            }
        }
        // Capacity before the attachments: a refused append must not freeze
        // the objects it names.
        self.refuse_if_full(category).map_err(Err)?;
        self.objects
            .check_and_freeze(&item.valid.fact.attachments)
            .await
            .map_err(Err)?;
        self.encode(item, token, raw_token, category)
    }

    /// A fact the fence refused (nothing stored), prepared again after its
    /// category's stream end was read: looked up again, since the write
    /// that moved the stream's end may have been this very key (another
    /// node's, or this node's own whose acknowledgement was lost).
    pub(super) async fn prepare_again(&self, ready: Ready) -> Prepared {
        let found = match self.look_up(&[ready.raw_token]) {
            Ok(found) => found[0],
            Err(r) => return Prepared::Answered(Err(r)),
        };
        let Some((position, offset)) = found else {
            let home = &self.categories[&ready.category].config;
            return match self.refuse_if_full(home) {
                Ok(()) => Prepared::Ready(ready),
                Err(r) => Prepared::Answered(Err(r)),
            };
        };
        let home = &self.index.categories()[position];
        let existing = match self.stored_under(home, offset, &ready.raw_token).await {
            Ok(Some(existing)) => existing,
            // Gone (retention) or unreadable: not a key stored now.
            Ok(None) => return Prepared::Ready(ready),
            Err(r) => return Prepared::Answered(Err(r)),
        };
        let compared = super::record::decode_record(&ready.payload, 0).and_then(|record| {
            compare_existing(
                existing,
                &content_digest(&record.fact),
                &ready.envelope,
                home,
            )
        });
        Prepared::Answered(compared)
    }

    /// `disk_full` while the store's or the key index's filesystem is
    /// below its free-space floor (`store::disk`); `category_full` at the
    /// fill threshold (nothing is dropped to make room). Every append path
    /// (AppendFact, the replicator, audit records) comes through here; a
    /// retry of a stored fact is answered before it, writing nothing.
    fn refuse_if_full(&self, category: &CategoryConfig) -> Result<(), Rejection> {
        self.disk.check()?;
        let log = &self.categories[&category.name];
        if !log.is_full() {
            return Ok(());
        }
        Err(Rejection::new(
            Code::ResourceExhausted,
            Reason::CategoryFull,
            format!(
                "category {} is {:.1}% full (threshold {}%); appends are refused until confirmed \
                 facts are truncated. Consumers must confirm, or raise capacity_bytes",
                category.name,
                log.fill_percent(),
                category.fill_threshold_percent
            ),
        ))
    }

    /// Everything before the publish that does not wait: routing to a
    /// category, encoding the record (after `refuse_if_full`). `Err`
    /// carries a rejection.
    fn encode(
        &self,
        item: AppendItem,
        token: String,
        raw_token: Token,
        category: &CategoryConfig,
    ) -> Preparing {
        let AppendItem {
            envelope,
            valid,
            provenance,
        } = item;
        let subject = fact_subject(&category.name, &valid.subject_kind).into();
        // The record takes the envelope and fact; the envelope comes back
        // after encoding (a duplicate's answer names it), nothing is copied.
        let mut record = StoredFact {
            offset: 0,
            category: category.name.clone(),
            provenance: provenance
                .unwrap_or_else(|| Provenance {
                    origin_zone: envelope.from_zone.clone(),
                    ..Default::default()
                })
                .into(),
            envelope: envelope.into(),
            fact: valid.fact.into(),
            appended_at_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        let payload = record.encode_to_vec();
        let envelope = record
            .envelope
            .take()
            .expect("the record was given the envelope");
        if payload.len() > self.config.limits.fact_bytes_max {
            return Err(Err(Rejection::invalid(
                Reason::FactTooLarge,
                format!(
                    "the fact record is {} bytes; the limit is {}",
                    payload.len(),
                    self.config.limits.fact_bytes_max
                ),
            )));
        }
        Ok(Ready {
            subject,
            category: category.name.clone(),
            token,
            raw_token,
            envelope,
            payload: payload.into(),
        })
    }
}
