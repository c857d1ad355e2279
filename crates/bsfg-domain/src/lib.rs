//! Pure BSFG domain logic, free of I/O so it can be unit tested exhaustively.
//!
//! * [`limits`]: every size limit in one place, with units in the names.
//! * [`validate`]: transport validity of envelopes, facts, names (the only
//!   checks the boundary makes; business schemas are never validated).
//! * [`canonical`]: recognising object_json that is canonical already, so
//!   it is kept as it is instead of canonicalised again.
//! * [`clock`]: skew against another clock, steps of a wall clock, maxima
//!   over a sliding window.
//! * [`identity`]: the idempotency key and the content digest that decide
//!   whether a retry is a duplicate or a conflict.
//! * [`indexed_runs`]: which offsets the key index covers, and the
//!   contiguous prefix it may persist.
//! * [`retention`]: how far a category log may be truncated (frontier arithmetic).
//! * [`policy`]: the declarative crossing policy per peer and direction.
//! * [`bounded`]: request text cut to a bound before it is echoed in a log
//!   line, an audit record or a message.
//! * [`seed`]: every random choice of a node derived from one logged seed.
//! * [`rejection`]: a rejection carries a protocol-neutral code, a stable
//!   machine reason and a message a person can act on.
//! * [`reason`]: every reason, each with its token (part of the contract).
#![forbid(unsafe_code)]

pub mod bounded;
pub mod canonical;
pub mod clock;
pub mod identity;
pub mod indexed_runs;
pub mod limits;
pub mod policy;
pub mod reason;
pub mod rejection;
pub mod retention;
pub mod seed;
pub mod validate;

pub use reason::Reason;
pub use rejection::{Code, Rejection};
