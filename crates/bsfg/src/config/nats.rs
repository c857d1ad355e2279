//! `[nats]`: the zone's store, embedded or external.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// An external nats-server for this zone. When absent the node starts and
    /// supervises its own (the embedded default), loopback only, with a
    /// password generated at each start.
    pub url: Option<String>,
    /// The servers of an external JetStream cluster serving this zone (its
    /// domain on every server). Instead of `url`, not besides it; the client
    /// connects to any of them and moves to another when one is lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Replica count of every stream, consumer and bucket the node creates
    /// (1, 3 or 5; at most the cluster's size). 1 for the embedded server.
    #[serde(skip_serializing_if = "is_one")]
    pub replicas: usize,
    /// How the node logs in to an external server: a user and a file
    /// holding its password (keep it owner-only), or a NATS credentials
    /// file (`.creds`, JWT and nkey seed). Neither: no login (then anyone
    /// who reaches the server can read and write the zone's store).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    /// Store directory of the embedded nats-server.
    pub store_dir: PathBuf,
    /// Client port of the embedded nats-server (0 picks a free one).
    pub port: u16,
    /// nats-server binary; defaults to `.tools/bin/nats-server`, then PATH.
    pub server_bin: Option<PathBuf>,
    /// Timeout for every JetStream API call, and for a whole append round:
    /// its publishes and all their acknowledgements share one deadline.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Embedded server's JetStream `sync_interval`: `always` (default: an
    /// acknowledged fact survives a power cut) or a duration such as `1s`
    /// (much faster; a power cut can lose that much acknowledged data).
    #[serde(default = "default_sync_interval")]
    pub sync_interval: String,
    /// Appends (and uploads) are refused `disk_full` while the filesystem
    /// of the embedded server's store directory, or of the key index, has
    /// less free space than this (bytes; 0 turns the refusal off). See
    /// `store::disk` for why 256 MiB and why not a percentage.
    pub store_free_bytes_min: u64,
}

/// The default `[nats] store_free_bytes_min`: 256 MiB.
pub const STORE_FREE_BYTES_MIN_DEFAULT: u64 = 256 << 20;

/// A single replica, the default: left out of written files.
fn is_one(replicas: &usize) -> bool {
    *replicas == 1
}

impl NatsConfig {
    /// The external servers of the zone's store: `urls`, else `url`; empty
    /// when the node starts its own (embedded) server.
    pub fn external_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            self.url.iter().cloned().collect()
        } else {
            self.urls.clone()
        }
    }

    /// Whether the node starts and supervises its own nats-server.
    pub fn is_embedded(&self) -> bool {
        self.url.is_none() && self.urls.is_empty()
    }
}

fn default_sync_interval() -> String {
    "always".into()
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: None,
            urls: Vec::new(),
            replicas: 1,
            user: None,
            password_file: None,
            creds_file: None,
            store_dir: PathBuf::from("data/jetstream"),
            port: 0,
            server_bin: None,
            request_timeout: Duration::from_secs(5),
            sync_interval: default_sync_interval(),
            store_free_bytes_min: STORE_FREE_BYTES_MIN_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ZoneConfig;

    /// Every field of a section has a default: naming one is enough.
    #[test]
    fn a_partial_nats_section_takes_defaults() {
        let text = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n[tls]\nmode = \"plaintext-dev\"\n[nats]\nsync_interval = \"1s\"\n";
        let config: ZoneConfig = toml::from_str(text).expect("parses");
        assert_eq!(config.nats.sync_interval, "1s");
        assert_eq!(config.nats.port, 0);
        assert_eq!(
            config.nats.request_timeout,
            NatsConfig::default().request_timeout
        );
        assert!(config.nats.is_embedded());
        assert_eq!(config.nats.replicas, 1);
    }

    /// A cluster's servers are `urls`; a single `url` keeps working.
    #[test]
    fn the_external_servers_are_urls_else_url() {
        let base = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n[tls]\nmode = \"plaintext-dev\"\n[nats]\n";
        let one: ZoneConfig =
            toml::from_str(&format!("{base}url = \"nats://a:4222\"\n")).expect("parses");
        assert_eq!(one.nats.external_urls(), vec!["nats://a:4222".to_string()]);
        let cluster: ZoneConfig = toml::from_str(&format!(
            "{base}urls = [\"nats://a:4222\", \"nats://b:4222\"]\nreplicas = 3\n"
        ))
        .expect("parses");
        assert_eq!(cluster.nats.external_urls().len(), 2);
        assert_eq!(cluster.nats.replicas, 3);
        assert!(!cluster.nats.is_embedded());
    }
}
