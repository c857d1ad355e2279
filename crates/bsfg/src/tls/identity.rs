//! Who a client certificate names. The identity is the first SAN (DNS name
//! or URI) that the zone configuration knows, else the subject CN; the
//! fingerprint is SHA-256 over the DER certificate.

use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SAN DNS names and URIs, then the CN, in that order.
    pub names: Vec<String>,
    /// `sha256:<hex>` of the leaf certificate.
    pub fingerprint: String,
}

pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Names a DER certificate carries. Errors only on unparseable input (which
/// rustls would not have accepted in the first place).
pub fn of_certificate(der: &[u8]) -> anyhow::Result<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("unparseable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push(n.to_string()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(PeerIdentity {
        names,
        fingerprint: fingerprint(der),
    })
}

/// Whole days until a certificate expires (negative once expired).
pub fn days_until_expiry(der: &[u8]) -> anyhow::Result<f64> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("unparseable certificate: {e}"))?;
    let not_after = cert.validity().not_after.timestamp();
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    Ok((not_after - now) as f64 / 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_san_then_cn() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::pki::init_ca(dir.path(), "test CA", 10).unwrap();
        let issued = crate::tls::pki::issue(
            dir.path(),
            dir.path(),
            &crate::tls::pki::IssueRequest::new("plant-a-bsfg", 10),
        )
        .unwrap();
        let der = crate::tls::read_certs(&issued.cert).unwrap().remove(0);
        let id = of_certificate(&der).unwrap();
        assert_eq!(id.names.first().map(String::as_str), Some("plant-a-bsfg"));
        assert_eq!(
            id.names,
            vec!["plant-a-bsfg".to_string()],
            "SAN and CN name it once"
        );
        assert!(id.fingerprint.starts_with("sha256:") && id.fingerprint.len() == 71);
        let days = days_until_expiry(&der).unwrap();
        assert!((9.0..=10.1).contains(&days), "{days}");
    }
}
