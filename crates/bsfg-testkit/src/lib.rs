//! What the BSFG tests, the `bsfg demo` command and the benchmarks start,
//! written once: [`site`], the reference site's topology and zone
//! configurations; [`faultproxy`], a TCP proxy that cuts, restores and
//! delays a link.
//!
//! Never on a node's production path: the node library (`bsfg`) does not
//! depend on this crate.

#![forbid(unsafe_code)]

pub mod faultproxy;
pub mod site;
