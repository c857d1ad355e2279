//! The `bsfg` command: [`cli`] runs a zone node and talks to one;
//! [`demo`] is `bsfg demo`, the reference site or one zone on this machine;
//! [`config_check`] is `bsfg config check`; [`site_init`] is `bsfg site
//! init`.
//! Both print [`status_table`] and upload with [`upload`]; neither imports
//! the other (the binary, `main.rs`, joins them).
//!
//! A library as well as the binary so that the integration tests (in
//! `tests/it`, which start `bsfg serve` processes) can reach the status
//! table and the demo.

#![forbid(unsafe_code)]

pub mod append_file;
pub mod cli;
pub mod config_check;
pub mod demo;
pub mod site_init;
pub mod status_table;
pub mod upload;
