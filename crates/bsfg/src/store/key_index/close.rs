//! Closing the file cleanly: a last merge, a header marked clean, and the
//! key filter saved beside the file, so that the next start-up reads
//! neither the pages nor the streams.

use super::KeyIndex;

impl Drop for KeyIndex {
    /// Marks the file cleanly closed (after making it durable) and saves the
    /// filter, so the next start-up reads neither the pages nor the streams.
    fn drop(&mut self) {
        let close = || -> anyhow::Result<u64> {
            let mut writes = self
                .writes
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            self.merge(&mut writes)?;
            self.checkpoint_marked(&mut writes, 0, true)?;
            Ok(writes.seq)
        };
        match close() {
            // Saved after the clean header: it holds every token in the
            // pages that header describes (it only ever grows).
            Ok(seq) => {
                if let Err(e) = self.filter.save(&self.filter_path, &self.hash_key, seq) {
                    let _ = std::fs::remove_file(&self.filter_path);
                    tracing::warn!(
                        error = %e,
                        "saving the key filter failed; the next start-up reads the pages to fill it"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "closing the key index cleanly failed; the next start-up checks its pages"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{crash, open, token};

    #[test]
    fn a_clean_close_saves_the_filter_and_only_the_next_open_may_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("keys.kix.filter");
        let index = open(dir.path());
        index.record(&[(0, token(1), 1)], &[]).unwrap();
        drop(index);
        assert!(saved.exists(), "a clean close saves the filter");
        let stale = std::fs::read(&saved).unwrap();
        let index = open(dir.path());
        assert!(
            !saved.exists(),
            "an open takes the saved filter away: it describes the file only until the next checkpoint"
        );
        assert_eq!(
            index.look_up(&[token(1), token(2)]).unwrap(),
            vec![Some((0, 1)), None],
            "the loaded filter holds the stored key"
        );
        index.record(&[(0, token(2), 2)], &[]).unwrap();
        drop(index);
        // A filter from an earlier close lacks token 2: it must not be used.
        std::fs::write(&saved, &stale).unwrap();
        let index = open(dir.path());
        assert_eq!(
            index.look_up(&[token(1), token(2)]).unwrap(),
            vec![Some((0, 1)), Some((0, 2))],
            "a stale filter is ignored and the pages fill a new one"
        );
        // After a crash there is no saved filter, and the pages fill it.
        index.record(&[(0, token(3), 3)], &[]).unwrap();
        index.sync().unwrap();
        crash(index);
        assert!(!saved.exists());
        let index = open(dir.path());
        assert_eq!(index.look_up(&[token(3)]).unwrap(), vec![Some((0, 3))]);
    }
}
