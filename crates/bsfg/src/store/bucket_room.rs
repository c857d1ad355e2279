//! The room left in an object bucket, and whether an upload still fits it.
//!
//! Why: a bucket's stream refuses a write past its `max_bytes`
//! (`capacity_bytes`, discard new). An upload refused that way in the
//! middle has published its first chunks, and the object store's `put`
//! returns the error without removing them: chunks that no object names,
//! that no delete can reach, holding the room the refusal was about. So an
//! upload stops reading once it no longer fits; its blob is then complete
//! and named, and is deleted whole like any refused upload's
//! (`objects::discard_blob`).
//!
//! How: an upload is read in pieces of at most one chunk, and the object
//! store publishes each piece (as one or two chunk messages) and awaits its
//! acknowledgement before it reads the next. The node keeps one account
//! per bucket of what its uploads stored or are storing ([`Filling`]: each
//! piece with [`PIECE_OVERHEAD_BYTES`] of subject, headers and framing). An
//! upload starts from the stream's bytes, read after it looked at the
//! account, and fits while everything the account gained since, plus one
//! piece for each other upload then running (read, perhaps not yet in the
//! stream's bytes), plus [`META_RESERVE_BYTES`], is within the capacity.
//! Every estimate errs toward full.
//!
//! Uploads through other nodes of an HA zone are not in this node's
//! account: when they overfill the bucket together, the stream refuses the
//! last, and the chunks it had published stay in the bucket's stream
//! (`nats stream purge OBJ_<bucket> --subject '$O.<bucket>.C.<nuid>'` for a
//! chunk subject that no object's metadata names).
//!
//! Invariants: an upload's room never exceeds the bucket's capacity; the
//! account only grows; the count of running uploads returns to what it was
//! when an upload ends (`Running` is dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Stored bytes a piece takes beyond its payload: up to two chunk messages'
/// subject (`$O.<bucket>.C.<nuid>`), headers and record framing, rounded
/// up.
pub const PIECE_OVERHEAD_BYTES: u64 = 256;

/// Kept for the object's metadata message (its name, digest, size and
/// metadata as JSON, a few hundred bytes) and the delete marker that
/// replaces it if the upload is refused.
pub const META_RESERVE_BYTES: u64 = 8 * 1024;

/// What this node's uploads into one bucket stored or are storing.
#[derive(Debug, Default)]
pub struct Filling {
    /// Estimated stored bytes of every piece read so far.
    stored_bytes: AtomicU64,
    /// Uploads running now.
    running: AtomicU64,
}

/// One upload's room, from its start to its end.
#[derive(Debug)]
pub struct UploadRoom {
    filling: Arc<Filling>,
    piece_bytes_max: u64,
    /// `filling.stored_bytes` when the upload started.
    since_bytes: u64,
    /// What the bucket could take then: capacity, less the stream's bytes,
    /// the other running uploads' pieces and the metadata's reserve.
    room_bytes: u64,
}

/// Taken before the stream's bytes are read: the account then, and the
/// other uploads running.
#[derive(Debug)]
pub struct Start {
    filling: Arc<Filling>,
    since_bytes: u64,
    others: u64,
    /// Whether an [`UploadRoom`] took over the running count.
    handed_over: bool,
}

impl Start {
    pub fn new(filling: Arc<Filling>) -> Self {
        let others = filling.running.fetch_add(1, Ordering::SeqCst);
        let since_bytes = filling.stored_bytes.load(Ordering::SeqCst);
        Self {
            filling,
            since_bytes,
            others,
            handed_over: false,
        }
    }

    /// The upload's room in a bucket of `capacity_bytes` whose stream held
    /// `used_bytes` (read after [`Start::new`]), read in pieces of at most
    /// `piece_bytes_max`.
    pub fn room(
        mut self,
        capacity_bytes: u64,
        used_bytes: u64,
        piece_bytes_max: u64,
    ) -> UploadRoom {
        assert!(piece_bytes_max > 0, "pieces hold bytes");
        let unseen = self.others * (piece_bytes_max + PIECE_OVERHEAD_BYTES);
        let room_bytes = capacity_bytes
            .saturating_sub(used_bytes)
            .saturating_sub(unseen)
            .saturating_sub(META_RESERVE_BYTES);
        assert!(room_bytes <= capacity_bytes, "a room within the capacity");
        self.handed_over = true;
        UploadRoom {
            filling: self.filling.clone(),
            piece_bytes_max,
            since_bytes: self.since_bytes,
            room_bytes,
        }
    }
}

impl Drop for Start {
    /// An upload that never got its room (the stream's bytes could not be
    /// read) is no longer running.
    fn drop(&mut self) {
        if !self.handed_over {
            self.filling.running.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl UploadRoom {
    /// Counts a piece of `bytes` this upload read; whether everything the
    /// node's uploads read into the bucket since it started still fits.
    pub fn receive(&self, bytes: u64) -> bool {
        assert!(bytes <= self.piece_bytes_max, "read in pieces");
        let piece = bytes + PIECE_OVERHEAD_BYTES;
        let before = self.filling.stored_bytes.fetch_add(piece, Ordering::SeqCst);
        assert!(before >= self.since_bytes, "the account only grows");
        before + piece - self.since_bytes <= self.room_bytes
    }
}

impl Drop for UploadRoom {
    fn drop(&mut self) {
        self.filling.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIECE: u64 = 128 * 1024;
    const FRAMED: u64 = PIECE + PIECE_OVERHEAD_BYTES;

    fn room(filling: &Arc<Filling>, capacity_bytes: u64, used_bytes: u64) -> UploadRoom {
        Start::new(filling.clone()).room(capacity_bytes, used_bytes, PIECE)
    }

    #[test]
    fn an_upload_fits_with_its_pieces_framing_and_metadata() {
        let filling = Arc::new(Filling::default());
        let upload = room(&filling, 8 * FRAMED + META_RESERVE_BYTES + 1024, 1024);
        for _ in 0..8 {
            assert!(upload.receive(PIECE));
        }
        assert!(!upload.receive(1), "exactly full after 8 framed pieces");
    }

    #[test]
    fn an_empty_upload_still_needs_its_metadata() {
        let filling = Arc::new(Filling::default());
        assert!(!room(&filling, 1024, 0).receive(0));
        let upload = room(&filling, META_RESERVE_BYTES + PIECE_OVERHEAD_BYTES, 0);
        assert!(upload.receive(0));
    }

    #[test]
    fn uploads_side_by_side_share_the_room() {
        let filling = Arc::new(Filling::default());
        let capacity = 10 * FRAMED + META_RESERVE_BYTES;
        let first = room(&filling, capacity, 0);
        assert!(first.receive(PIECE));
        // Its first piece may not be in the stream's bytes yet: counted
        // as one piece of the other upload running.
        let second = room(&filling, capacity, FRAMED);
        for _ in 0..3 {
            assert!(first.receive(PIECE));
            assert!(second.receive(PIECE));
        }
        // first: 7 pieces since it started; second: 6 + 1 unseen + 1 in
        // the stream.
        assert!(first.receive(PIECE));
        assert!(first.receive(PIECE), "first: 9 of 10");
        assert!(!second.receive(PIECE), "second: 9 + 2 of 10");
        assert!(!first.receive(PIECE), "first: 11 of 10");
    }

    #[test]
    fn the_running_count_returns_when_uploads_end() {
        let filling = Arc::new(Filling::default());
        let first = room(&filling, 1 << 30, 0);
        let never_started = Start::new(filling.clone());
        assert_eq!(filling.running.load(Ordering::SeqCst), 2);
        drop(never_started);
        drop(first);
        assert_eq!(filling.running.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_bucket_over_its_capacity_has_no_room() {
        // A stream can hold more than a lowered capacity.
        let filling = Arc::new(Filling::default());
        assert!(!room(&filling, 1024 * 1024, 2 * 1024 * 1024).receive(0));
    }
}
