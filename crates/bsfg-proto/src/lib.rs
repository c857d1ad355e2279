//! The `bsfg.v1` boundary contract, generated from `proto/` at build time.
//!
//! Kept in its own crate so that codegen runs once and every other crate
//! (node, CLI, tests, benchmarks) shares the same types.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]
connectrpc::include_generated!();
