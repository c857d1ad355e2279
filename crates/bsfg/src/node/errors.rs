//! Rejection → Connect error. The reason token leads the message so a person
//! and a machine both find it; it is also sent as the `bsfg-reason` header.

use bsfg_domain::{Code, Rejection};
use connectrpc::{ConnectError, ErrorCode};

pub fn connect_code(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::AlreadyExists,
        Code::PermissionDenied => ErrorCode::PermissionDenied,
        Code::FailedPrecondition => ErrorCode::FailedPrecondition,
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::DataLoss => ErrorCode::DataLoss,
        Code::Unavailable => ErrorCode::Unavailable,
        Code::OutOfRange => ErrorCode::OutOfRange,
        Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        Code::Internal => ErrorCode::Internal,
    }
}

pub fn to_connect(r: Rejection) -> ConnectError {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(r.reason.as_str()) {
        headers.insert("bsfg-reason", value);
    }
    ConnectError::new(connect_code(r.code), format!("{}: {}", r.reason, r.message))
        .with_headers(headers)
}
