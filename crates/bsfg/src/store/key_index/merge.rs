//! Recording: entries wait in the buffer and are merged into their pages,
//! each touched page written once, growing the table first (linear
//! hashing: splits at checkpoints) so that the load stays at its target.

use super::format::{Entry, Geometry, SLOTS_PER_PAGE};
use super::{KeyIndex, Token, Writes};
use bsfg_domain::indexed_runs::IndexedRuns;

/// A checkpoint splits buckets until entries fill at most this share of
/// the slots. Linear hashing leaves the not-yet-split buckets up to twice
/// as full as the split ones, so the average stays well below full.
const LOAD_TARGET_PERCENT: u64 = 40;
/// The load a grown table must stay at or below (tests): a merge grows the
/// table to the target load before it writes, so only the buckets not yet
/// split in a round run fuller.
#[cfg(test)]
const LOAD_URGENT_PERCENT: u64 = 55;
/// Most splits per checkpoint: bounds the time the writer holds the file
/// (a split is two page reads and two writes).
const CHECKPOINT_SPLITS_MAX: u64 = 8192;
/// Most doublings. 256 << 34 buckets is far beyond any disk; reaching it
/// means the bucket hash no longer spreads the keys.
const LEVEL_MAX: u32 = 34;

impl KeyIndex {
    /// Records stored facts, `(category position, token, offset)`, and marks
    /// `covered` ranges `(category position, first, last)` as read, whether
    /// or not they held a key. The entries go to the buffer; a full buffer
    /// is merged into the pages (see module docs). Not fsynced.
    pub fn record(
        &self,
        entries: &[(usize, Token, u64)],
        covered: &[(usize, u64, u64)],
    ) -> anyhow::Result<()> {
        let mut writes = self.writes();
        let buffered = {
            let mut buffer = self.buffer.write().expect("key index buffer poisoned");
            for &(position, token, offset) in entries {
                assert!(
                    position < self.categories.len(),
                    "category position {position} is configured"
                );
                // Into the filter first: a look-up that finds the entry
                // anywhere must have passed the filter.
                self.filter.insert(&token);
                buffer.insert(token, (offset, position as u8));
            }
            buffer.len()
        };
        {
            let mut runs = self.runs();
            for &(position, _, offset) in entries {
                runs[position].cover(offset, offset);
            }
            for &(position, first, last) in covered {
                runs[position].cover(first, last);
            }
        }
        if buffered >= self.buffered_entries_max {
            self.merge(&mut writes)?;
        }
        Ok(())
    }

    /// Writes the buffered entries into their pages (each touched page
    /// once), grows the table as they need, and checkpoints with the
    /// coverage they complete; only then they leave the buffer.
    pub(super) fn merge(&self, writes: &mut Writes) -> anyhow::Result<()> {
        // Taken under the writer lock: it covers exactly the pages plus the
        // buffer, which is all in the pages once this merge has written it.
        let vouched: Vec<u64> = self.runs().iter().map(IndexedRuns::through).collect();
        let mut pending: Vec<(u64, Entry)> = self
            .buffer()
            .iter()
            .map(|(&token, &(offset, category))| {
                (
                    self.hash(&token),
                    Entry {
                        token,
                        offset,
                        category,
                    },
                )
            })
            .filter(|(_, entry)| self.is_live(entry))
            .collect();
        // Grow first (the pages still vouched for are untouched by a split),
        // so that a large merge into a small table rarely overfills a bucket.
        loop {
            let geometry = self.geometry();
            let splits = geometry
                .splits_for_load(writes.entries + pending.len() as u64, LOAD_TARGET_PERCENT)
                .min(CHECKPOINT_SPLITS_MAX);
            if splits == 0 {
                break;
            }
            self.checkpoint(writes, splits)?;
        }
        while !pending.is_empty() {
            let geometry = self.geometry();
            pending.sort_unstable_by_key(|(hash, _)| geometry.bucket_of(*hash));
            let Some((written, overfull)) = self.insert_sorted(writes, &geometry, &pending)? else {
                break;
            };
            pending.drain(..written);
            self.split_through(writes, overfull)?;
        }
        // No split is due here: the table grew above for at least as many
        // entries as the pages now hold (replacements and stale entries only
        // lower the count).
        debug_assert_eq!(
            self.geometry()
                .splits_for_load(writes.entries, LOAD_TARGET_PERCENT),
            0
        );
        writes.vouched = vouched;
        self.checkpoint(writes, 0)?;
        self.buffer
            .write()
            .expect("key index buffer poisoned")
            .clear();
        Ok(())
    }

    /// Writes `sorted` (ordered by bucket) into their buckets, one page
    /// write per bucket; a token already present is replaced, stale entries
    /// are dropped. Stops before a bucket they would overfill and returns
    /// how many were written and that bucket.
    fn insert_sorted(
        &self,
        writes: &mut Writes,
        geometry: &Geometry,
        sorted: &[(u64, Entry)],
    ) -> anyhow::Result<Option<(usize, u64)>> {
        let mut kept = Vec::with_capacity(SLOTS_PER_PAGE);
        let mut at = 0;
        while at < sorted.len() {
            let bucket = geometry.bucket_of(sorted[at].0);
            let end = at
                + sorted[at..]
                    .iter()
                    .take_while(|(hash, _)| geometry.bucket_of(*hash) == bucket)
                    .count();
            self.load_bucket(writes, bucket, &mut kept)?;
            let before = kept.len() as u64;
            kept.retain(|e| self.is_live(e));
            for (_, entry) in &sorted[at..end] {
                debug_assert!(
                    self.filter.may_contain(&entry.token),
                    "a token enters the filter before the buffer"
                );
                match kept.iter_mut().find(|k| k.token == entry.token) {
                    Some(existing) => *existing = *entry,
                    None => kept.push(*entry),
                }
            }
            if kept.len() > SLOTS_PER_PAGE {
                return Ok(Some((at, bucket)));
            }
            self.write_bucket(writes, bucket, &kept)?;
            writes.entries = writes.entries - before + kept.len() as u64;
            at = end;
        }
        Ok(None)
    }

    /// `bucket` cannot take its entries: splits until it has been split.
    fn split_through(&self, writes: &mut Writes, bucket: u64) -> anyhow::Result<()> {
        let geometry = self.geometry();
        anyhow::ensure!(
            geometry.level < LEVEL_MAX,
            "the key index cannot split bucket {bucket} further ({} buckets): its hash no longer spreads the keys",
            geometry.buckets()
        );
        // Already split in this round: finish the round, then it comes up again.
        let splits = match geometry.splits_through(bucket) {
            0 => geometry.splits_left_in_round(),
            n => n,
        };
        let mut left = splits;
        while left > 0 {
            let now = left.min(CHECKPOINT_SPLITS_MAX);
            self.checkpoint(writes, now)?;
            left -= now;
        }
        Ok(())
    }

    /// Merges the buffer into the pages and makes them durable, growing the
    /// table first if it would be fuller than the target load.
    pub fn sync(&self) -> anyhow::Result<()> {
        self.merge(&mut self.writes())
    }
}

#[cfg(test)]
mod tests {
    use super::super::pages::{BUCKETS_INITIAL, page_position};
    use super::super::tests::{TEST_HASH_KEY_SEED, crash, open, spread, token};
    use super::super::{FILTER_BYTES_DEFAULT, IndexSize};
    use super::*;

    #[test]
    fn a_full_buffer_is_merged_into_the_pages_and_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let index = KeyIndex::open(
            &dir.path().join("keys.kix"),
            &["ops".into(), "audit".into()],
            3,
            FILTER_BYTES_DEFAULT,
            TEST_HASH_KEY_SEED,
        )
        .unwrap();
        index
            .record(&[(0, token(1), 1), (0, token(2), 2)], &[])
            .unwrap();
        assert_eq!(
            (index.buffer().len(), index.writes().entries),
            (2, 0),
            "below the limit the entries wait in memory"
        );
        index.record(&[(1, token(3), 1)], &[]).unwrap();
        assert_eq!(
            (index.buffer().len(), index.writes().entries),
            (0, 3),
            "at the limit they are merged into the pages"
        );
        index.record(&[(0, token(4), 3)], &[]).unwrap();
        // A checkpoint without a merge (here: another category starts over)
        // must not vouch for the buffered entry.
        index.reset("audit", 7).unwrap();
        crash(index);
        let index = open(dir.path());
        assert_eq!(
            (index.through("ops"), index.through("audit")),
            (2, 0),
            "a header vouches for what the pages hold, not for the buffer"
        );
        assert_eq!(
            index
                .look_up(&[token(1), token(2), token(3), token(4)])
                .unwrap(),
            vec![Some((0, 1)), Some((0, 2)), Some((1, 1)), None]
        );
    }

    #[test]
    fn the_table_grows_and_every_key_stays_findable() {
        let dir = tempfile::tempdir().unwrap();
        let index = open(dir.path());
        let total = 200_000u64;
        for chunk in (1..=total).collect::<Vec<_>>().chunks(8192) {
            let entries: Vec<(usize, Token, u64)> =
                chunk.iter().map(|&n| (0, spread(n), n)).collect();
            index.record(&entries, &[]).unwrap();
            index.sync().unwrap();
        }
        let geometry = *index.geometry.read().unwrap();
        assert!(
            geometry.buckets() > BUCKETS_INITIAL * 4,
            "the table split as it filled: {geometry:?}"
        );
        assert!(index.writes().entries * 100 <= geometry.slots() * LOAD_URGENT_PERCENT);
        assert_eq!(
            index.writes().entries,
            total,
            "no entry lost or copied by the splits"
        );
        assert_eq!(
            index.size(),
            IndexSize {
                entries: total,
                file_bytes: page_position(geometry.buckets()),
                buffered: 0
            }
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("keys.kix"))
                .unwrap()
                .len(),
            index.size().file_bytes,
            "the file is as large as its buckets"
        );
        let tokens: Vec<Token> = (1..=total).map(spread).collect();
        let found = index.look_up(&tokens).unwrap();
        assert!(
            found.iter().zip(1..).all(|(f, n)| *f == Some((0, n))),
            "every key found at its offset"
        );
        assert_eq!(index.look_up(&[spread(total + 1)]).unwrap(), vec![None]);
        // And after reopening (the page check recounts).
        drop(index);
        let index = open(dir.path());
        assert_eq!(index.writes().entries, total);
        assert_eq!(
            index
                .look_up(&tokens[..1000])
                .unwrap()
                .iter()
                .flatten()
                .count(),
            1000
        );
    }
}
