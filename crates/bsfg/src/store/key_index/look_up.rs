//! Look-ups: the filter, then the buffer, then one bucket page.

use super::format::{Entry, PAGE_BYTES, SLOTS_PER_PAGE};
use super::pages::read_page;
use super::{KeyIndex, Token};

impl KeyIndex {
    /// For each token, the category (index into `categories()`) and offset
    /// it is indexed at, if any: absent if the filter says so, else from
    /// the buffer, else one page read.
    pub fn look_up(&self, tokens: &[Token]) -> anyhow::Result<Vec<Option<(usize, u64)>>> {
        let mut page = [0u8; PAGE_BYTES];
        let mut entries = Vec::with_capacity(SLOTS_PER_PAGE);
        let mut found = Vec::with_capacity(tokens.len());
        for token in tokens {
            // The filter holds every buffered token too, so a new key skips
            // the buffer's lock as well as the page.
            if !self.filter.may_contain(token) {
                found.push(None);
                continue;
            }
            let buffered = self.buffer().get(token).map(|&(offset, category)| Entry {
                token: *token,
                offset,
                category,
            });
            if let Some(entry) = buffered.filter(|e| self.is_live(e)) {
                found.push(Some((usize::from(entry.category), entry.offset)));
                continue;
            }
            let hash = self.hash(token);
            let bucket = {
                let geometry = self.geometry.read().expect("key index geometry poisoned");
                let bucket = geometry.bucket_of(hash);
                read_page(&self.file, bucket, &mut page)?;
                bucket
            };
            self.decode(bucket, &page, &mut entries)?;
            found.push(
                entries
                    .iter()
                    .find(|e| e.token == *token && self.is_live(e))
                    .map(|e| (usize::from(e.category), e.offset)),
            );
        }
        Ok(found)
    }
}
