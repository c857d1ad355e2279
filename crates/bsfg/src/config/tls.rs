//! `[tls]`: transport security of the boundary port.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Mutual TLS 1.3; a client certificate from the site CA is required.
    Mtls,
    /// No TLS and no authentication. Development only; logged loudly.
    PlaintextDev,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// Trusted CA bundle (PEM) for client certificates.
    pub ca: Option<PathBuf>,
    /// This node's certificate chain and key (PEM).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How often the files are checked for replacement.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    pub fn plaintext_dev() -> Self {
        Self {
            mode: TlsMode::PlaintextDev,
            ca: None,
            cert: None,
            key: None,
            reload_interval: default_tls_reload(),
        }
    }
    pub fn mtls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        Self {
            mode: TlsMode::Mtls,
            ca: Some(ca),
            cert: Some(cert),
            key: Some(key),
            reload_interval: default_tls_reload(),
        }
    }
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(2)
}
