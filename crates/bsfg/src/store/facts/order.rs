//! The ordered-batch rule: which batches keep their order.

/// Whether the facts of a batch must be stored in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Replicated facts, whose per-origin order is kept. Why this needs
    /// care: pipelined publishes can lose a middle part when the NATS
    /// connection breaks (what was written to the dead socket is gone, what
    /// was queued goes out after the reconnect), and a later fact stored
    /// before the retry of an earlier one would break the order for good.
    /// Every publish names the one this node sent before it in its stream
    /// (`fence`), so JetStream refuses every fact after the gap; and
    /// nothing after a fact that failed and will be retried is sent. The
    /// retry then stores them in order.
    AsGiven,
    /// Independent appends (the group commit of concurrent AppendFact calls).
    Any,
}
