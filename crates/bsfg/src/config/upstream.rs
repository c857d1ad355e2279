//! `[[upstreams]]`: the peers this node pulls facts from.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// One peer this node replicates from; see [`UpstreamConfig::client_urls`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The peer principal (must be a `kind = "peer"` principal of this zone:
    /// its origins and import policy apply to what is pulled).
    pub peer: String,
    /// The peer's boundary URL (https:// with mTLS, this node's certificate).
    #[serde(default)]
    pub url: String,
    /// The boundary URLs of a peer zone of several nodes (instead of
    /// `url`): the link moves to the next when one cannot be reached or is
    /// a standby (`not_active`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The consumer on the peer exported to this zone.
    pub consumer: String,
    /// Most facts one fetch asks for (old name `batch_limit`).
    #[serde(default = "default_batch_facts_max", alias = "batch_limit")]
    pub batch_facts_max: u32,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes_max: u64,
    /// Long-poll wait of each fetch (old name `wait_ms`, milliseconds).
    #[serde(default = "default_wait", alias = "wait_ms", with = "super::duration")]
    pub wait: Duration,
    /// How long the next fetch waits after one that drained the peer with
    /// a small batch (under half of `batch_facts_max`), so that facts
    /// arriving at a steady low rate cross in batches of several rather
    /// than one commit each. At most `UPSTREAM_LINGER_MAX` (50 ms); 0 turns
    /// it off. It adds at most this much to a hop's lag.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Batches fetched ahead of the one being screened (memory bound:
    /// (batches_ahead_max + 3) x batch_bytes_max, see `replicator`; old
    /// name `pipeline_depth`).
    #[serde(default = "default_batches_ahead_max", alias = "pipeline_depth")]
    pub batches_ahead_max: usize,
    /// Retry backoff bounds (with jitter).
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Directory where artifacts are spooled while they are pulled, so an
    /// interrupted transfer resumes where it stopped.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
}

fn default_batch_facts_max() -> u32 {
    1000
}
fn default_batch_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_wait() -> Duration {
    Duration::from_secs(1)
}
fn default_linger() -> Duration {
    Duration::from_millis(2)
}
fn default_batches_ahead_max() -> usize {
    2
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("data/spool")
}

impl UpstreamConfig {
    /// The peer's URLs as the client takes them: `urls` comma-separated,
    /// else `url`.
    pub fn client_urls(&self) -> String {
        if self.urls.is_empty() {
            self.url.clone()
        } else {
            self.urls.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::ZoneConfig;

    /// A peer zone of several nodes is named by `urls`; one `url` keeps
    /// working; both, or neither, is refused.
    #[test]
    fn an_upstream_is_named_by_url_or_urls() {
        let base = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n\
                    [tls]\nmode = \"plaintext-dev\"\n\
                    [[principals]]\nname = \"up\"\nkind = \"peer\"\nzone = \"up\"\n\
                    identities = [\"up\"]\n\
                    [[upstreams]]\npeer = \"up\"\nconsumer = \"to-z1\"\n";
        let parse = |extra: &str| toml::from_str::<ZoneConfig>(&format!("{base}{extra}")).unwrap();
        let one = parse("url = \"http://a:1\"\n");
        assert_eq!(one.upstreams[0].client_urls(), "http://a:1");
        let several = parse("urls = [\"http://a:1\", \"http://b:1\"]\n");
        assert_eq!(several.upstreams[0].client_urls(), "http://a:1,http://b:1");
        assert!(several.check().is_ok(), "{:?}", several.check());
        assert!(parse("").check().is_err(), "neither url nor urls");
        let both = parse("url = \"http://a:1\"\nurls = [\"http://b:1\"]\n");
        assert!(both.check().is_err(), "url and urls");
    }
}
