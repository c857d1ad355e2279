//! What the node relies on from nats-server itself, checked against the
//! pinned version (a newer server that changed it would fail here first,
//! not in a fault run).

use crate::harness::*;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use std::time::Duration;

async fn publish(js: &jetstream::Context, id: &str, after: Option<&str>) -> Result<(u64, bool), PublishErrorKind> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    if let Some(previous) = after {
        headers.insert("Nats-Expected-Last-Msg-Id", previous);
    }
    let ack = js.publish_with_headers("guarded.x", headers, id.as_bytes().to_vec().into()).await.map_err(|e| e.kind())?;
    ack.await.map(|a| (a.sequence, a.duplicate)).map_err(|e| e.kind())
}

/// `Order::AsGiven` (store/facts.rs): a publish that names a predecessor
/// the stream did not store last is refused and stores nothing; the
/// duplicate window answers before that check, so the retry of a fact that
/// was stored is a duplicate whatever it names.
#[tokio::test]
async fn a_publish_naming_a_predecessor_the_stream_did_not_store_last_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsProc::start(dir.path(), "substrate").await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut guarded = js
        .create_stream(stream::Config {
            name: "guarded".into(),
            subjects: vec!["guarded.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(publish(&js, "a", None).await, Ok((1, false)));
    assert_eq!(publish(&js, "b", Some("a")).await, Ok((2, false)), "b follows a");
    // c was published after a lost fact x: refused, nothing stored.
    assert_eq!(publish(&js, "c", Some("x")).await, Err(PublishErrorKind::WrongLastMessageId));
    assert_eq!(guarded.info().await.unwrap().state.last_sequence, 2, "the refused publish stored nothing");
    // A retry of b (its acknowledgement lost) naming something else is
    // still answered as the duplicate it is.
    assert_eq!(publish(&js, "b", Some("y")).await, Ok((2, true)));
    // The retry of c, in order after b, is stored.
    assert_eq!(publish(&js, "c", Some("b")).await, Ok((3, false)));
    assert_eq!(guarded.info().await.unwrap().state.messages, 3);
}
