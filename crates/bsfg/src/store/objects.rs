//! Artifacts in the zone's object store (JetStream object store buckets).
//!
//! An upload is written to a fresh blob (`_bsfg/blob/<id>`) and the
//! requested key is then pointed at it with an object-store link. That is
//! what makes "nothing kept on failure" cheap and exact: a failed or
//! mismatching upload deletes its own blob and never touches the key, so a
//! previous version stays intact. An upload that no longer fits its bucket
//! stops before the bucket's stream refuses a chunk (`bucket_room`): a
//! refusal there would leave chunks no blob names. A key referenced by a
//! fact is frozen (a marker in the `bsfg_object_refs` KV bucket);
//! overwriting it is refused.

use super::bucket_room::{Filling, Start, UploadRoom};
use super::direct::DirectGets;
use super::failure::unavailable;
use crate::config::ZoneConfig;
use async_nats::jetstream::{self, kv, object_store};
use bsfg_domain::identity::digest_string;
use bsfg_domain::validate;
use bsfg_domain::{Code, Reason, Rejection};
use bsfg_proto::bsfg::v1::AttachmentRef;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const REFS_BUCKET: &str = "bsfg_object_refs";
const BLOB_PREFIX: &str = "_bsfg/blob/";
/// The blob's object-store metadata entry that holds the media type the
/// upload declared. On the blob, written with it, because async-nats'
/// `update_metadata` does not write metadata (only name and description)
/// and `add_link` writes none: the link's entry was always empty, and
/// GetObject answered `media_type ""` whatever PutObject declared.
const MEDIA_TYPE_METADATA: &str = "media_type";
/// Size of each chunk message in the object store and on GetObject.
pub const CHUNK_BYTES: usize = 128 * 1024;

/// What a caller learns about a stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    pub digest: String,
    pub size_bytes: u64,
    pub media_type: String,
    blob: String,
    /// The blob's chunk subject token (`$O.<bucket>.C.<nuid>`).
    blob_nuid: String,
}

/// The header of an upload.
#[derive(Debug, Clone, Default)]
pub struct PutHeader {
    pub bucket: String,
    pub key: String,
    pub media_type: String,
    pub expected_digest: String,
    pub expected_size_bytes: u64,
}

pub struct Objects {
    config: Arc<ZoneConfig>,
    direct: Arc<DirectGets>,
    buckets: HashMap<String, object_store::ObjectStore>,
    refs: kv::Store,
    disk: Arc<super::disk::DiskWatch>,
    /// Each bucket's stream: to read the room left in it before an upload,
    /// and, when it has several replicas, to ask its leader what a direct
    /// get did not find (see [`Objects::entry`]).
    streams: HashMap<String, jetstream::stream::Stream>,
    /// Whether the buckets have several replicas.
    replicated: bool,
    /// What this node's uploads into each bucket stored or are storing.
    filling: HashMap<String, Arc<Filling>>,
    /// The references bucket's stream when it has several replicas: an
    /// object frozen a moment ago must not read as unfrozen from a replica
    /// one write behind (see [`Objects::is_frozen`]).
    refs_leader: Option<jetstream::stream::Stream>,
}

impl Objects {
    pub async fn open(
        jetstream: jetstream::Context,
        config: Arc<ZoneConfig>,
        direct: Arc<DirectGets>,
        disk: Arc<super::disk::DiskWatch>,
    ) -> anyhow::Result<Self> {
        let mut buckets = HashMap::new();
        for b in &config.buckets {
            let store = match jetstream.get_object_store(&b.name).await {
                Ok(store) => store,
                Err(_) => {
                    jetstream
                        .create_object_store(object_store::Config {
                            bucket: b.name.clone(),
                            description: Some(format!("BSFG zone {} artifacts", config.zone)),
                            max_age: std::time::Duration::ZERO,
                            max_bytes: b.capacity_bytes as i64,
                            storage: jetstream::stream::StorageType::File,
                            num_replicas: config.nats.replicas,
                            compression: false,
                            placement: None,
                        })
                        .await?
                }
            };
            buckets.insert(b.name.clone(), store);
        }
        let mut streams = HashMap::new();
        for b in &config.buckets {
            let stream = jetstream.get_stream(format!("OBJ_{}", b.name)).await?;
            streams.insert(b.name.clone(), stream);
        }
        let replicated = config.nats.replicas > 1;
        let refs = match jetstream.get_key_value(REFS_BUCKET).await {
            Ok(refs) => refs,
            Err(_) => {
                jetstream
                    .create_key_value(kv::Config {
                        bucket: REFS_BUCKET.into(),
                        description: "objects referenced by facts (immutable)".into(),
                        history: 1,
                        max_age: std::time::Duration::ZERO,
                        max_bytes: -1,
                        max_value_size: 1024,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: config.nats.replicas,
                        ..Default::default()
                    })
                    .await?
            }
        };
        let refs_leader = match config.nats.replicas > 1 {
            true => Some(jetstream.get_stream(format!("KV_{REFS_BUCKET}")).await?),
            false => None,
        };
        Ok(Self {
            config,
            direct,
            buckets,
            refs,
            disk,
            filling: streams
                .keys()
                .map(|b| (b.clone(), Arc::default()))
                .collect(),
            streams,
            replicated,
            refs_leader,
        })
    }

    fn bucket(&self, name: &str) -> Result<&object_store::ObjectStore, Rejection> {
        validate::bucket(name)?;
        self.buckets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self
                .config
                .buckets
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            Rejection::new(
                Code::NotFound,
                Reason::UnknownBucket,
                format!("bucket {name:?} is not configured in this zone (configured: {known:?})"),
            )
        })
    }

    fn ref_key(bucket: &str, key: &str) -> String {
        let mut h = Sha256::new();
        h.update(bucket.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        hex::encode(h.finalize())
    }

    /// Whether a fact references `bucket/key`. The KV read is a direct get,
    /// which any replica of a replicated bucket may answer, one write
    /// behind the leader too: a reference not found there is asked of the
    /// leader, so an object frozen a moment ago is never overwritten.
    async fn is_frozen(&self, bucket: &str, key: &str) -> Result<bool, Rejection> {
        let ref_key = Self::ref_key(bucket, key);
        let entry = self
            .refs
            .get(&ref_key)
            .await
            .map_err(|e| unavailable("reading object references", e))?;
        if entry.is_some() {
            return Ok(true);
        }
        let Some(leader) = &self.refs_leader else {
            return Ok(false);
        };
        let subject = format!("$KV.{REFS_BUCKET}.{ref_key}");
        let what = "reading object references from the leader";
        // References are only ever put (never deleted).
        let found = super::leader_read::last_on_subject(leader, &subject, what).await?;
        Ok(found.is_some())
    }

    /// Information about `bucket/key`, following the link to its blob.
    pub async fn info(&self, bucket: &str, key: &str) -> Result<StoredObject, Rejection> {
        let store = self.bucket(bucket)?;
        validate::object_key(key, &self.config.limits)?;
        let missing = || {
            Rejection::new(
                Code::NotFound,
                Reason::ObjectNotFound,
                format!("no object {bucket}/{key}; upload it with PutObject first"),
            )
        };
        let link = match self.entry(bucket, store, key).await? {
            Some(info) if !info.deleted => info,
            _ => return Err(missing()),
        };
        let blob_name = link
            .options
            .as_ref()
            .and_then(|o| o.link.as_ref())
            .and_then(|l| l.name.clone())
            .ok_or_else(missing)?;
        let blob = self
            .entry(bucket, store, &blob_name)
            .await?
            .ok_or_else(|| unavailable("reading object blob info", "not found"))?;
        let digest = blob
            .digest
            .as_deref()
            .and_then(nats_digest_to_hex)
            .ok_or_else(|| {
                Rejection::new(
                    Code::DataLoss,
                    Reason::ObjectDigestMissing,
                    format!("object {bucket}/{key} has no readable digest"),
                )
            })?;
        Ok(StoredObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
            digest,
            size_bytes: blob.size as u64,
            media_type: blob
                .metadata
                .get(MEDIA_TYPE_METADATA)
                .cloned()
                .unwrap_or_default(),
            blob: blob_name,
            blob_nuid: blob.nuid,
        })
    }

    /// The object-store entry `name` of `bucket`, None when there is none
    /// (`leader_read::object_entry`: a replicated bucket's miss is asked of
    /// its leader).
    async fn entry(
        &self,
        bucket: &str,
        store: &object_store::ObjectStore,
        name: &str,
    ) -> Result<Option<object_store::ObjectInfo>, Rejection> {
        let leader = self.streams.get(bucket).filter(|_| self.replicated);
        super::leader_read::object_entry(store, leader, bucket, name).await
    }

    /// Checks that every attachment exists with the stated digest and size,
    /// then freezes each so it can no longer be overwritten.
    pub async fn check_and_freeze(&self, attachments: &[AttachmentRef]) -> Result<(), Rejection> {
        for (i, a) in attachments.iter().enumerate() {
            let stored = self
                .info(&a.bucket, &a.key)
                .await
                .map_err(|r| match r.code {
                    Code::NotFound => Rejection::new(
                        Code::FailedPrecondition,
                        Reason::AttachmentMissing,
                        format!("attachments[{i}]: {}", r.message),
                    ),
                    _ => r,
                })?;
            if stored.digest != a.digest || stored.size_bytes != a.size_bytes {
                return Err(Rejection::new(
                    Code::FailedPrecondition,
                    Reason::AttachmentMismatch,
                    format!(
                        "attachments[{i}] {}/{} is stored with {} ({} bytes), the fact says {} ({} bytes)",
                        a.bucket, a.key, stored.digest, stored.size_bytes, a.digest, a.size_bytes
                    ),
                ));
            }
        }
        for a in attachments {
            let value = format!("{}/{} {}", a.bucket, a.key, a.digest);
            self.refs
                .put(Self::ref_key(&a.bucket, &a.key), value.into())
                .await
                .map_err(|e| unavailable("freezing a referenced object", e))?;
        }
        Ok(())
    }

    /// Validates an upload header before any byte is accepted.
    pub async fn check_put(&self, header: &PutHeader) -> Result<(), Rejection> {
        self.bucket(&header.bucket)?;
        validate::object_key(&header.key, &self.config.limits)?;
        validate::media_type("media_type", &header.media_type)?;
        if !header.expected_digest.is_empty() {
            validate::digest("expected_digest", &header.expected_digest)?;
        }
        if header.expected_size_bytes > self.config.limits.object_bytes_max {
            return Err(too_large(
                header.expected_size_bytes,
                self.config.limits.object_bytes_max,
            ));
        }
        if self.is_frozen(&header.bucket, &header.key).await? {
            return Err(frozen(&header.bucket, &header.key));
        }
        // An upload is written to the store's disk like a fact.
        self.disk.check()
    }

    /// Streams an upload into a new blob, verifies it, and points the key at
    /// it. On any failure the blob is deleted and the key is untouched.
    pub async fn put<S>(&self, header: PutHeader, chunks: S) -> Result<StoredObject, Rejection>
    where
        S: Stream<Item = Result<Bytes, Rejection>> + Send + Unpin,
    {
        self.check_put(&header).await?;
        let store = self.bucket(&header.bucket)?.clone();
        let room = self.room(&header.bucket).await?;
        let blob_name = format!("{BLOB_PREFIX}{}", random_id());
        let bounds = UploadBounds {
            bytes_max: self.config.limits.object_bytes_max,
            room,
            full: bucket_full(&header),
        };
        let (mut reader, failure) = bounded_reader(chunks, bounds);
        let meta = blob_metadata(&blob_name, &header.media_type);
        let blob = store
            .put(meta, &mut reader)
            .await
            .map_err(|e| write_refused(&header, e))?;
        let failed = failure.lock().unwrap().take();
        if let Some(r) = failed {
            return discard_blob(&store, &blob_name, r).await;
        }
        let digest = blob
            .digest
            .as_deref()
            .and_then(nats_digest_to_hex)
            .unwrap_or_default();
        let size_bytes = blob.size as u64;
        if let Err(r) = check_received(&header, &digest, size_bytes) {
            return discard_blob(&store, &blob_name, r).await;
        }
        // Re-check just before switching the key: a fact may have frozen it
        // while the bytes were streaming.
        if self.is_frozen(&header.bucket, &header.key).await? {
            return discard_blob(&store, &blob_name, frozen(&header.bucket, &header.key)).await;
        }
        self.link_key(&store, &header, &blob, &blob_name).await?;
        Ok(StoredObject {
            bucket: header.bucket,
            key: header.key,
            digest,
            size_bytes,
            media_type: header.media_type,
            blob: blob_name,
            blob_nuid: blob.nuid.clone(),
        })
    }

    /// What `bucket` can still take (`bucket_room`), from now on.
    async fn room(&self, bucket: &str) -> Result<UploadRoom, Rejection> {
        let stream = self.streams.get(bucket).expect("a stream for every bucket");
        let start = Start::new(self.filling[bucket].clone());
        let info = stream
            .get_info()
            .await
            .map_err(|e| unavailable("reading the bucket's fill", e))?;
        let capacity_bytes = self
            .config
            .buckets
            .iter()
            .find(|b| b.name == bucket)
            .expect("a configured bucket")
            .capacity_bytes;
        Ok(start.room(capacity_bytes, info.state.bytes, CHUNK_BYTES as u64))
    }

    /// Points `header.key` at the new blob and deletes the blob it pointed
    /// at before, if any.
    async fn link_key(
        &self,
        store: &object_store::ObjectStore,
        header: &PutHeader,
        blob: &object_store::ObjectInfo,
        blob_name: &str,
    ) -> Result<(), Rejection> {
        let previous_blob = self
            .info(&header.bucket, &header.key)
            .await
            .ok()
            .map(|o| o.blob);
        store
            .add_link(&header.key, blob)
            .await
            .map_err(|e| unavailable("linking the object key", e))?;
        if let Some(old) = previous_blob.filter(|old| old != blob_name) {
            let _ = store.delete(&old).await;
        }
        Ok(())
    }

    /// Opens `bucket/key` for reading from `start_offset_bytes`. Returns the
    /// info and a stream of (offset, chunk).
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        start_offset_bytes: u64,
    ) -> Result<
        (
            StoredObject,
            impl Stream<Item = Result<(u64, Bytes), Rejection>> + Send + 'static,
        ),
        Rejection,
    > {
        let info = self.info(bucket, key).await?;
        if start_offset_bytes > info.size_bytes {
            return Err(Rejection::new(
                Code::OutOfRange,
                Reason::OffsetBeyondEnd,
                format!(
                    "start_offset_bytes {start_offset_bytes} is beyond the object's {} bytes",
                    info.size_bytes
                ),
            ));
        }
        self.bucket(bucket)?;
        // Read the blob's chunks a window at a time (see `direct`): memory
        // per stream is the window, however slow the receiver. The digest
        // is recomputed over every byte, skipped prefix included, and
        // checked at the end: a damaged object never streams out as good.
        let reader = ChunkReader {
            direct: self.direct.clone(),
            stream: format!("OBJ_{bucket}"),
            subject: format!("$O.{bucket}.C.{}", info.blob_nuid),
            next_seq: 1,
            window: std::collections::VecDeque::new(),
            position: 0,
            start: start_offset_bytes,
            size: info.size_bytes,
            digest: info.digest.clone(),
            hasher: Sha256::new(),
            label: format!("{bucket}/{key}"),
        };
        let stream = futures::stream::try_unfold(reader, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            Ok(chunk.map(|chunk| (chunk, reader)))
        });
        Ok((info, stream))
    }
}

/// Chunks of GetObject, read `CHUNK_WINDOW` at a time.
struct ChunkReader {
    direct: Arc<DirectGets>,
    stream: String,
    subject: String,
    next_seq: u64,
    window: std::collections::VecDeque<Bytes>,
    /// Bytes of the object read so far (skipped or served).
    position: u64,
    /// The first byte to serve.
    start: u64,
    size: u64,
    digest: String,
    hasher: Sha256,
    label: String,
}

/// Chunks asked for per direct-get request (1 MiB of 128 KiB chunks).
const CHUNK_WINDOW: usize = 8;

impl ChunkReader {
    /// The next (offset, bytes) to serve, or `None` after the last byte
    /// once the digest checked out.
    async fn next_chunk(&mut self) -> Result<Option<(u64, Bytes)>, Rejection> {
        loop {
            if self.position >= self.size {
                let raw: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
                let digest = digest_string(&raw);
                if self.position != self.size || digest != self.digest {
                    return Err(Rejection::new(
                        Code::DataLoss,
                        Reason::ObjectCorrupt,
                        format!(
                            "{} read back as {} bytes with {digest}; stored as {} bytes with {}",
                            self.label, self.position, self.size, self.digest
                        ),
                    ));
                }
                return Ok(None);
            }
            let Some(chunk) = self.window.pop_front() else {
                self.fill().await?;
                continue;
            };
            let offset = self.position;
            self.hasher.update(&chunk);
            self.position += chunk.len() as u64;
            if self.position <= self.start {
                continue;
            }
            // Serve from `start` on, also when it falls inside this chunk.
            let skip = self.start.saturating_sub(offset) as usize;
            return Ok(Some((offset + skip as u64, chunk.slice(skip..))));
        }
    }

    async fn fill(&mut self) -> Result<(), Rejection> {
        let messages = self
            .direct
            .next_batch(
                &self.stream,
                &self.subject,
                self.next_seq,
                CHUNK_WINDOW,
                CHUNK_WINDOW * (CHUNK_BYTES + 1024),
            )
            .await?;
        if messages.is_empty() {
            return Err(Rejection::new(
                Code::DataLoss,
                Reason::ObjectTruncated,
                format!(
                    "{} ends after {} of its {} bytes",
                    self.label, self.position, self.size
                ),
            ));
        }
        for m in messages {
            self.next_seq = m.sequence + 1;
            self.window.push_back(m.payload);
        }
        Ok(())
    }
}

/// What an upload may take: at most `bytes_max`, and only while it fits
/// the bucket's `room` (else it is refused with `full`).
struct UploadBounds {
    bytes_max: u64,
    room: UploadRoom,
    full: Rejection,
}

impl UploadBounds {
    /// Why an upload that received `received` bytes, the last `bytes`,
    /// must stop, if it must.
    fn exceeded(&self, received: u64, bytes: u64) -> Option<Rejection> {
        if received > self.bytes_max {
            return Some(too_large(received, self.bytes_max));
        }
        (!self.room.receive(bytes)).then(|| self.full.clone())
    }
}

/// The upload as a reader for the object store, in pieces of one chunk.
/// The reader ends cleanly (EOF) on a client error, an oversize upload or
/// one that no longer fits its bucket, so the object store never leaves
/// orphan chunks behind; the failure is remembered (the returned slot) and
/// the complete-but-wrong blob deleted.
fn bounded_reader<S>(
    chunks: S,
    bounds: UploadBounds,
) -> (
    impl tokio::io::AsyncRead + Send + Unpin,
    Arc<std::sync::Mutex<Option<Rejection>>>,
)
where
    S: Stream<Item = Result<Bytes, Rejection>> + Send + Unpin,
{
    let failure: Arc<std::sync::Mutex<Option<Rejection>>> = Arc::default();
    let stopped = Arc::new(AtomicBool::new(false));
    let mut received: u64 = 0;
    let failure_in = failure.clone();
    let stopped_in = stopped.clone();
    let reader_stream = chunks
        .flat_map(|item| futures::stream::iter(pieces(item)))
        .take_while(move |item| {
            let refused = match item {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    bounds.exceeded(received, bytes.len() as u64)
                }
                Err(r) => Some(r.clone()),
            };
            let keep = !stopped_in.load(Ordering::Relaxed) && refused.is_none();
            if let Some(r) = refused {
                failure_in.lock().unwrap().get_or_insert(r);
            }
            if !keep {
                stopped_in.store(true, Ordering::Relaxed);
            }
            futures::future::ready(keep)
        })
        .map(|item| item.map_err(|r| std::io::Error::other(r.to_string())));
    (tokio_util::io::StreamReader::new(reader_stream), failure)
}

/// An upload's message in pieces of at most [`CHUNK_BYTES`]: what the
/// object store reads and publishes at a time (`bucket_room`).
fn pieces(item: Result<Bytes, Rejection>) -> Vec<Result<Bytes, Rejection>> {
    let Ok(mut bytes) = item else {
        return vec![item];
    };
    let mut out = Vec::with_capacity(bytes.len().div_ceil(CHUNK_BYTES).max(1));
    while bytes.len() > CHUNK_BYTES {
        out.push(Ok(bytes.split_to(CHUNK_BYTES)));
    }
    out.push(Ok(bytes));
    out
}

/// The new blob's metadata: its name, chunk size and declared media type.
fn blob_metadata(blob_name: &str, media_type: &str) -> object_store::ObjectMetadata {
    object_store::ObjectMetadata {
        name: blob_name.to_string(),
        chunk_size: Some(CHUNK_BYTES),
        metadata: if media_type.is_empty() {
            HashMap::new()
        } else {
            HashMap::from([(MEDIA_TYPE_METADATA.to_string(), media_type.to_string())])
        },
        ..Default::default()
    }
}

/// Why the object store would not take the upload's bytes.
fn write_refused(header: &PutHeader, e: object_store::PutError) -> Rejection {
    if is_bucket_full(&e.to_string()) {
        return bucket_full(header);
    }
    unavailable("writing the object", e)
}

fn bucket_full(header: &PutHeader) -> Rejection {
    Rejection::new(
        Code::ResourceExhausted,
        Reason::BucketFull,
        format!(
            "bucket {} has no room for {}/{} (its capacity_bytes is reached); nothing was stored; an operator frees objects or raises the capacity",
            header.bucket, header.bucket, header.key
        ),
    )
}

/// Whether the received bytes are the ones the request declared (digest,
/// then size, each only when declared).
fn check_received(header: &PutHeader, digest: &str, size_bytes: u64) -> Result<(), Rejection> {
    if !header.expected_digest.is_empty() && header.expected_digest != digest {
        return Err(Rejection::new(
            Code::InvalidArgument,
            Reason::DigestMismatch,
            format!(
                "received bytes hash to {digest}, the request expected {}; nothing was stored, upload again",
                header.expected_digest
            ),
        ));
    }
    if header.expected_size_bytes != 0 && header.expected_size_bytes != size_bytes {
        return Err(Rejection::new(
            Code::InvalidArgument,
            Reason::SizeMismatch,
            format!(
                "received {size_bytes} bytes, the request expected {}; nothing was stored",
                header.expected_size_bytes
            ),
        ));
    }
    Ok(())
}

/// Deletes a rejected upload's blob (logging if it cannot) and returns the
/// rejection.
async fn discard_blob(
    store: &object_store::ObjectStore,
    blob_name: &str,
    r: Rejection,
) -> Result<StoredObject, Rejection> {
    if let Err(e) = store.delete(blob_name).await {
        tracing::warn!(blob = %blob_name, error = %e, "could not delete a rejected upload's blob");
    }
    Err(r)
}

fn too_large(size: u64, max: u64) -> Rejection {
    Rejection::new(
        Code::InvalidArgument,
        Reason::ObjectTooLarge,
        format!("object is {size} bytes or more; the limit is {max} bytes; nothing was stored"),
    )
}

fn frozen(bucket: &str, key: &str) -> Rejection {
    Rejection::new(
        Code::FailedPrecondition,
        Reason::ObjectImmutable,
        format!(
            "{bucket}/{key} is referenced by a fact and cannot be replaced; upload the new version under a new key and append a new fact"
        ),
    )
}

/// async-nats reports `SHA-256=<base64url>`; BSFG speaks `sha256:<hex>`.
fn nats_digest_to_hex(value: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = value.strip_prefix("SHA-256=")?;
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64))
        .ok()?;
    let raw: [u8; 32] = raw.try_into().ok()?;
    Some(digest_string(&raw))
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// JetStream's refusal of a write past the bucket stream's `max_bytes`
/// (error 10077, nats-server's `JSStreamStoreFailedF` wrapping "maximum
/// bytes exceeded"); async-nats reports it only as text.
fn is_bucket_full(error: &str) -> bool {
    error.contains(&jetstream::ErrorCode::STREAM_STORE_FAILED.0.to_string())
        || error.contains("maximum bytes exceeded")
}

#[cfg(test)]
mod tests {
    #[test]
    fn nats_digest_converts_to_sha256_hex() {
        use base64::Engine as _;
        let raw = [7u8; 32];
        let nats = format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(raw)
        );
        assert_eq!(
            super::nats_digest_to_hex(&nats).unwrap(),
            format!("sha256:{}", "07".repeat(32))
        );
        assert!(super::nats_digest_to_hex("MD5=abc").is_none());
    }
}
