//! The ordered-batch rules: which batches keep their order, and how each
//! fact of such a batch names the one published before it in its stream.

pub(super) const EXPECTED_LAST_MSG_ID_HEADER: &str = "Nats-Expected-Last-Msg-Id";

/// Whether the facts of a batch must be stored in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Replicated facts, whose per-origin order is kept. Each fact published
    /// names the one published before it in the same stream and batch
    /// (`Nats-Expected-Last-Msg-Id`). Why: pipelined publishes can lose a
    /// middle part when the NATS connection breaks (what was written to the
    /// dead socket is gone, what was queued goes out after the reconnect),
    /// and a later fact stored before the retry of an earlier one would break
    /// the order for good. Named predecessors make JetStream refuse every
    /// fact after the gap instead; the retry then stores them in order.
    AsGiven,
    /// Independent appends (the group commit of concurrent AppendFact calls).
    Any,
}

/// For each fact published in a batch, the key token of the fact published
/// before it in the same category, if any (what `Order::AsGiven` names as
/// the expected last message of the stream).
#[derive(Default)]
pub(super) struct Predecessors {
    last: Vec<(String, String)>,
}

impl Predecessors {
    /// Records `token` as published to `category`; returns the token it
    /// follows there.
    pub(super) fn follow(&mut self, category: &str, token: &str) -> Option<String> {
        match self.last.iter_mut().find(|(c, _)| c == category) {
            Some((_, last)) => Some(std::mem::replace(last, token.to_string())),
            None => {
                self.last.push((category.to_string(), token.to_string()));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Predecessors;

    #[test]
    fn each_published_fact_names_the_one_before_it_in_its_own_stream() {
        let mut p = Predecessors::default();
        let named: Vec<Option<String>> = [
            ("ops", "a1"),
            ("docs", "d1"),
            ("ops", "a2"),
            ("ops", "a3"),
            ("docs", "d2"),
        ]
        .iter()
        .map(|(category, token)| p.follow(category, token))
        .collect();
        let expected = [None, None, Some("a1"), Some("a2"), Some("d1")];
        assert_eq!(named, expected.map(|t| t.map(String::from)));
    }
}
