//! Client-side mutual TLS: the CLI, peer nodes, tests and benchmarks present
//! a certificate from the site PKI and trust only the site CA.

use super::{ALPN, provider, read_certs, read_key, root_store};
use std::path::Path;
use std::sync::Arc;

pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca)?)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| anyhow::anyhow!("client certificate {}: {e}", cert.display()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client that presents no certificate (to show the node refuses it).
pub fn anonymous_client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
