//! Client-side mutual TLS: the CLI, peer nodes, tests and benchmarks present
//! a certificate from the site PKI and trust only the site CA.

use super::{ALPN, provider, read_certs, read_key, root_store};
use std::path::Path;
use std::sync::Arc;

pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
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

/// The server certificate a peer presented at the last successful handshake,
/// as `sha256:<hex>` (empty before the first one). A replicating node puts
/// it in the audit record of every fact it pulls, so a crossing names both
/// ends: the peer principal and the exact certificate that vouched for it.
#[derive(Debug, Default)]
pub struct PresentedCertificate(std::sync::Mutex<String>);

impl PresentedCertificate {
    pub fn fingerprint(&self) -> String {
        self.0
            .lock()
            .expect("presented certificate poisoned")
            .clone()
    }
}

/// Like [`client_config`], but remembering the server certificate each
/// handshake verified (one configuration per peer link).
pub fn peer_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<PresentedCertificate>)> {
    let presented = Arc::new(PresentedCertificate::default());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(root_store(ca)?),
        provider(),
    )
    .build()
    .map_err(|e| anyhow::anyhow!("CA {}: {e}", ca.display()))?;
    let mut config = Arc::unwrap_or_clone(client_config(ca, cert, key)?);
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(RecordingVerifier {
            inner,
            presented: presented.clone(),
        }));
    Ok((Arc::new(config), presented))
}

/// The standard WebPKI verification, unchanged; on success it records the
/// end-entity certificate's fingerprint.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    presented: Arc<PresentedCertificate>,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self
            .presented
            .0
            .lock()
            .expect("presented certificate poisoned") = super::identity::fingerprint(end_entity);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
