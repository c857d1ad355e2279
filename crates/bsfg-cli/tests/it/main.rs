//! BSFG integration tests: one binary, real nats-server processes, real
//! sockets, no mocks. See harness.rs for how zones are started.

mod abuse;
mod append_facts;
mod atomic;
mod bad_input;
mod capacity;
mod clocks;
mod config_check;
mod console;
mod contract;
mod crossing;
mod crossing_ha;
mod delivery;
mod disk;
mod durability;
mod failover_fetch;
mod faults;
mod faults_ha;
mod fence;
mod ha;
mod ha_nodes;
mod ha_partition;
mod ha_status;
mod harness;
mod interop;
mod ops_tooling;
mod packaging;
mod security;
mod site_init;
mod substrate;
