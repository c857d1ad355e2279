//! Storage failures as the boundary answers them.

use bsfg_domain::{Code, Rejection};

/// A storage failure the client may retry.
pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Rejection {
    Rejection::new(
        Code::Unavailable,
        "store_unavailable",
        format!("{what}: {err}; the zone store is unavailable, retry with backoff"),
    )
}
