//! Helpers for the fact log's refusals: which ones a retry may overcome, and
//! the refusal when the key index cannot be used.

use bsfg_domain::{Code, Reason, Rejection};

/// A refusal that a retry may overcome (the store, not the fact).
pub(super) fn is_transient(r: &Rejection) -> bool {
    matches!(
        r.code,
        Code::Unavailable | Code::ResourceExhausted | Code::Internal | Code::DeadlineExceeded
    )
}

/// A refusal because the key index cannot be read or written.
pub(super) fn index_unavailable(what: &str, err: impl std::fmt::Display) -> Rejection {
    Rejection::new(
        Code::Unavailable,
        Reason::KeyIndexUnavailable,
        format!(
            "{what}: {err}; the node's idempotency key index is unavailable (disk full or \
             failing?), retry with backoff"
        ),
    )
}
