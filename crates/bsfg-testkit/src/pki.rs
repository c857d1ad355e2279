//! A development PKI in one directory, as `bsfg certs init` and `bsfg certs
//! issue` make it: the CA (`ca.pem`, `ca.key`) and, per name, `<name>.pem`
//! and `<name>.key`, usable for server and client authentication. Node
//! certificates also name localhost and 127.0.0.1, where tests, the demo
//! and the benchmarks reach their nodes.

use bsfg::tls::pki::{self, IssueRequest, Issued};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How long a certificate that [`Pki::client_config`] issues on first use
/// is valid.
const CLIENT_CERT_DAYS: i64 = 30;

/// A PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Creates a CA named `common_name` in `dir`, valid `ca_days` (refused
    /// where `dir` has one).
    pub fn init(dir: &Path, common_name: &str, ca_days: i64) -> anyhow::Result<Pki> {
        pki::init_ca(dir, common_name, ca_days)?;
        Ok(Pki::open(dir))
    }

    /// The PKI in `dir`, with a CA there already.
    pub fn open(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// The PKI in `dir`: its CA if it has one, else a new CA named
    /// `common_name`, valid `ca_days`.
    pub fn open_or_init(dir: &Path, common_name: &str, ca_days: i64) -> anyhow::Result<Pki> {
        if dir.join(pki::CA_CERT_FILE).exists() {
            Ok(Pki::open(dir))
        } else {
            Pki::init(dir, common_name, ca_days)
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(pki::CA_CERT_FILE)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Issues `<name>` valid `valid_days` (overwrites an existing one).
    pub fn issue(&self, name: &str, valid_days: i64) -> anyhow::Result<Issued> {
        self.issue_with(&IssueRequest::new(name, valid_days))
    }

    /// Issues the node certificate `<name>` (see [`Pki::node_request`]).
    pub fn issue_node(&self, name: &str, valid_days: i64) -> anyhow::Result<Issued> {
        self.issue_with(&Pki::node_request(name, valid_days))
    }

    pub fn issue_with(&self, request: &IssueRequest) -> anyhow::Result<Issued> {
        pki::issue(&self.dir, &self.dir, request)
    }

    /// A node certificate `<name>`: also for localhost and 127.0.0.1.
    pub fn node_request(name: &str, valid_days: i64) -> IssueRequest {
        let mut request = IssueRequest::new(name, valid_days);
        request.extra_sans = vec!["localhost".into(), "127.0.0.1".into()];
        request
    }

    /// An mTLS client configuration presenting `<name>` (issued on first
    /// use) and trusting this CA.
    pub fn client_config(&self, name: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        if !self.cert(name).exists() {
            self.issue(name, CLIENT_CERT_DAYS)?;
        }
        bsfg::tls::client::client_config(&self.ca(), &self.cert(name), &self.key(name))
    }
}
