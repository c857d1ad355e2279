//! BSFG zone node: configuration, storage adapter, RPC service and CLI.
//!
//! Layout: [`config`] (the zone TOML), [`store`] (the JetStream adapter:
//! fact log, consumers, objects, retention), [`node`] (the running process:
//! boundary service, operations port, embedded nats-server), [`client`]
//! (a typed client for the CLI, tests and benchmarks), [`cli`];
//! [`owner_only`] creates the node's private files and directories;
//! [`ports`] picks loopback ports for servers started a moment later.

pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod faultproxy;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod owner_only;
pub mod ports;
pub mod replicator;
pub mod site;
pub mod store;
pub mod tls;
