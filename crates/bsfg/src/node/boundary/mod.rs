//! The boundary port as a list of small layers, outermost first:
//!
//! 1. [`listener`]: bounded connections, TLS (handshake deadline, refusals
//!    logged and counted), HTTP/1.1 and HTTP/2 with fixed windows, idle
//!    connections closed;
//! 2. [`gate`]: the caller identified before its body is read, the request
//!    admitted into the node's memory budget by what its route can hold
//!    ([`routes`]), its body bounded in size and time ([`body`]);
//! 3. the RPC layer (`connectrpc`), which decodes and calls the service.
//!
//! What one peer can make the node hold is therefore bounded by
//! configuration (`[boundary]`), not by what it sends: see the README's
//! security model for the worst case.

pub mod body;
pub mod gate;
pub mod listener;
pub mod routes;
