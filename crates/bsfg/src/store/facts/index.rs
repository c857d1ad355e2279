//! The key index on the append path: waiting until it is ready, looking
//! keys up (staged entries, then the file), reading back the fact stored
//! under a key, and staging the keys of the facts a round stored.

use super::ack::Finished;
use super::errors::index_unavailable;
use super::record::header_value;
use super::{Appended, FactLog, MSG_ID_HEADER};
use crate::store::failure::unavailable;
use crate::store::key_index::{KeyIndex, Token, token_bytes};
use async_nats::jetstream::message::StreamMessage;
use bsfg_domain::{Code, Reason, Rejection};
use std::time::Duration;

/// How long an append waits for the key index to finish its start-up
/// catch-up before it is refused as unavailable.
const INDEX_READY_WAIT: Duration = Duration::from_secs(5);

impl FactLog {
    /// Waits until the key index is ready and holds it there (a rebuild
    /// waits for the batches inside).
    pub(super) async fn enter_index_epoch(
        &self,
    ) -> Result<tokio::sync::RwLockReadGuard<'_, ()>, Rejection> {
        loop {
            self.wait_for_index().await?;
            let epoch = self.index_epoch.read().await;
            if *self.index_ready.borrow() {
                return Ok(epoch);
            }
        }
    }

    async fn wait_for_index(&self) -> Result<(), Rejection> {
        let mut ready = self.index_ready.subscribe();
        match tokio::time::timeout(INDEX_READY_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Rejection::new(
                Code::Unavailable,
                Reason::KeyIndexCatchingUp,
                "the node is still reading the stored facts into its idempotency key index (after \
                 a restart or a lost index file); appends resume when bsfg_key_index_ready is 1, \
                 retry with backoff",
            )),
        }
    }

    /// Where each key is stored, if it is: staged entries first, then the
    /// file (an entry leaves the stage only once it is in the file).
    pub(super) fn look_up(&self, tokens: &[Token]) -> Result<Vec<Option<(usize, u64)>>, Rejection> {
        let mut found = self.index_writer.look_up_staged(tokens);
        let misses: Vec<Token> = tokens
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(t, _)| *t)
            .collect();
        if misses.is_empty() {
            return Ok(found);
        }
        // On this thread: a look-up reads one page from the OS page cache
        // (microseconds), and a hop to the blocking pool cost more.
        let from_file = self
            .index
            .look_up(&misses)
            .map_err(|e| index_unavailable("looking up idempotency keys", e))?;
        let mut from_file = from_file.into_iter();
        for slot in found.iter_mut().filter(|f| f.is_none()) {
            *slot = from_file.next().expect("one answer per miss");
        }
        Ok(found)
    }

    /// Stages the facts this round stored for the key index (before the key
    /// guard is released). If there is no room (the index writer is
    /// failing), their appends are answered as unavailable: they are stored,
    /// and a retry is a duplicate.
    pub(super) async fn index_stored(
        &self,
        finished: Vec<Finished>,
    ) -> Vec<Result<Appended, Rejection>> {
        let entries: Vec<(usize, Token, u64)> = finished
            .iter()
            .filter(|(result, _)| result.is_ok())
            .filter_map(|(_, entry)| *entry)
            .collect();
        let Err(e) = self.index_writer.stage(&entries, INDEX_READY_WAIT).await else {
            return finished.into_iter().map(|(result, _)| result).collect();
        };
        let refused = index_unavailable(
            "recording stored facts (they are stored; retrying the same appends answers them as \
             duplicates)",
            e,
        );
        finished
            .into_iter()
            .map(|(result, entry)| match (result, entry) {
                (Ok(_), Some(_)) => Err(refused.clone()),
                (result, _) => result,
            })
            .collect()
    }

    /// The fact stored at `offset` of `category` if it carries `token`. An
    /// index entry whose fact is gone (retention) or is another fact is
    /// dropped and the key counts as not stored.
    pub(super) async fn stored_under(
        &self,
        category: &str,
        offset: u64,
        token: &Token,
    ) -> Result<Option<StreamMessage>, Rejection> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let log = &self.categories[category];
        match log.stream.direct_get(offset).await {
            Ok(message)
                if header_value(&message, MSG_ID_HEADER)
                    .as_deref()
                    .and_then(token_bytes)
                    .as_ref()
                    == Some(token) =>
            {
                return Ok(Some(message));
            }
            Ok(_) => tracing::error!(
                category,
                offset,
                "key index entry points at another fact; dropping the entry"
            ),
            // Gone: retention truncated the fact before the index was pruned.
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => {
                return Err(unavailable(
                    "reading back the fact stored under an idempotency key",
                    e,
                ));
            }
        }
        let (category, token) = (category.to_string(), *token);
        self.blocking(move |index| index.forget(&category, &token, offset))
            .await
            .map(|()| None)
            .map_err(|e| index_unavailable("dropping a stale key index entry", e))
    }

    /// Runs a key-index call on the blocking pool (it does file I/O).
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KeyIndex) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || f(&index)).await?
    }
}
