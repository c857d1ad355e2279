//! Reads that must see every acknowledged write of a replicated stream.
//!
//! async-nats reads object-store entries and KV values with direct gets,
//! which any replica of a replicated stream may answer, one write behind
//! the leader too. Where a miss matters (an artifact just pulled, an
//! object frozen a moment ago), the miss is asked again of the stream's
//! leader, whose message get sees every acknowledged write.

use super::failure::unavailable;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::object_store::{InfoErrorKind, ObjectInfo, ObjectStore};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bsfg_domain::Rejection;

/// The last message on `subject` as the stream's leader has it; None when
/// there is none. `what` names the read in a refusal.
pub(super) async fn last_on_subject(
    stream: &Stream,
    subject: &str,
    what: &str,
) -> Result<Option<StreamMessage>, Rejection> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(unavailable(what, e)),
    }
}

/// The object-store entry `name` of `bucket`, None when there is none: a
/// direct get, and, on a miss, the message get of the bucket's stream's
/// leader when `leader` is given (a replicated bucket: an entry just
/// written, an artifact a link pulled a moment ago, can be missing on a
/// replica).
pub(super) async fn object_entry(
    store: &ObjectStore,
    leader: Option<&Stream>,
    bucket: &str,
    name: &str,
) -> Result<Option<ObjectInfo>, Rejection> {
    match store.info(name).await {
        Ok(info) => return Ok(Some(info)),
        Err(e) if e.kind() == InfoErrorKind::NotFound => {}
        Err(e) => return Err(unavailable("reading object info", e)),
    }
    let Some(stream) = leader else {
        return Ok(None);
    };
    use base64::Engine;
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(name);
    let subject = format!("$O.{bucket}.M.{encoded}");
    let what = "reading object info from the leader";
    match last_on_subject(stream, &subject, what).await? {
        Some(message) => serde_json::from_slice(&message.payload)
            .map(Some)
            .map_err(|e| unavailable("reading object info", e)),
        None => Ok(None),
    }
}
