//! What the index covers of each category's stream, and keeping it in step
//! as the streams change: a recreated stream starts its category over,
//! retention and a lost tail are forgotten, a stale entry is dropped, and a
//! damaged index starts over empty (`store::facts` reads the streams in).

use super::format::SLOTS_PER_PAGE;
use super::pages::empty_table;
use super::{KeyIndex, Token};
use bsfg_domain::indexed_runs::IndexedRuns;
use std::sync::atomic::Ordering;

impl KeyIndex {
    /// Every offset of `category` at or below this is indexed (or gone).
    pub fn through(&self, category: &str) -> u64 {
        self.runs()[self.position(category)].through()
    }

    /// The first offsets of `category` not indexed while later ones are.
    pub fn first_gap(&self, category: &str) -> Option<(u64, u64)> {
        self.runs()[self.position(category)].first_gap()
    }

    /// The stream identity (creation time) the entries of `category` were
    /// read from, if any.
    pub fn stream_identity(&self, category: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.writes().identities[self.position(category)])
    }

    /// Starts `category` over for the stream it will be read in from (the
    /// stream was recreated, or this is a new index), durably. Its old
    /// entries stay in the pages until a look-up finds them stale.
    pub fn reset(&self, category: &str, stream_identity: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        let mut writes = self.writes();
        writes.identities[position] = Some(stream_identity);
        writes.vouched[position] = 0;
        self.runs()[position] = IndexedRuns::new(0);
        self.firsts[position].store(0, Ordering::Release);
        self.checkpoint(&mut writes, 0)
    }

    /// True once a page failed its checksum while running.
    pub fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }

    /// Starts the index over, empty (as start-up does with a torn page):
    /// every category's facts must then be read in again before an append
    /// may rely on it. The caller keeps appends out meanwhile.
    pub fn rebuild(&self) -> anyhow::Result<()> {
        let mut writes = self.writes();
        // First a header that vouches for nothing, so a crash from here on
        // reads every stream in again; only then the pages go.
        writes
            .identities
            .iter_mut()
            .for_each(|identity| *identity = None);
        writes.vouched.iter_mut().for_each(|through| *through = 0);
        self.runs()
            .iter_mut()
            .for_each(|runs| *runs = IndexedRuns::new(0));
        self.buffer
            .write()
            .expect("key index buffer poisoned")
            .clear();
        self.checkpoint(&mut writes, 0)?;
        {
            let mut geometry = self.geometry.write().expect("key index geometry poisoned");
            *geometry = empty_table(&self.file)?;
        }
        writes.entries = 0;
        self.firsts
            .iter()
            .for_each(|first| first.store(0, Ordering::Release));
        self.checkpoint(&mut writes, 0)?;
        self.damaged.store(false, Ordering::Release);
        Ok(())
    }

    /// Removes one entry that no longer matches its fact.
    pub fn forget(&self, category: &str, token: &Token, offset: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        let mut writes = self.writes();
        {
            let mut buffer = self.buffer.write().expect("key index buffer poisoned");
            if buffer.get(token) == Some(&(offset, position as u8)) {
                buffer.remove(token);
            }
        }
        let bucket = self.geometry().bucket_of(self.hash(token));
        let mut entries = Vec::with_capacity(SLOTS_PER_PAGE);
        self.load_bucket(&mut writes, bucket, &mut entries)?;
        let before = entries.len();
        entries.retain(|e| {
            !(e.token == *token && e.offset == offset && usize::from(e.category) == position)
        });
        if entries.len() < before {
            self.write_bucket(&mut writes, bucket, &entries)?;
            writes.entries -= 1;
            self.entries_published
                .store(writes.entries, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The stream no longer holds offsets below `first_offset`: their
    /// entries stop being found now and leave the pages as those are
    /// written.
    pub fn forget_below(&self, category: &str, first_offset: u64) -> anyhow::Result<()> {
        let position = self.position(category);
        self.firsts[position].fetch_max(first_offset, Ordering::AcqRel);
        self.runs()[position].forget_below(first_offset);
        Ok(())
    }

    /// The stream lost its tail after `last_offset` (e.g. nats-server
    /// restarted without syncing): the coverage above it is dropped,
    /// durably, so the facts stored there from now on are read in again
    /// after a crash. Entries above it stay until a look-up finds them
    /// stale (every hit is checked against the stored fact). Returns how
    /// many covered offsets were dropped.
    pub fn forget_after(&self, category: &str, last_offset: u64) -> anyhow::Result<u64> {
        let position = self.position(category);
        let mut writes = self.writes();
        let dropped = {
            let mut runs = self.runs();
            let highest = runs[position].highest();
            runs[position].truncate_after(last_offset);
            highest.saturating_sub(last_offset)
        };
        writes.vouched[position] = writes.vouched[position].min(last_offset);
        if dropped > 0 {
            self.checkpoint(&mut writes, 0)?;
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pages::{BUCKETS_INITIAL, page_position};
    use super::super::tests::{crash, open, spread, token};
    use super::super::{IndexSize, Token};
    use std::os::unix::fs::FileExt as _;

    #[test]
    fn a_page_damaged_while_running_marks_the_index_and_a_rebuild_starts_it_empty() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let entries: Vec<(usize, Token, u64)> =
            (1..=20_000u64).map(|n| (0, spread(n), n)).collect();
        index.record(&entries, &[]).unwrap();
        index.reset("audit", 77).unwrap();
        index.sync().unwrap();
        assert!(
            index.geometry.read().unwrap().buckets() > BUCKETS_INITIAL,
            "the table has split"
        );
        assert!(!index.is_damaged());
        // Something else writes into a page of the running index.
        let bucket = index
            .geometry
            .read()
            .unwrap()
            .bucket_of(index.hash(&spread(1)));
        index
            .file
            .write_all_at(&[0xA5; 64], page_position(bucket) + 100)
            .unwrap();
        assert!(
            index.look_up(&[spread(1)]).is_err(),
            "a damaged page is an error, not a miss"
        );
        assert!(index.is_damaged());
        index.rebuild().unwrap();
        assert!(!index.is_damaged());
        assert_eq!(
            (
                index.through("ops"),
                index.stream_identity("audit").unwrap()
            ),
            (0, None),
            "every stream is to be read in again"
        );
        assert_eq!(
            index.size(),
            IndexSize {
                entries: 0,
                file_bytes: page_position(BUCKETS_INITIAL),
                buffered: 0
            }
        );
        assert_eq!(
            index.look_up(&[spread(1), spread(2)]).unwrap(),
            vec![None, None]
        );
        // It works as new, and a crash now keeps what was recorded since.
        index.record(&[(0, spread(1), 1)], &[]).unwrap();
        index.sync().unwrap();
        crash(index);
        let index = open(dir.path());
        assert_eq!(
            index.look_up(&[spread(1), spread(2)]).unwrap(),
            vec![Some((0, 1)), None]
        );
        assert_eq!(index.through("ops"), 1);
    }

    #[test]
    fn pruning_is_lazy_and_exact() {
        // The bucket hash is keyed at random per file, so which tokens share
        // a bucket differs per run: the last check needs a stale entry alone
        // in its bucket, and a fresh table is tried until one has it.
        for _ in 0..8 {
            let dir = tempfile::tempdir().unwrap();
            let index = open(dir.path());
            let entries: Vec<(usize, Token, u64)> =
                (1..=10).map(|n| (0, token(n), u64::from(n))).collect();
            index.record(&entries, &[]).unwrap();
            index.sync().unwrap();
            let tokens: Vec<Token> = entries.iter().map(|(_, t, _)| *t).collect();
            index.forget_below("ops", 4).unwrap();
            let kept: Vec<u64> = index
                .look_up(&tokens)
                .unwrap()
                .iter()
                .flatten()
                .map(|(_, o)| *o)
                .collect();
            assert_eq!(
                kept,
                vec![4, 5, 6, 7, 8, 9, 10],
                "entries below the stream's first offset are not found"
            );
            assert_eq!(index.forget_after("ops", 8).unwrap(), 2);
            assert_eq!(
                index.through("ops"),
                8,
                "coverage above the stream's last offset is dropped"
            );
            index.forget("ops", &token(5), 5).unwrap();
            index.forget("ops", &token(6), 999).unwrap();
            assert_eq!(
                index.look_up(&[token(5), token(6)]).unwrap(),
                vec![None, Some((0, 6))],
                "forget removes only the exact entry"
            );
            index.record(&[(0, token(12), 12)], &[]).unwrap();
            index.forget("ops", &token(12), 12).unwrap();
            assert_eq!(
                index.look_up(&[token(12)]).unwrap(),
                vec![None],
                "also while it is buffered"
            );
            // Writing a bucket drops its stale entries for good: a new key in
            // the bucket of a stale token replaces it in the count.
            assert_eq!(index.writes().entries, 9);
            let bucket_of = |t: &Token| index.geometry.read().unwrap().bucket_of(index.hash(t));
            let recorded: Vec<Token> = tokens.iter().copied().chain([token(12)]).collect();
            let alone = |t: &Token| {
                recorded
                    .iter()
                    .filter(|u| bucket_of(u) == bucket_of(t))
                    .count()
                    == 1
            };
            let Some(stale) = [token(1), token(2), token(3)].into_iter().find(alone) else {
                continue;
            };
            let neighbour = (0..100_000)
                .map(spread)
                .find(|t| bucket_of(t) == bucket_of(&stale))
                .expect("a token sharing the bucket");
            index.record(&[(0, neighbour, 11)], &[]).unwrap();
            index.sync().unwrap();
            assert_eq!(
                index.writes().entries,
                9,
                "one stale entry dropped, one added"
            );
            return;
        }
        panic!("no table of 8 had a stale entry alone in its bucket");
    }

    #[test]
    fn reset_starts_one_category_over() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        index.record(&[(1, token(2), 1)], &[]).unwrap();
        index.reset("ops", 42).unwrap();
        assert_eq!(
            (
                index.through("ops"),
                index.through("audit"),
                index.stream_identity("ops").unwrap()
            ),
            (0, 1, Some(42))
        );
        drop(index);
        let index = open(dir.path());
        assert_eq!(
            (index.through("ops"), index.stream_identity("ops").unwrap()),
            (0, Some(42)),
            "durably"
        );
    }
}
