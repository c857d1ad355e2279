//! The node's TLS: TLS 1.3 only, client certificate mandatory, ALPN h2 and
//! http/1.1. The certificate, key and trusted CA are re-read when their
//! files change, and swapped in for new handshakes without a restart; a
//! broken replacement is refused (logged, counted) and the old one kept.

use super::{ALPN, provider, read_certs, read_key, root_store};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The three files the node's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Days until the node certificate and the CA expire.
    cert_days: f64,
    ca_days: f64,
    stamp: Vec<Option<SystemTime>>,
}

/// Shared by the resolver, the verifier and the reload task.
pub struct ReloadingTls {
    files: TlsFiles,
    loaded: RwLock<Loaded>,
}

fn stamp(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(files: &TlsFiles) -> anyhow::Result<Loaded> {
    let provider = provider();
    let stamp = stamp(files);
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow::anyhow!("private key {} unusable: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain.clone(), signing_key);
    certified.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "{} does not match {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    let roots = root_store(&files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| anyhow::anyhow!("client verifier from {}: {e}", files.ca.display()))?;
    let cert_days = super::identity::days_until_expiry(&chain[0])?;
    let ca_days = read_certs(&files.ca)?
        .iter()
        .filter_map(|c| super::identity::days_until_expiry(c).ok())
        .fold(f64::INFINITY, f64::min);
    Ok(Loaded {
        key: Arc::new(certified),
        verifier,
        cert_days,
        ca_days,
        stamp,
    })
}

impl ReloadingTls {
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let loaded = load(&files)?;
        Ok(Arc::new(Self {
            files,
            loaded: RwLock::new(loaded),
        }))
    }

    /// The rustls configuration to serve with; it keeps asking `self` for
    /// the current key and verifier.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Re-reads the files if any changed. `Ok(true)` when a new set is live.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        if stamp(&self.files) == self.loaded.read().unwrap().stamp {
            return Ok(false);
        }
        let fresh = load(&self.files)?;
        *self.loaded.write().unwrap() = fresh;
        Ok(true)
    }

    /// (node certificate, CA) days until expiry.
    pub fn expiry_days(&self) -> (f64, f64) {
        let l = self.loaded.read().unwrap();
        (l.cert_days, l.ca_days)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

#[derive(Debug)]
struct Resolver(Arc<ReloadingTls>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.loaded.read().unwrap().key.clone())
    }
}

#[derive(Debug)]
struct Verifier(Arc<ReloadingTls>);

impl Verifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.loaded.read().unwrap().verifier.clone()
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the trusted set can change under us.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = self
            .current()
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &result {
            // Names of a certificate the node does not trust: bounded.
            let names = bsfg_domain::bounded::bounded_owned(
                super::identity::of_certificate(end_entity)
                    .map(|i| i.names.join(","))
                    .unwrap_or_default(),
            );
            tracing::warn!(error = %e, names, fingerprint = %super::identity::fingerprint(end_entity), "TLS client certificate refused");
        }
        result
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Polls the files and reloads on change; publishes expiry metrics.
pub async fn watch(
    tls: Arc<ReloadingTls>,
    metrics: Arc<crate::metrics::Metrics>,
    interval: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        match tls.reload_if_changed() {
            Ok(true) => {
                tracing::info!(cert = %tls.files.cert.display(), ca = %tls.files.ca.display(), "TLS certificate reloaded")
            }
            Ok(false) => {}
            Err(e) => {
                metrics.tls_reload_failures_total.inc();
                tracing::error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous certificate");
            }
        }
        let (cert_days, ca_days) = tls.expiry_days();
        metrics
            .certificate_expiry_days
            .get_or_create(&crate::metrics::labels(&[("certificate", "node")]))
            .set(cert_days);
        metrics
            .certificate_expiry_days
            .get_or_create(&crate::metrics::labels(&[("certificate", "ca")]))
            .set(ca_days);
    }
}

pub fn files_exist(files: &TlsFiles) -> Vec<&Path> {
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.as_path())
        .collect()
}
