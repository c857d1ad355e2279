//! Reasons: the stable token that says why a request or a crossing was
//! refused.
//!
//! A [`Reason`]'s token ([`Reason::as_str`]) is part of the contract: it
//! leads every Connect error message, is sent as the `bsfg-reason` header,
//! labels the refusal metrics and is written into logs and audit records,
//! so dashboards and clients match on it. The README's refusal table lists
//! every token (a test checks both ways). An enum rather than strings so
//! that a reason cannot be misspelt where it is made or where it is matched.

use std::fmt;

/// Declares [`Reason`] with each variant's token, [`Reason::as_str`] and
/// [`Reason::ALL`] from one list, so none of the three can miss a variant.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $token:literal,)*) => {
        /// Why the node refused something, as a stable snake_case token.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The token sent to clients; never changes for a variant.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $token,)*
                }
            }
        }
    };
}

reasons! {
    // Malformed requests (invalid_argument).
    /// A required field is absent or empty: the envelope or the fact of an
    /// AppendFact, any required envelope or fact field, a bucket, object key
    /// or consumer name, a ResetConsumer without an offset or a time.
    MissingField = "missing_field",
    /// A bounded text field (message id, correlation id, causation id,
    /// object media type or schema, label value, object key, attachment file
    /// name) is longer than its limit.
    FieldTooLong = "field_too_long",
    /// A bounded text field contains a control character.
    ControlCharacter = "control_character",
    /// `envelope.message_id` contains whitespace.
    BadMessageId = "bad_message_id",
    /// A zone name (`from_zone`, `to_zone`) is not lower-case letters,
    /// digits and '-' starting with a letter, or is too long.
    BadZone = "bad_zone",
    /// `fact.subject` is not `kind:id` or `kind:scope/id`.
    BadSubject = "bad_subject",
    /// `fact.predicate` is not lower_snake_case or is too long.
    BadPredicate = "bad_predicate",
    /// `fact.object_json` is not valid JSON, repeats a key, or cannot be
    /// canonicalised (RFC 8785).
    BadObjectJson = "bad_object_json",
    /// `fact.object_json` is JSON but not an object.
    ObjectJsonNotObject = "object_json_not_object",
    /// The fact is too large: its object_json or its stored record exceeds
    /// the fact limit, or an AppendFact body exceeds that limit plus its
    /// envelope (refused before it is read whole).
    FactTooLarge = "fact_too_large",
    /// `envelope.labels` has more entries than allowed.
    TooManyLabels = "too_many_labels",
    /// A label key is not 1 to 63 characters of `A-Z a-z 0-9 _ - . /`.
    BadLabel = "bad_label",
    /// The fact has more attachments than allowed.
    TooManyAttachments = "too_many_attachments",
    /// A consumer name is not 1 to 64 characters of `A-Z a-z 0-9 _ -`.
    BadConsumerName = "bad_consumer_name",
    /// A bucket name is not lower-case letters, digits, '_' and '-', or is
    /// too long.
    BadBucket = "bad_bucket",
    /// An object key has a backslash, an empty, `.` or `..` segment, or is
    /// in the node's reserved `_bsfg/` namespace.
    BadObjectKey = "bad_object_key",
    /// A digest is not `sha256:` followed by 64 lower-case hex digits.
    BadDigest = "bad_digest",
    /// A media type is not `type/subtype` with optional parameters.
    BadMediaType = "bad_media_type",
    /// ResetConsumer's `time_unix_ms` is not a representable time.
    BadTime = "bad_time",
    /// A consumer replay's start time is not RFC 3339.
    BadStart = "bad_start",
    /// A request is larger than its method admits (other than an
    /// AppendFact's fact), refused before it is read whole.
    RequestTooLarge = "request_too_large",
    /// An AppendFacts request carries more facts than one request may
    /// (1,000); nothing of it is stored.
    TooManyFacts = "too_many_facts",
    /// A PutObject stream does not start with its header message.
    MissingHeader = "missing_header",
    /// A PutObject message after the first carries a header.
    DuplicateHeader = "duplicate_header",
    /// An upload declares or sends more bytes than the object limit.
    ObjectTooLarge = "object_too_large",
    /// An upload's bytes do not hash to its expected digest.
    DigestMismatch = "digest_mismatch",
    /// An upload's length is not its expected size.
    SizeMismatch = "size_mismatch",
    /// A confirm names an offset never delivered to this consumer (another
    /// category or filter, or delivered before a restart).
    NotDeliveredToConsumer = "not_delivered_to_consumer",
    /// `to_zone` is a zone no link of this zone leads to.
    NoRouteToZone = "no_route_to_zone",

    // Duplicates (already_exists).
    /// The same (`from_zone`, `message_id`) is stored with different content.
    ConflictingDuplicate = "conflicting_duplicate",

    // Unknown names (not_found).
    /// A consumer this zone does not configure.
    UnknownConsumer = "unknown_consumer",
    /// A bucket this zone does not configure.
    UnknownBucket = "unknown_bucket",
    /// No object is stored under the bucket and key.
    ObjectNotFound = "object_not_found",
    /// A stored fact read back from a category this zone does not have.
    UnknownCategory = "unknown_category",

    // The state does not allow it (failed_precondition).
    /// A fact's attachment is not stored (or its bucket is unknown).
    AttachmentMissing = "attachment_missing",
    /// A fact's attachment is stored with another digest or size.
    AttachmentMismatch = "attachment_mismatch",
    /// A confirm names an offset beyond the highest delivered.
    NotDelivered = "not_delivered",
    /// An upload would replace an object a fact references.
    ObjectImmutable = "object_immutable",
    /// No link towards `to_zone` carries the fact's category: it would never
    /// cross.
    CategoryNotRouted = "category_not_routed",

    // Authorization (permission_denied).
    /// The subject kind `audit`, reserved for the node's own audit records.
    KindReserved = "kind_reserved",
    /// The client certificate is absent, unreadable or names no principal.
    UnknownIdentity = "unknown_identity",
    /// A `from_zone` the principal may not assert, or (on import) an origin
    /// the peer may not relay.
    FromZoneNotAllowed = "from_zone_not_allowed",
    /// A consumer not granted to the principal.
    ConsumerNotAllowed = "consumer_not_allowed",
    /// A bucket the principal may not read or write.
    BucketNotAllowed = "bucket_not_allowed",
    /// A category not exported to the fetching peer.
    CategoryNotExported = "category_not_exported",
    /// ResetConsumer by a principal that is not an operator.
    OperatorRequired = "operator_required",

    // Crossing policy (permission_denied), export or import.
    /// The fact's category may not cross the link.
    CategoryNotAllowed = "category_not_allowed",
    /// The fact's subject kind may not cross the link.
    KindNotAllowed = "kind_not_allowed",
    /// Only some kinds from the fact's origin zone may cross, not this one.
    KindNotAllowedFromOrigin = "kind_not_allowed_from_origin",
    /// The fact's predicate may not cross the link.
    PredicateNotAllowed = "predicate_not_allowed",
    /// The fact is larger than the link allows.
    FactTooLargeForLink = "fact_too_large_for_link",
    /// The object is larger than the link allows.
    ObjectTooLargeForLink = "object_too_large_for_link",

    // Capacity (resource_exhausted).
    /// The node's request memory stayed taken for the body timeout.
    NodeBusy = "node_busy",
    /// The fact's category is at its fill threshold or its capacity.
    CategoryFull = "category_full",
    /// The object bucket is at its `capacity_bytes`.
    BucketFull = "bucket_full",
    /// The store's or the key index's filesystem is below its free-space
    /// floor.
    DiskFull = "disk_full",

    // Out of range (out_of_range).
    /// A GetObject start beyond the object's end, or a ResetConsumer offset
    /// beyond the log's last offset + 1.
    OffsetBeyondEnd = "offset_beyond_end",

    // Too slow (deadline_exceeded).
    /// The request body was not complete within the body timeout (an
    /// upload: nothing sent for that long).
    RequestBodyTimeout = "request_body_timeout",
    /// An AppendFact was not answered within the request timeout of its
    /// arrival; it may be stored.
    RequestTimeout = "request_timeout",

    // Retry later (unavailable).
    /// The zone's JetStream store did not answer or failed.
    StoreUnavailable = "store_unavailable",
    /// The node is shutting down.
    NodeStopping = "node_stopping",
    /// The node is a standby of its zone (another node holds the writer
    /// lease): the message names the active node's URL when it is known.
    NotActive = "not_active",
    /// The idempotency key index is still reading the stored facts in.
    KeyIndexCatchingUp = "key_index_catching_up",
    /// The idempotency key index cannot be read or written.
    KeyIndexUnavailable = "key_index_unavailable",
    /// A fact was not stored because its category's stream did not end
    /// where this node expected (another node of the zone wrote there, or
    /// an earlier publish of this node did not land): the store-checked
    /// fence (`store::facts::fence`).
    WriterFenced = "writer_fenced",
    /// A PutObject stream broke before it ended.
    UploadInterrupted = "upload_interrupted",

    // Replication of artifacts (unavailable; retried, never sent).
    /// A pulled artifact arrived, but not as the object its fact announced;
    /// it is pulled afresh.
    ObjectDigestMismatch = "object_digest_mismatch",
    /// An artifact's spool file was longer than the object; it is pulled
    /// afresh.
    ObjectSpoolReset = "object_spool_reset",
    /// An artifact's spool file cannot be opened, written or read.
    SpoolUnavailable = "spool_unavailable",
    /// The local object store stopped reading a pulled artifact.
    LocalStoreStopped = "local_store_stopped",
    /// The pull of an artifact from the peer broke; it resumes from the
    /// spool.
    ObjectPullInterrupted = "object_pull_interrupted",

    // Damaged data (data_loss).
    /// A stored fact cannot be decoded or lacks its envelope or fact.
    CorruptRecord = "corrupt_record",
    /// A fact pulled from a peer cannot be decoded.
    UndecodableFact = "undecodable_fact",
    /// A stored object has no readable digest.
    ObjectDigestMissing = "object_digest_missing",
    /// A stored object read back with another digest or size.
    ObjectCorrupt = "object_corrupt",
    /// A stored object ends before its size.
    ObjectTruncated = "object_truncated",

    // A fault of the node (internal).
    /// JetStream reported a retried fact as stored, but it cannot be read
    /// back.
    KeyLookupFailed = "key_lookup_failed",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn tokens_are_distinct_snake_case_and_valid_header_values() {
        let mut seen = BTreeSet::new();
        for r in Reason::ALL {
            let t = r.as_str();
            assert!(seen.insert(t), "{t} is the token of two reasons");
            assert!(
                t.starts_with(|c: char| c.is_ascii_lowercase())
                    && t.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !t.ends_with('_')
                    && !t.contains("__"),
                "{t} is not snake_case"
            );
            assert_eq!(r.to_string(), t);
        }
    }

    /// The tokens in the reason column of the README's refusal table, each
    /// with the Connect code of its row. A parenthesised note is not
    /// a token (it may quote a field name).
    fn readme_table() -> Vec<(String, String)> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let rows = readme
            .lines()
            .skip_while(|l| !l.starts_with("| situation | code | reason |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'));
        let mut tokens = Vec::new();
        for row in rows {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert_eq!(cells.len(), 3, "not a three-column row: {row}");
            let code = cells[1].trim_matches('`').to_string();
            let mut depth = 0;
            let outside: String = cells[2]
                .chars()
                .filter(|&c| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect();
            let backticked = outside.split('`').skip(1).step_by(2);
            for token in backticked {
                tokens.push((token.to_string(), code.clone()));
            }
            assert!(
                !outside.contains('…'),
                "the table lists every reason, it does not elide any: {row}"
            );
        }
        assert!(!tokens.is_empty(), "README.md has no refusal table");
        tokens
    }

    #[test]
    fn the_readme_table_lists_every_reason_and_only_reasons() {
        let listed: BTreeSet<String> = readme_table().into_iter().map(|(t, _)| t).collect();
        let reasons: BTreeSet<String> = Reason::ALL.iter().map(|r| r.to_string()).collect();
        let unlisted: Vec<_> = reasons.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&reasons).collect();
        assert!(
            unlisted.is_empty() && unknown.is_empty(),
            "README.md's refusal table misses the reasons {unlisted:?} and lists {unknown:?}, \
             which are not reasons"
        );
    }

    #[test]
    fn the_readme_table_names_connect_codes() {
        const CODES: [&str; 11] = [
            "invalid_argument",
            "not_found",
            "already_exists",
            "permission_denied",
            "failed_precondition",
            "resource_exhausted",
            "data_loss",
            "unavailable",
            "out_of_range",
            "deadline_exceeded",
            "internal",
        ];
        for (token, code) in readme_table() {
            assert!(CODES.contains(&code.as_str()), "{token}: code {code:?}");
        }
    }
}
