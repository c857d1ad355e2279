//! Authorization: from a verified client certificate to a principal, and
//! what that principal may do. The TLS layer has already proved the
//! certificate chains to the site CA; this layer decides whether the named
//! identity is known here and allowed the request.

use crate::config::{PrincipalConfig, PrincipalKind, TlsMode, ZoneConfig};
use bsfg_domain::policy::{Crossing, FactPolicy};
use bsfg_domain::{Code, Reason, Rejection};
use connectrpc::RequestContext;
use std::collections::HashMap;
use std::sync::Arc;

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<PrincipalConfig>,
    /// The certificate name that matched.
    pub identity: String,
    /// `sha256:<hex>` of the client certificate ("" in plaintext-dev).
    pub fingerprint: String,
}

/// Why a caller could not even be identified (for the audit record).
#[derive(Debug, Clone)]
pub struct Unidentified {
    pub names: Vec<String>,
    pub fingerprint: String,
    pub rejection: Rejection,
}

/// Who a connection's certificate names, worked out once per connection
/// (a certificate is fixed for the life of a TLS connection) and handed to
/// every request on it, instead of parsing the certificate per request.
#[derive(Debug)]
pub struct Identified(pub Result<Caller, Unidentified>);

pub struct Auth {
    zone: String,
    buckets: Vec<String>,
    mode: TlsMode,
    by_identity: HashMap<String, Arc<PrincipalConfig>>,
    dev: Arc<PrincipalConfig>,
}

fn denied(reason: Reason, message: String) -> Rejection {
    Rejection::new(Code::PermissionDenied, reason, message)
}

impl Auth {
    pub fn new(config: &ZoneConfig) -> Self {
        let mut by_identity = HashMap::new();
        for p in &config.principals {
            let p = Arc::new(p.clone());
            for id in &p.identities {
                by_identity.insert(id.clone(), p.clone());
            }
        }
        // In plaintext-dev mode every caller is this all-powerful local app.
        let dev = Arc::new(PrincipalConfig {
            name: "plaintext-dev".into(),
            kind: PrincipalKind::App,
            identities: vec![],
            zone: None,
            origins: vec![],
            consumers: config.consumers.iter().map(|c| c.name.clone()).collect(),
            buckets_read: config.buckets.iter().map(|b| b.name.clone()).collect(),
            buckets_write: config.buckets.iter().map(|b| b.name.clone()).collect(),
            operator: true,
            export: FactPolicy::default(),
            import: FactPolicy::default(),
        });
        let buckets = config.buckets.iter().map(|b| b.name.clone()).collect();
        Self {
            zone: config.zone.clone(),
            buckets,
            mode: config.tls.mode,
            by_identity,
            dev,
        }
    }

    /// Identifies the caller of a request: as its connection was
    /// identified (see [`Identified`]), else from its certificate.
    pub fn caller(&self, ctx: &RequestContext) -> Result<Caller, Unidentified> {
        match ctx.extensions().get::<Arc<Identified>>() {
            Some(identified) => identified.0.clone(),
            None => self.identify(ctx.peer_certs()),
        }
    }

    /// Identifies a caller from its verified certificate chain (leaf
    /// first), before anything of its request is read.
    pub fn identify(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Caller, Unidentified> {
        if self.mode == TlsMode::PlaintextDev {
            return Ok(Caller {
                principal: self.dev.clone(),
                identity: "plaintext-dev".into(),
                fingerprint: String::new(),
            });
        }
        let unidentified =
            |names: Vec<String>, fingerprint: String, message: String| Unidentified {
                names,
                fingerprint,
                rejection: Rejection::new(Code::PermissionDenied, Reason::UnknownIdentity, message),
            };
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Err(unidentified(
                vec![],
                String::new(),
                "no client certificate was presented".into(),
            ));
        };
        let id = crate::tls::identity::of_certificate(leaf.as_ref()).map_err(|e| {
            unidentified(
                vec![],
                crate::tls::identity::fingerprint(leaf.as_ref()),
                e.to_string(),
            )
        })?;
        for name in &id.names {
            if let Some(p) = self.by_identity.get(name) {
                return Ok(Caller {
                    principal: p.clone(),
                    identity: name.clone(),
                    fingerprint: id.fingerprint,
                });
            }
        }
        let message = format!(
            "certificate {:?} ({}) is valid for this site but names no principal of zone {}; add it to [[principals]] identities",
            id.names, id.fingerprint, self.zone
        );
        Err(unidentified(id.names, id.fingerprint, message))
    }

    /// May `caller` append a fact claiming `from_zone`?
    pub fn check_from_zone(&self, caller: &Caller, from_zone: &str) -> Result<(), Rejection> {
        let p = &caller.principal;
        let ok = match p.kind {
            PrincipalKind::App => from_zone == self.zone,
            PrincipalKind::Peer => p.origins.iter().any(|o| o == from_zone),
        };
        if ok {
            return Ok(());
        }
        let allowed = match p.kind {
            PrincipalKind::App => vec![self.zone.clone()],
            PrincipalKind::Peer => p.origins.clone(),
        };
        Err(denied(
            Reason::FromZoneNotAllowed,
            format!(
                "principal {} may assert from_zone {:?} only, not {from_zone:?}",
                p.name, allowed
            ),
        ))
    }

    /// The import policy for a peer's facts (apps have none).
    pub fn check_import(&self, caller: &Caller, crossing: &Crossing<'_>) -> Result<(), Rejection> {
        if caller.principal.kind != PrincipalKind::Peer {
            return Ok(());
        }
        caller.principal.import.check(crossing).map_err(|r| {
            denied(
                r.reason,
                format!("import from {}: {}", caller.principal.name, r.message),
            )
        })
    }

    pub fn check_consumer(
        &self,
        caller: &Caller,
        consumer: &str,
        category: &str,
    ) -> Result<(), Rejection> {
        let p = &caller.principal;
        if !p.consumers.iter().any(|c| c == consumer) {
            return Err(denied(
                Reason::ConsumerNotAllowed,
                format!("principal {} may not use consumer {consumer}", p.name),
            ));
        }
        if p.kind == PrincipalKind::Peer
            && !p.export.categories.is_empty()
            && !p.export.categories.iter().any(|c| c == category)
        {
            return Err(denied(
                Reason::CategoryNotExported,
                format!("category {category} is not exported to peer {}", p.name),
            ));
        }
        Ok(())
    }

    /// May `caller` do an operator's act (`what`) on this zone?
    pub fn check_operator(&self, caller: &Caller, what: &str) -> Result<(), Rejection> {
        if caller.principal.operator {
            return Ok(());
        }
        Err(denied(
            Reason::OperatorRequired,
            format!(
                "principal {} is not an operator of zone {}; {what} needs operator = true in its [[principals]] entry",
                caller.principal.name, self.zone
            ),
        ))
    }

    /// A malformed or unconfigured bucket is reported as such (bucket names
    /// are configuration, not secrets); a configured one needs the right.
    pub fn check_bucket(
        &self,
        caller: &Caller,
        bucket: &str,
        write: bool,
    ) -> Result<(), Rejection> {
        bsfg_domain::validate::bucket(bucket)?;
        if !self.buckets.iter().any(|b| b == bucket) {
            return Err(Rejection::new(
                Code::NotFound,
                Reason::UnknownBucket,
                format!(
                    "bucket {bucket:?} is not configured in zone {} (configured: {:?})",
                    self.zone, self.buckets
                ),
            ));
        }
        let p = &caller.principal;
        let list = if write {
            &p.buckets_write
        } else {
            &p.buckets_read
        };
        if list.iter().any(|b| b == bucket) {
            return Ok(());
        }
        let verb = if write { "write" } else { "read" };
        Err(denied(
            Reason::BucketNotAllowed,
            format!("principal {} may not {verb} bucket {bucket}", p.name),
        ))
    }

    /// A peer's export policy (None for apps: they see their consumers whole).
    pub fn export_policy<'a>(&self, caller: &'a Caller) -> Option<&'a FactPolicy> {
        (caller.principal.kind == PrincipalKind::Peer).then_some(&caller.principal.export)
    }
}
