//! The room left in an object bucket, and whether an upload still fits it.
//!
//! Why: a bucket's stream refuses a write past its `max_bytes`
//! (`capacity_bytes`, discard new). An upload refused that way in the
//! middle has published its first chunks, and the object store's `put`
//! returns the error without removing them: chunks that no object names,
//! that no delete can reach, holding the room the refusal was about. So an
//! upload stops reading once what it received no longer fits the room the
//! bucket had when it started; its blob is then complete and named, and is
//! deleted whole like any refused upload's (`objects::discard_blob`).
//!
//! The estimate errs toward full: each chunk is counted with
//! [`CHUNK_OVERHEAD_BYTES`] of subject, headers and record framing, and
//! [`META_RESERVE_BYTES`] are kept for the object's metadata message.
//! Uploads running at once into one bucket each see the room as it was when
//! they started: when together they overfill it, the stream itself refuses
//! the last, and the chunks it had published stay in the bucket's stream
//! (`nats stream purge OBJ_<bucket> --subject '$O.<bucket>.C.<nuid>'` for a
//! chunk subject that no object's metadata names).
//!
//! Invariant: a room never exceeds the bucket's capacity.

/// Stored bytes a chunk message takes beyond its payload: subject
/// (`$O.<bucket>.C.<nuid>`), headers and the file store's record framing,
/// rounded up.
pub const CHUNK_OVERHEAD_BYTES: u64 = 256;

/// Kept for the object's metadata message (its name, digest, size and
/// metadata as JSON, a few hundred bytes) and the delete marker that
/// replaces it if the upload is refused.
pub const META_RESERVE_BYTES: u64 = 8 * 1024;

/// What a bucket could still take when an upload started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRoom {
    bytes: u64,
}

impl BucketRoom {
    /// The room of a bucket of `capacity_bytes` whose stream holds
    /// `used_bytes`.
    pub fn of(capacity_bytes: u64, used_bytes: u64) -> Self {
        let room = Self {
            bytes: capacity_bytes.saturating_sub(used_bytes),
        };
        assert!(room.bytes <= capacity_bytes, "a room within the capacity");
        room
    }

    /// Whether an upload of `received_bytes`, stored in chunks of
    /// `chunk_bytes`, still fits with its metadata.
    pub fn fits(&self, received_bytes: u64, chunk_bytes: u64) -> bool {
        assert!(chunk_bytes > 0, "chunks hold bytes");
        let chunks = received_bytes.div_ceil(chunk_bytes).max(1);
        let stored = received_bytes
            .saturating_add(chunks.saturating_mul(CHUNK_OVERHEAD_BYTES))
            .saturating_add(META_RESERVE_BYTES);
        stored <= self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 128 * 1024;

    #[test]
    fn an_upload_fits_with_its_chunks_framing_and_metadata() {
        let room = BucketRoom::of(1024 * 1024, 0);
        // 1 MiB of payload is 8 chunks and leaves no room for their framing.
        assert!(!room.fits(1024 * 1024, CHUNK));
        let framing = 8 * CHUNK_OVERHEAD_BYTES + META_RESERVE_BYTES;
        assert!(room.fits(1024 * 1024 - framing, CHUNK), "exactly full");
        assert!(!room.fits(1024 * 1024 - framing + 1, CHUNK));
    }

    #[test]
    fn an_empty_upload_still_needs_its_metadata() {
        assert!(!BucketRoom::of(1024, 0).fits(0, CHUNK));
        assert!(BucketRoom::of(META_RESERVE_BYTES + CHUNK_OVERHEAD_BYTES, 0).fits(0, CHUNK));
    }

    #[test]
    fn a_bucket_over_its_capacity_has_no_room() {
        // A stream can hold more than a lowered capacity.
        let room = BucketRoom::of(1024 * 1024, 2 * 1024 * 1024);
        assert_eq!(room, BucketRoom { bytes: 0 });
        assert!(!room.fits(0, CHUNK));
    }
}
