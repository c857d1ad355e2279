//! BSFG zone node: configuration, storage adapter, RPC service and
//! replicator. The `bsfg` command that runs it is the `bsfg-cli` package.
//!
//! Layout: [`config`] (the zone TOML), [`store`] (the JetStream adapter:
//! fact log, consumers, objects, retention), [`node`] (the running process:
//! boundary service, operations port, embedded nats-server),
//! [`replicator`] (a link per upstream), [`client`] (a typed client for the
//! CLI, tests and benchmarks), [`tls`], [`metrics`], [`logs`];
//! [`owner_only`] creates the node's private files and directories;
//! [`parent_death`] ties a child process's life to its parent's;
//! [`ports`] picks loopback ports for servers started a moment later.

pub mod client;
pub mod config;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod owner_only;
pub mod parent_death;
pub mod ports;
pub mod replicator;
pub mod store;
pub mod tls;
