//! A fact's artifacts, pulled from the peer into the local object store
//! through a spool file that an interrupted pull resumes from.

use super::Context;
use super::link::Link;
use crate::client::BsfgClient;
use crate::metrics::labels;
use bsfg_domain::{Code, Reason, Rejection, validate};
use bsfg_proto::bsfg::v1::AttachmentRef;
use futures::Stream;
use futures::StreamExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Makes an attachment present locally: skipped when an object with the
/// same digest is already there. Otherwise pulled in one pass: each chunk
/// is appended to a spool file (so an interrupted pull resumes from its
/// length) and streamed straight into the local object store, which
/// computes and checks the digest and size as it stores; on any failure
/// nothing is stored and the spool keeps what arrived.
pub(super) async fn pull_object(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    a: &AttachmentRef,
) -> Result<(), Rejection> {
    if is_present(cx, a).await? {
        return Ok(());
    }
    validate::digest("attachment digest", &a.digest)?;
    let (spool, have) = spool_of(link, a)?;
    let (media_type_tx, media_type_rx) = tokio::sync::oneshot::channel::<String>();
    let (chunks_tx, chunks) = spooled_then_arriving(&spool, have).await;
    let spool_path = &spool;
    // Owns the sender: when the pull ends, the store sees the end (or the
    // error) of the chunks.
    let pull = async move {
        let pulled = pull_into(
            link,
            client,
            cx,
            a,
            spool_path,
            have,
            &chunks_tx,
            media_type_tx,
        )
        .await;
        // A failed pull must fail the store too (nothing stored), never end
        // it early as if the object were complete.
        if let Err(r) = &pulled {
            let _ = chunks_tx.send(Err(r.clone())).await;
        }
        pulled
    };
    let store = store_object(cx, a, media_type_rx, chunks);
    let (pulled, stored) = tokio::join!(pull, store);
    let stored = match (pulled, stored) {
        (_, Ok(stored)) => stored,
        // The pull broke (and failed the store with it): resume later.
        (Err(p), Err(_)) if p.reason != Reason::LocalStoreStopped => return Err(p),
        (_, Err(r)) if r.code == Code::DataLoss || r.code == Code::InvalidArgument => {
            // All bytes arrived, but not the announced object: pull afresh.
            let _ = std::fs::remove_file(&spool);
            return Err(Rejection::new(
                Code::Unavailable,
                Reason::ObjectDigestMismatch,
                format!(
                    "{}/{} did not arrive as {}: {}; pulling again",
                    a.bucket, a.key, a.digest, r.message
                ),
            ));
        }
        // The key is frozen: a fact referencing it was checked against the
        // object, so it is here unless it is another version (a conflict).
        (_, Err(r)) if r.reason == Reason::ObjectImmutable => {
            return if is_present(cx, a).await? {
                Ok(())
            } else {
                Err(r)
            };
        }
        // The local store refused or failed on its own.
        (_, Err(r)) => return Err(r),
    };
    let _ = std::fs::remove_file(&spool);
    link.status.lock().unwrap().objects_pulled += 1;
    tracing::info!(
        link = %link.name,
        bucket = %a.bucket,
        key = %a.key,
        digest = %stored.digest,
        "artifact pulled"
    );
    Ok(())
}

/// Whether the attachment is stored here with its digest and size. `Err`
/// when that cannot be told now (the local store is unavailable): pulling
/// then would find the key frozen by an earlier attempt whose fact was not
/// stored, and refuse the fact for good; the screen retries instead. A key
/// that is missing, holds another version or a blob without a digest is
/// not present (pulled; a frozen other version is then refused).
async fn is_present(cx: &Context, a: &AttachmentRef) -> Result<bool, Rejection> {
    match cx.store.objects.info(&a.bucket, &a.key).await {
        Ok(local) => Ok(local.digest == a.digest && local.size_bytes == a.size_bytes),
        Err(r) if super::screener::retriable(&r) => Err(r),
        Err(_) => Ok(false),
    }
}

/// The attachment's spool file and the length an earlier attempt left in
/// it; a spool longer than the object is no prefix of it and is removed.
fn spool_of(link: &Link, a: &AttachmentRef) -> Result<(PathBuf, u64), Rejection> {
    let spool = link.config.spool_dir.join(a.digest.replace(':', "-"));
    let have = std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(0);
    if have > a.size_bytes {
        // Not a prefix of this object: start again.
        let _ = std::fs::remove_file(&spool);
        return Err(Rejection::new(
            Code::Unavailable,
            Reason::ObjectSpoolReset,
            format!(
                "{}/{}: the spool was longer than the object; pulling again",
                a.bucket, a.key
            ),
        ));
    }
    Ok((spool, have))
}

/// The chunks the store reads: what an earlier attempt spooled, then the
/// chunks sent as they arrive; a few chunks in flight bound the memory.
async fn spooled_then_arriving(
    spool: &Path,
    have: u64,
) -> (
    tokio::sync::mpsc::Sender<Result<bytes::Bytes, Rejection>>,
    impl Stream<Item = Result<bytes::Bytes, Rejection>> + Send + Unpin,
) {
    let spooled = tokio::fs::File::open(spool).await.ok().map(|f| {
        tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(f, have),
            crate::store::objects::CHUNK_BYTES,
        )
        .map(|r: std::io::Result<bytes::Bytes>| r.map_err(spool_error))
    });
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Rejection>>(4);
    let arriving = futures::stream::unfold(chunks_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let chunks = Box::pin(futures::stream::iter(spooled).flatten().chain(arriving));
    (chunks_tx, chunks)
}

/// Stores the object from `chunks` into the local object store. It keeps
/// the media type declared where it was uploaded, as the origin's GetObject
/// reports it (known before the first chunk); the fact's attachment
/// reference says it otherwise (nothing left to pull, or an origin that did
/// not keep it).
async fn store_object(
    cx: &Context,
    a: &AttachmentRef,
    media_type_rx: tokio::sync::oneshot::Receiver<String>,
    chunks: impl Stream<Item = Result<bytes::Bytes, Rejection>> + Send + Unpin,
) -> Result<crate::store::objects::StoredObject, Rejection> {
    let origin = media_type_rx
        .await
        .ok()
        .filter(|m| !m.is_empty() && validate::media_type("media_type", m).is_ok());
    let header = crate::store::objects::PutHeader {
        bucket: a.bucket.clone(),
        key: a.key.clone(),
        media_type: origin.unwrap_or_else(|| a.media_type.clone()),
        expected_digest: a.digest.clone(),
        expected_size_bytes: a.size_bytes,
    };
    cx.store.objects.put(header, chunks).await
}

fn spool_error(e: std::io::Error) -> Rejection {
    Rejection::new(Code::Unavailable, Reason::SpoolUnavailable, e.to_string())
}

/// Pulls the object from byte `have` on, appending each chunk to the spool
/// file and forwarding it to the local store. The media type the origin
/// reports goes to `media_type_tx` before any chunk (the store waits for it;
/// it is dropped unsent if none arrives first).
#[allow(clippy::too_many_arguments)]
async fn pull_into(
    link: &Link,
    client: &BsfgClient,
    cx: &Context,
    a: &AttachmentRef,
    spool: &std::path::Path,
    have: u64,
    chunks_tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, Rejection>>,
    media_type_tx: tokio::sync::oneshot::Sender<String>,
) -> Result<(), Rejection> {
    if have == a.size_bytes {
        return Ok(());
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool)
        .map_err(spool_error)?;
    let timeout = Duration::from_secs(60 + a.size_bytes / (1024 * 1024));
    let media_type_tx = std::sync::Mutex::new(Some(media_type_tx));
    let on_info = |info: &bsfg_proto::bsfg::v1::ObjectInfo| {
        if let Some(tx) = media_type_tx.lock().unwrap().take() {
            let _ = tx.send(info.media_type.clone());
        }
    };
    let pulled = client
        .get_object_with(&a.bucket, &a.key, have, timeout, on_info, |_, chunk| {
            // Never leave the store waiting for a media type while chunks
            // fill the channel.
            drop(media_type_tx.lock().unwrap().take());
            let written = file.write_all(&chunk);
            let chunks_tx = chunks_tx.clone();
            async move {
                written?;
                chunks_tx
                    .send(Ok(bytes::Bytes::from(chunk)))
                    .await
                    .map_err(|_| anyhow::anyhow!(Reason::LocalStoreStopped))
            }
        })
        .await;
    let _ = file.sync_data();
    pulled.map(|_| ()).map_err(|e| {
        if e.to_string().contains(Reason::LocalStoreStopped.as_str()) {
            return Rejection::new(
                Code::Unavailable,
                Reason::LocalStoreStopped,
                "the local object store stopped reading",
            );
        }
        let bytes_now = std::fs::metadata(spool).map(|m| m.len()).unwrap_or(0);
        cx.metrics
            .object_resume_bytes_total
            .get_or_create(&labels(&[("link", &link.name)]))
            .inc_by(bytes_now.saturating_sub(have));
        Rejection::new(
            Code::Unavailable,
            Reason::ObjectPullInterrupted,
            format!("{}/{} at byte {bytes_now}: {e}", a.bucket, a.key),
        )
    })
}
