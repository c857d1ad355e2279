//! Storage failures as the boundary answers them.

use bsfg_domain::{Code, Reason, Rejection};

/// A storage failure the client may retry.
pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Rejection {
    Rejection::new(
        Code::Unavailable,
        Reason::StoreUnavailable,
        format!("{what}: {err}; the zone store is unavailable, retry with backoff"),
    )
}
