//! Configuration sections of the bench's nodes.

use std::fmt::Write as _;

/// The `[nats]` section of every bench node: an external nats-server
/// started by the bench (the node's embedded-server settings are unused).
pub(crate) fn node_nats_section(nats_port: u16) -> String {
    format!("[nats]\nurl = \"nats://127.0.0.1:{nats_port}\"\nrequest_timeout = \"10s\"")
}

/// The `[commit]` section of every bench node: its key index file in the
/// run directory (the default would be relative to the working directory),
/// plus any lines in `BENCH_COMMIT_EXTRA` (for A/B runs of commit settings,
/// e.g. `batches_in_flight_max = 4`).
pub(crate) fn node_commit_section(dir: &std::path::Path, zone: &str) -> String {
    format!(
        "[commit]\nkey_index_path = \"{}\"\n{}",
        dir.join(format!("key-index.{zone}.kix")).display(),
        std::env::var("BENCH_COMMIT_EXTRA").unwrap_or_default()
    )
}

/// The `[tls]` section of the main run's node: plaintext on both sides of
/// the comparison, as the echo baseline has no TLS either.
pub(crate) const PLAINTEXT_TLS: &str = "[tls]\nmode = \"plaintext-dev\"\n";

/// The single-zone node's configuration (zone `bench`); `tls` is its
/// `[tls]` section (and any principals).
pub(crate) fn node_config(
    port: u16,
    ops: u16,
    nats_port: u16,
    drain_consumers: usize,
    dir: &std::path::Path,
    tls: &str,
) -> String {
    let mut s = format!(
        r#"zone = "bench"
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
retention_interval = "5s"

{tls}

{nats}

{commit}

[[categories]]
name = "operational"
default = true
capacity_bytes = 8589934592
max_age = "30days"

[[categories]]
name = "drain"
kinds = ["drain"]
capacity_bytes = 8589934592
max_age = "30days"
"#,
        commit = node_commit_section(dir, "bench"),
        nats = node_nats_section(nats_port)
    );
    for i in 1..=drain_consumers {
        let _ = write!(
            s,
            "\n[[consumers]]\nname = \"drain{i}\"\ncategory = \"drain\"\nstart = \"earliest\"\n"
        );
    }
    s
}
