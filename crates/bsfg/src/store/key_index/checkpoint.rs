//! Checkpoints: the one order of fsyncs and header writes that keeps the
//! file safe against a crash at any point, with the table's splits inside
//! it.

use super::format::{self, CategoryState, Geometry, HEADER_SLOT_BYTES, Header, SLOTS_PER_PAGE};
use super::pages::page_position;
use super::{KeyIndex, Writes};
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::Ordering;

impl KeyIndex {
    /// Makes every page written so far durable, splits the next `splits`
    /// buckets (within the round), and writes the header. The order makes
    /// a crash at any point safe:
    /// 1. fsync: the pages the header is about to vouch for are on disk;
    /// 2. write each split's new bucket (a copy of the entries that move)
    ///    and fsync: the old buckets still hold them too;
    /// 3. write the header (new geometry, coverage as of step 1), fsync;
    /// 4. switch readers to the new geometry, then drop the moved copies
    ///    from the old buckets (a left-over copy is never addressed and is
    ///    dropped when that bucket is split again).
    pub(super) fn checkpoint(&self, writes: &mut Writes, splits: u64) -> anyhow::Result<()> {
        self.checkpoint_marked(writes, splits, false)
    }

    /// `checkpoint`, with the header marked `clean` (only an orderly close
    /// does that: no page can be written after it).
    pub(super) fn checkpoint_marked(
        &self,
        writes: &mut Writes,
        splits: u64,
        clean: bool,
    ) -> anyhow::Result<()> {
        let throughs = writes.vouched.clone();
        debug_assert!(
            self.runs()
                .iter()
                .zip(&throughs)
                .all(|(runs, through)| *through <= runs.through()),
            "a header vouches for no more than the entries cover"
        );
        self.file.sync_data()?;
        let old_geometry = self.geometry();
        assert!(
            splits <= old_geometry.splits_left_in_round(),
            "a checkpoint splits within one round"
        );
        let mut geometry = old_geometry;
        let mut entries = Vec::with_capacity(SLOTS_PER_PAGE);
        for _ in 0..splits {
            let (next, old, new) = geometry.next_split();
            self.load_bucket(writes, old, &mut entries)?;
            entries.retain(|e| self.is_live(e) && next.bucket_of(self.hash(&e.token)) == new);
            // Not yet addressed by any reader: no lock needed.
            format::encode_page(new, &entries, &mut writes.page);
            self.file
                .write_all_at(&writes.page[..], page_position(new))?;
            writes.entries += entries.len() as u64;
            geometry = next;
        }
        if splits > 0 {
            self.file.sync_data()?;
        }
        self.write_header(writes, geometry, &throughs, clean)?;
        self.file.sync_data()?;
        *self.geometry.write().expect("key index geometry poisoned") = geometry;
        let mut split = old_geometry;
        for _ in 0..splits {
            let (next, old, _) = split.next_split();
            self.load_bucket(writes, old, &mut entries)?;
            let before = entries.len() as u64;
            entries.retain(|e| self.is_live(e) && next.bucket_of(self.hash(&e.token)) == old);
            self.write_bucket(writes, old, &entries)?;
            // Moved entries were counted in the new bucket; these copies,
            // and stale entries, are gone.
            writes.entries -= before - entries.len() as u64;
            split = next;
        }
        self.entries_published
            .store(writes.entries, Ordering::Relaxed);
        Ok(())
    }

    fn write_header(
        &self,
        writes: &mut Writes,
        geometry: Geometry,
        throughs: &[u64],
        clean: bool,
    ) -> std::io::Result<()> {
        writes.seq += 1;
        let header = Header {
            seq: writes.seq,
            clean,
            hash_key: self.hash_key,
            geometry,
            entries: writes.entries,
            categories: self
                .categories
                .iter()
                .zip(throughs)
                .zip(&writes.identities)
                .map(|((name, through), identity)| CategoryState {
                    name: name.clone(),
                    through: *through,
                    identity: *identity,
                })
                .collect(),
        };
        let mut bytes = header.encode();
        bytes.resize(HEADER_SLOT_BYTES, 0);
        self.file
            .write_all_at(&bytes, header.copy_index() * HEADER_SLOT_BYTES as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{crash, open, token};

    #[test]
    fn a_restart_after_a_crash_re_reads_from_the_checkpointed_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index
            .record(&[(0, token(1), 1), (0, token(4), 4)], &[])
            .unwrap();
        assert_eq!(
            (index.through("ops"), index.first_gap("ops")),
            (1, Some((2, 3)))
        );
        index.sync().unwrap();
        index
            .record(&[(0, token(2), 2), (0, token(3), 3)], &[])
            .unwrap();
        assert_eq!(index.through("ops"), 4);
        assert_eq!(
            index.look_up(&[token(2), token(3)]).unwrap(),
            vec![Some((0, 2)), Some((0, 3))],
            "buffered entries are found"
        );
        crash(index);
        let index = open(dir.path());
        assert_eq!(
            index.through("ops"),
            1,
            "only the checkpointed prefix is trusted: a restart re-reads from offset 2"
        );
        assert_eq!(
            index.look_up(&[token(1), token(2), token(4)]).unwrap(),
            vec![Some((0, 1)), None, Some((0, 4))],
            "the buffer was lost, the pages kept"
        );
    }
}
