//! The development PKI: one CA per site, and certificates for zone nodes
//! (`plant-a-bsfg`, …) and local applications. Every certificate carries
//! both serverAuth and clientAuth, since a node is a server to its clients
//! and a client to its peers. Production sites bring their own PKI; the node
//! only needs PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// Paths of an issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Creates a CA in `dir` (refuses to overwrite an existing one).
pub fn init_ca(dir: &Path, common_name: &str, valid_days: i64) -> anyhow::Result<Issued> {
    std::fs::create_dir_all(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    anyhow::ensure!(
        !cert_path.exists(),
        "{} exists already; remove it to create a new CA",
        cert_path.display()
    );
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "BSFG development PKI");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(valid_days);
    let cert = params.self_signed(&key)?;
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}

/// What to put in an issued certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The identity (CN and first SAN), e.g. `plant-a-bsfg` or `mes.plant-a`.
    pub name: String,
    /// Further SANs: host names or IP addresses a node is reached at (a
    /// client-only certificate needs none).
    pub extra_sans: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssueRequest {
    pub fn new(name: &str, valid_days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            name: name.to_string(),
            extra_sans: vec![],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(valid_days),
        }
    }
}

/// Issues `<name>.pem` / `<name>.key` in `out_dir`, signed by the CA in
/// `ca_dir`.
pub fn issue(ca_dir: &Path, out_dir: &Path, request: &IssueRequest) -> anyhow::Result<Issued> {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join(CA_KEY_FILE))?)?;
    let ca_pem = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, request.name.as_str());
    params
        .subject_alt_names
        .push(SanType::DnsName(request.name.as_str().try_into()?));
    for san in &request.extra_sans {
        params
            .subject_alt_names
            .push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.as_str().try_into()?),
            });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = request.not_before;
    params.not_after = request.not_after;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out_dir)?;
    let cert_path = out_dir.join(format!("{}.pem", request.name));
    let key_path = out_dir.join(format!("{}.key", request.name));
    std::fs::write(&cert_path, cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
    })
}
