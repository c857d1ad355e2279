//! What the BSFG tests, the `bsfg demo` command and the benchmarks start,
//! written once: [`nats_server`], a nats-server process (kill -9, freeze,
//! restart); [`nats_cluster`], a JetStream cluster of them; [`topology`],
//! a site from one description (`site.toml`), and [`site`], the reference
//! site's zone configurations from it; [`faultproxy`], a TCP proxy that
//! cuts, restores and
//! delays a link; [`pki`], a development PKI; [`zone_config`], zone
//! configurations as typed values; [`procfs`], a process's memory and CPU;
//! [`process`], signals and log tails.
//!
//! Never on a node's production path: the node library (`bsfg`) does not
//! depend on this crate.

#![forbid(unsafe_code)]

pub mod faultproxy;
pub mod nats_cluster;
pub mod nats_server;
pub mod pki;
pub mod process;
pub mod procfs;
pub mod site;
pub mod topology;
pub mod zone_config;
