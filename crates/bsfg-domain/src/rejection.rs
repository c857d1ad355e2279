//! Rejections: why the boundary refused a request.
//!
//! Kept protocol-neutral here; the node maps [`Code`] to Connect codes. The
//! [`Reason`] is a stable snake_case token for machines and dashboards; the
//! message is for the person reading the error.

use crate::reason::Reason;
use std::fmt;

/// The outcome class of a refused request, mirroring the Connect codes used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    DataLoss,
    Unavailable,
    OutOfRange,
    DeadlineExceeded,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    pub fn new(code: Code, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }
    pub fn invalid(reason: Reason, message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason, message)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}
