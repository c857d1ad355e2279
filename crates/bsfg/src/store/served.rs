//! Facts as FetchFacts serves them: the stored record's own bytes, checked,
//! with this zone's part of the provenance spliced in, instead of decoding
//! every record into owned strings and encoding it again.
//!
//! Why: draining a backlog spent about a sixth of the node's CPU per fact
//! on that decode and re-encode (BENCHMARKS.md, "Measured and adopted").
//! The stored bytes already are a `StoredFact` encoding; serving adds only
//! the offset (known once stored) and this zone's hop (plus the origin, for
//! a fact that started here). Protobuf readers accept fields in any order and concatenated
//! elements of a repeated field, so the served record is: the offset, the
//! stored top-level fields except `provenance`, then one `provenance` field
//! whose body is the stored provenance body followed by the added fields.
//! Every field still occurs once; no reader has to merge messages.
//!
//! The read-side check stays: each record is decoded as a zero-copy view
//! (the whole wire format and every string's UTF-8 are checked, nothing is
//! allocated per field) and must carry an envelope and a fact.
//!
//! Invariants:
//! 1. A served record is one `StoredFact` encoding whose `offset` is the
//!    served offset and whose last hop is (this zone, that offset); the
//!    offset and the provenance occur once each. Checked in debug builds
//!    where a record is built (`from_stored`), and by `view` wherever a
//!    served record is read again.
//! 2. The facts of one answer are in strictly increasing offset order, none
//!    past `last_delivered_offset`: a receiver confirms cumulatively, so a
//!    fact out of order would be confirmed before it was appended.
//!    Asserted where the answer is encoded (`ServedFacts::to_proto`).

use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::__buffa::view::StoredFactView;
use bsfg_proto::bsfg::v1::{FetchFactsResponse, Hop, Provenance};
use buffa::encoding::{decode_varint, encode_varint};
use buffa::{Message as _, MessageView as _};
use bytes::{Bytes, BytesMut};

const OFFSET_FIELD: u64 = 1;
const PROVENANCE_FIELD: u64 = 5;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// One fact as served: a complete `StoredFact` encoding.
#[derive(Debug, Clone)]
pub struct ServedFact {
    pub offset: u64,
    pub record: Bytes,
}

impl ServedFact {
    /// Checks a stored record and completes it for serving from `zone` at
    /// `offset` (see module docs).
    pub fn from_stored(stored: &[u8], offset: u64, zone: &str) -> Result<Self, Rejection> {
        let corrupt = |why: String| {
            Rejection::new(
                Code::DataLoss,
                Reason::CorruptRecord,
                format!("stored fact at offset {offset} {why}"),
            )
        };
        let view = StoredFactView::decode_view(stored)
            .map_err(|e| corrupt(format!("cannot be decoded: {e}")))?;
        if view.envelope.message_id.is_empty() || view.fact.subject.is_empty() {
            return Err(corrupt("lacks its envelope or fact".into()));
        }
        let added = Provenance {
            origin_zone: if view.provenance.origin_zone.is_empty() {
                view.envelope.from_zone.to_string()
            } else {
                String::new()
            },
            origin_offset: if view.provenance.origin_offset == 0 {
                offset
            } else {
                0
            },
            hops: vec![Hop {
                zone: zone.to_string(),
                offset,
                appended_at_unix_ms: view.appended_at_unix_ms,
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();

        let mut record = BytesMut::with_capacity(stored.len() + added.len() + 24);
        put_tag(&mut record, OFFSET_FIELD, WIRE_VARINT);
        encode_varint(offset, &mut record);
        let mut provenance_bodies: Vec<&[u8]> = Vec::with_capacity(1);
        let mut rest = stored;
        while !rest.is_empty() {
            let field_start = rest;
            let (number, body) = next_field(&mut rest)
                .map_err(|e| corrupt(format!("has a malformed field: {e}")))?;
            match number {
                OFFSET_FIELD => {}
                // Several occurrences of a message field merge, i.e. their
                // bodies concatenate; ours only ever writes one.
                PROVENANCE_FIELD => provenance_bodies.push(body),
                _ => record.extend_from_slice(&field_start[..field_start.len() - rest.len()]),
            }
        }
        put_tag(&mut record, PROVENANCE_FIELD, WIRE_LEN);
        let provenance_len: usize =
            provenance_bodies.iter().map(|b| b.len()).sum::<usize>() + added.len();
        encode_varint(provenance_len as u64, &mut record);
        for body in provenance_bodies {
            record.extend_from_slice(body);
        }
        record.extend_from_slice(&added);
        let served = Self {
            offset,
            record: record.freeze(),
        };
        #[cfg(debug_assertions)]
        served.debug_assert_complete(zone);
        Ok(served)
    }

    /// Invariant 1 (module docs), at the cost of a decode.
    #[cfg(debug_assertions)]
    fn debug_assert_complete(&self, zone: &str) {
        let view = self.view();
        assert_eq!(view.offset, self.offset, "the served offset");
        let last_hop = view
            .provenance
            .hops
            .iter()
            .last()
            .map(|h| (h.zone, h.offset));
        assert_eq!(last_hop, Some((zone, self.offset)), "this zone's hop last");
    }

    /// The served record as a view. It was checked when it was served, so
    /// failing here is a bug in `from_stored`.
    pub fn view(&self) -> StoredFactView<'_> {
        StoredFactView::decode_view(&self.record)
            .expect("a served record decodes: from_stored built it from a checked one")
    }
}

/// A FetchFacts answer whose facts are already encoded.
#[derive(Debug, Clone, Default)]
pub struct ServedFacts {
    pub facts: Vec<ServedFact>,
    pub frontier: u64,
    pub last_delivered_offset: u64,
    pub backlog: u64,
    /// This node's clock when it answered (unix ms).
    pub answered_at_unix_ms: i64,
}

impl ServedFacts {
    /// The binary `FetchFactsResponse`.
    pub fn to_proto(&self) -> Bytes {
        self.assert_ordered();
        let facts_len: usize = self.facts.iter().map(|f| f.record.len() + 6).sum();
        let mut out = BytesMut::with_capacity(facts_len + 40);
        for fact in &self.facts {
            put_tag(&mut out, 1, WIRE_LEN);
            encode_varint(fact.record.len() as u64, &mut out);
            out.extend_from_slice(&fact.record);
        }
        for (number, value) in [
            (2, self.frontier),
            (3, self.last_delivered_offset),
            (4, self.backlog),
            (5, self.answered_at_unix_ms.max(0) as u64),
        ] {
            if value != 0 {
                put_tag(&mut out, number, WIRE_VARINT);
                encode_varint(value, &mut out);
            }
        }
        out.freeze()
    }

    /// Invariant 2 (module docs).
    fn assert_ordered(&self) {
        let mut previous: Option<u64> = None;
        for fact in &self.facts {
            assert!(
                previous.is_none_or(|p| p < fact.offset),
                "served offsets must increase: {previous:?} then {}",
                fact.offset
            );
            assert!(
                fact.offset <= self.last_delivered_offset,
                "offset {} served past last_delivered_offset {}",
                fact.offset,
                self.last_delivered_offset
            );
            previous = Some(fact.offset);
        }
    }

    /// The same answer as an owned message (for the JSON codec).
    pub fn to_message(&self) -> Result<FetchFactsResponse, buffa::DecodeError> {
        FetchFactsResponse::decode_from_slice(&self.to_proto())
    }
}

fn put_tag(out: &mut BytesMut, number: u64, wire: u64) {
    encode_varint(number << 3 | wire, out);
}

/// Reads one top-level field off `rest`: its number and, for a
/// length-delimited field, its body (empty for the others).
fn next_field<'a>(rest: &mut &'a [u8]) -> Result<(u64, &'a [u8]), String> {
    let tag = decode_varint(rest).map_err(|e| e.to_string())?;
    let skip = |rest: &mut &'a [u8], n: usize| -> Result<&'a [u8], String> {
        let (body, after) = rest.split_at_checked(n).ok_or("truncated")?;
        *rest = after;
        Ok(body)
    };
    let body = match tag & 7 {
        WIRE_VARINT => {
            decode_varint(rest).map_err(|e| e.to_string())?;
            &[][..]
        }
        WIRE_FIXED64 => skip(rest, 8).map(|_| &[][..])?,
        WIRE_FIXED32 => skip(rest, 4).map(|_| &[][..])?,
        WIRE_LEN => {
            let len = decode_varint(rest).map_err(|e| e.to_string())?;
            skip(rest, usize::try_from(len).map_err(|_| "length overflows")?)?
        }
        wire => return Err(format!("wire type {wire} is not used by StoredFact")),
    };
    Ok((tag >> 3, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bsfg_proto::bsfg::v1::{Envelope, Fact, StoredFact};

    fn stored(provenance: Option<Provenance>) -> StoredFact {
        StoredFact {
            category: "operational".into(),
            envelope: Envelope {
                message_id: "m-1".into(),
                from_zone: "plant-a".into(),
                to_zone: "enterprise".into(),
                produced_at_unix_ms: 1_700_000_000_000,
                labels: [("line".to_string(), "3".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }
            .into(),
            fact: Fact {
                subject: "batch:PlantA/B1".into(),
                predicate: "step_completed".into(),
                object_json: r#"{"a":1}"#.into(),
                ..Default::default()
            }
            .into(),
            provenance: provenance.map(Into::into).unwrap_or_default(),
            appended_at_unix_ms: 1_700_000_000_123,
            ..Default::default()
        }
    }

    /// What serving means, written the slow way: decode, complete, encode.
    fn completed(mut record: StoredFact, offset: u64, zone: &str) -> StoredFact {
        record.offset = offset;
        let appended = record.appended_at_unix_ms;
        let from_zone = record.envelope.from_zone.clone();
        let provenance = record.provenance.get_or_insert_default();
        if provenance.origin_zone.is_empty() {
            provenance.origin_zone = from_zone;
        }
        if provenance.origin_offset == 0 {
            provenance.origin_offset = offset;
        }
        provenance.hops.push(Hop {
            zone: zone.into(),
            offset,
            appended_at_unix_ms: appended,
            ..Default::default()
        });
        record
    }

    #[test]
    fn a_served_record_is_the_stored_one_with_offset_and_this_zones_hop() {
        let crossed = Provenance {
            origin_zone: "plant-a".into(),
            origin_offset: 7,
            hops: vec![Hop {
                zone: "plant-a".into(),
                offset: 7,
                appended_at_unix_ms: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        for provenance in [
            None,
            Some(Provenance {
                origin_zone: "plant-a".into(),
                ..Default::default()
            }),
            Some(crossed),
        ] {
            let record = stored(provenance);
            let served = ServedFact::from_stored(&record.encode_to_vec(), 42, "idmz").unwrap();
            let decoded = StoredFact::decode_from_slice(&served.record).unwrap();
            assert_eq!(decoded, completed(record.clone(), 42, "idmz"));
            assert_eq!(
                served.view().provenance.hops.len(),
                decoded.provenance.hops.len(),
                "views read the same hops"
            );
        }
    }

    #[test]
    fn a_response_decodes_to_the_same_message_as_one_built_field_by_field() {
        let facts: Vec<ServedFact> = (1..=3)
            .map(|o| ServedFact::from_stored(&stored(None).encode_to_vec(), o, "idmz").unwrap())
            .collect();
        let served = ServedFacts {
            facts,
            frontier: 0,
            last_delivered_offset: 3,
            backlog: 9,
            answered_at_unix_ms: 1_764_000_000_123,
        };
        let expected = FetchFactsResponse {
            facts: (1..=3)
                .map(|o| completed(stored(None), o, "idmz"))
                .collect(),
            frontier: 0,
            last_delivered_offset: 3,
            backlog: 9,
            answered_at_unix_ms: 1_764_000_000_123,
            ..Default::default()
        };
        assert_eq!(served.to_message().unwrap(), expected);
    }

    #[test]
    fn a_corrupt_or_incomplete_record_is_refused_as_data_loss() {
        let good = stored(None).encode_to_vec();
        let truncated = &good[..good.len() - 3];
        let without_fact = StoredFact {
            fact: Default::default(),
            ..stored(None)
        }
        .encode_to_vec();
        let bad_utf8 = {
            // Category "operational" with one byte made invalid UTF-8.
            let mut bytes = good.clone();
            let at = bytes.windows(11).position(|w| w == b"operational").unwrap();
            bytes[at] = 0xff;
            bytes
        };
        for bad in [truncated, &without_fact[..], &bad_utf8[..]] {
            let refused = ServedFact::from_stored(bad, 3, "idmz").unwrap_err();
            assert_eq!(
                (refused.code, refused.reason),
                (Code::DataLoss, Reason::CorruptRecord)
            );
        }
    }

    /// Stored records come from disk and, as FetchFacts answers, from the
    /// network: whatever the bytes, serving refuses them or yields a record
    /// that decodes with its offset and this zone's hop last; never a panic.
    mod damaged {
        use super::*;
        use proptest::prelude::*;

        fn served_or_refused(bytes: &[u8], offset: u64) {
            let Ok(served) = ServedFact::from_stored(bytes, offset, "idmz") else {
                return;
            };
            served.debug_assert_complete("idmz");
            let owned = StoredFact::decode_from_slice(&served.record).expect("decodes owned");
            assert_eq!(owned.offset, offset);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
                offset in 1..u64::MAX,
            ) {
                served_or_refused(&bytes, offset);
            }

            #[test]
            fn a_record_with_flipped_bytes_or_cut_short(
                flips in proptest::collection::vec((any::<usize>(), 1..=u8::MAX), 0..8),
                cut in any::<usize>(),
                offset in 1..1_000_000u64,
            ) {
                let mut bytes = stored(None).encode_to_vec();
                let len = bytes.len();
                for (at, mask) in flips {
                    bytes[at % len] ^= mask;
                }
                bytes.truncate(cut % (len + 1));
                served_or_refused(&bytes, offset);
            }
        }
    }
}
