//! Transport security for the boundary port: mutual TLS 1.3 only.
//!
//! * [`pki`]: the development PKI (`bsfg certs init` / `bsfg certs issue`).
//! * [`identity`]: who a client certificate names (SAN, then CN) and its
//!   SHA-256 fingerprint, as recorded in the audit stream.
//! * [`server`]: the node's rustls configuration, reloaded from disk when
//!   the files change, so certificates are replaced without a restart.
//! * [`client`]: the matching client configuration for the CLI, peers,
//!   tests and benchmarks.

pub mod client;
pub mod identity;
pub mod pki;
pub mod server;

/// ALPN protocols offered on every TLS connection: HTTP/2 first (gRPC,
/// Connect streaming), HTTP/1.1 for simple Connect unary clients.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn read_certs(
    path: &std::path::Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad PEM in {}: {e}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

pub fn read_key(
    path: &std::path::Path,
) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("cannot read private key {}: {e}", path.display()))
}

pub fn root_store(ca_path: &std::path::Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_path)? {
        roots.add(cert).map_err(|e| {
            anyhow::anyhow!("CA certificate in {} rejected: {e}", ca_path.display())
        })?;
    }
    Ok(roots)
}
