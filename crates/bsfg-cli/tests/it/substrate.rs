//! What the node relies on from nats-server itself, checked against the
//! pinned version (a newer server that changed it would fail here first,
//! not in a fault run).

use crate::harness::*;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use std::time::Duration;

/// `Nats-Msg-Id` = `id`, naming `after` as the stream's last message id.
/// A stream `guarded` on `guarded.>`, with a duplicate window.
async fn guarded_stream(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "guarded".into(),
        subjects: vec!["guarded.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(60),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn publish(
    js: &jetstream::Context,
    id: &str,
    after: Option<&str>,
) -> Result<(u64, bool), PublishErrorKind> {
    let ack = js
        .publish_with_headers(
            "guarded.x",
            message_id(id, after),
            id.as_bytes().to_vec().into(),
        )
        .await
        .map_err(|e| e.kind())?;
    ack.await
        .map(|a| (a.sequence, a.duplicate))
        .map_err(|e| e.kind())
}

/// `Order::AsGiven` (store/facts/order.rs): a publish that names a predecessor
/// the stream did not store last is refused and stores nothing; the
/// duplicate window answers before that check, so the retry of a fact that
/// was stored is a duplicate whatever it names.
#[tokio::test]
async fn a_publish_naming_a_predecessor_the_stream_did_not_store_last_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "substrate").await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut guarded = guarded_stream(&js).await;

    assert_eq!(publish(&js, "a", None).await, Ok((1, false)));
    assert_eq!(
        publish(&js, "b", Some("a")).await,
        Ok((2, false)),
        "b follows a"
    );
    // c was published after a lost fact x: refused, nothing stored.
    assert_eq!(
        publish(&js, "c", Some("x")).await,
        Err(PublishErrorKind::WrongLastMessageId)
    );
    assert_eq!(
        guarded.info().await.unwrap().state.last_sequence,
        2,
        "the refused publish stored nothing"
    );
    // A retry of b (its acknowledgement lost) naming something else is
    // still answered as the duplicate it is.
    assert_eq!(publish(&js, "b", Some("y")).await, Ok((2, true)));
    // The retry of c, in order after b, is stored.
    assert_eq!(publish(&js, "c", Some("b")).await, Ok((3, false)));
    assert_eq!(guarded.info().await.unwrap().state.messages, 3);
}

fn message_id(id: &str, after: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    if let Some(previous) = after {
        headers.insert("Nats-Expected-Last-Msg-Id", previous);
    }
    headers
}

/// The node's own publish path (store/publish.rs) reads what nats-server
/// answers, each answer in the slot of the publish it answers: stored,
/// duplicate, wrong predecessor, and no stream at all; and a later round
/// gets only its own answers.
#[tokio::test]
async fn a_rounds_acknowledgements_are_read_into_their_own_slots() {
    use bsfg::store::publish::{Ack, Publisher};
    let dir = tempfile::tempdir().unwrap();
    let nats = start_nats(dir.path(), "substrate").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    guarded_stream(&js).await;
    let publisher = Publisher::start(client).await.unwrap();

    let mut round = publisher.round(6).await;
    let sends = [
        (0, "guarded.x", "a", None),
        (1, "guarded.x", "b", Some("a")),
        (2, "guarded.x", "c", Some("x")),
        (3, "guarded.x", "a", None),
        (5, "nowhere.x", "d", None),
    ];
    for (slot, subject, id, after) in sends {
        round
            .publish(
                slot,
                subject.into(),
                message_id(id, after),
                id.as_bytes().to_vec().into(),
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), round.acknowledged())
        .await
        .expect("every publish is answered");
    let acks = round.into_acks();
    assert_eq!(
        acks[0],
        Some(Ack::Stored {
            sequence: 1,
            duplicate: false
        })
    );
    assert_eq!(
        acks[1],
        Some(Ack::Stored {
            sequence: 2,
            duplicate: false
        })
    );
    assert!(
        matches!(
            &acks[2],
            Some(Ack::Refused {
                err_code: jetstream::ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID,
                ..
            })
        ),
        "{:?}",
        acks[2]
    );
    assert_eq!(
        acks[3],
        Some(Ack::Stored {
            sequence: 1,
            duplicate: true
        })
    );
    assert_eq!(acks[4], None, "nothing was published for slot 4");
    assert_eq!(acks[5], Some(Ack::NoResponders));

    let mut next = publisher.round(1).await;
    next.publish(
        0,
        "guarded.x".into(),
        message_id("c", Some("b")),
        "c".into(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), next.acknowledged())
        .await
        .expect("answered");
    assert_eq!(
        next.into_acks(),
        vec![Some(Ack::Stored {
            sequence: 3,
            duplicate: false
        })]
    );
}
