//! Zone identity over real TLS handshakes on real sockets: who gets in
//! (mutual TLS 1.3 against the zone's CA), what each principal may do, the
//! crossing policy on import and export, the crossing audit, third-party
//! clients over mTLS, and certificate reload without a restart.

use crate::harness::*;
use bsfg::config::{BucketConfig, PrincipalConfig, PrincipalKind};
use bsfg::tls::pki::IssueRequest;
use bsfg_domain::policy::{FactPolicy, OriginRule};
use bsfg_proto::bsfg::v1::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET_BUCKET: &str = "secret";

fn strings(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// plant-a with three principals: the app `mes` (mes.plant-a), the app `qa`
/// (qa.plant-a, own consumer qa_inbox) and the peer `idmz` (idmz-bsfg),
/// through which enterprise is routed. Export to idmz: operational only,
/// never kind `asset`. Import from idmz: nothing from enterprise except
/// kind `recipe`.
async fn security_zone() -> Zone {
    let mut idmz = PrincipalConfig {
        name: "idmz".into(),
        kind: PrincipalKind::Peer,
        identities: strings(&["idmz-bsfg"]),
        zone: Some("idmz".into()),
        origins: strings(&["idmz", "enterprise"]),
        consumers: strings(&["to_idmz", "to_idmz_docs"]),
        buckets_read: vec![],
        buckets_write: vec![],
        operator: false,
        export: FactPolicy {
            categories: strings(&["operational"]),
            deny_kinds: strings(&["asset"]),
            ..Default::default()
        },
        import: FactPolicy::default(),
    };
    idmz.import.origin_rules = vec![OriginRule {
        origin: "enterprise".into(),
        allow_kinds: strings(&["recipe"]),
    }];
    Zone::start(Opts {
        categories: vec![
            category("operational", &[], true),
            category("audit", &["audit"], false),
            category("documents", &["recipe", "document"], false),
        ],
        consumers: vec![
            consumer("mes", "operational"),
            consumer("auditor", "audit"),
            consumer("qa_inbox", "operational"),
            consumer("to_idmz", "operational"),
            consumer("to_idmz_docs", "documents"),
        ],
        buckets: vec![
            BucketConfig {
                name: BUCKET.into(),
                capacity_bytes: 64 * 1024 * 1024,
            },
            BucketConfig {
                name: SECRET_BUCKET.into(),
                capacity_bytes: 64 * 1024 * 1024,
            },
        ],
        routes: vec![("enterprise", "idmz")],
        principals: Some(vec![
            app_principal("mes", APP_CERT, &["mes", "auditor"], &[BUCKET], &[BUCKET]),
            app_principal("qa", "qa.plant-a", &["qa_inbox"], &[], &[]),
            idmz,
        ]),
        ..Opts::default()
    })
    .await
}

/// `sha256:<hex>` of the certificate file `<name>.pem` in `pki`.
fn fingerprint(pki: &Pki, name: &str) -> String {
    let der = bsfg::tls::read_certs(&pki.cert(name)).unwrap().remove(0);
    bsfg::tls::identity::fingerprint(&der)
}

/// Audit records not read yet (the auditor consumer, confirmed as read).
async fn new_audit_records(client: &bsfg::client::BsfgClient) -> Vec<serde_json::Value> {
    let r = client.fetch("auditor", 1000, 0, 300).await.unwrap();
    if let Some(last) = r.facts.last() {
        client.confirm("auditor", last.offset).await.unwrap();
    }
    r.facts
        .iter()
        .map(|f| {
            let fact = f.fact.as_option().unwrap();
            assert!(
                fact.subject.starts_with("audit:plant-a/"),
                "{}",
                fact.subject
            );
            serde_json::from_str(&fact.object_json).unwrap()
        })
        .collect()
}

/// Exactly one new audit record, with these fields.
async fn expect_audit(
    client: &bsfg::client::BsfgClient,
    principal: &str,
    fingerprint: &str,
    reason: &str,
    decision: &str,
) -> serde_json::Value {
    let records = new_audit_records(client).await;
    assert_eq!(
        records.len(),
        1,
        "one audit record for {reason}: {records:?}"
    );
    let r = records.into_iter().next().unwrap();
    assert_eq!(r["principal"], principal, "{r}");
    assert_eq!(r["certificate_sha256"], fingerprint, "{r}");
    assert_eq!(r["reason"], reason, "{r}");
    assert_eq!(r["decision"], decision, "{r}");
    assert!(r["time_unix_ms"].as_i64().unwrap() > 0, "{r}");
    r
}

fn env_from(message_id: &str, from_zone: &str, to_zone: &str) -> Envelope {
    Envelope {
        message_id: message_id.into(),
        from_zone: from_zone.into(),
        to_zone: to_zone.into(),
        produced_at_unix_ms: now_ms(),
        ..Default::default()
    }
}

/// The error a raw TLS connection ends with: handshake, then one HTTP/1.1
/// request; the server's verdict on the client certificate arrives as an
/// alert (TLS 1.3 clients finish their side of the handshake first).
async fn raw_tls_error(zone: &Zone, tls: &Arc<rustls::ClientConfig>) -> String {
    use tokio::io::AsyncReadExt;
    let mut stream = match tls_connect(zone.boundary_addr, tls, &[b"http/1.1"]).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    // Read before writing: the alert is already on its way.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(n)) => panic!("TLS connection was not refused (read {n} bytes)"),
        Err(_) => panic!("TLS connection was not refused (no alert within 5 s)"),
    }
}

/// Gauge value of `bsfg_certificate_expiry_days{certificate="<which>"}`.
async fn expiry_days(zone: &Zone, which: &str) -> Option<f64> {
    let text = zone.metrics_text().await;
    let prefix = format!("bsfg_certificate_expiry_days{{certificate=\"{which}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_missing_foreign_and_expired_certificates() {
    let zone = security_zone().await;
    let before = zone.all_counts().await;

    // No client certificate.
    let anonymous = bsfg::tls::client::anonymous_client_config(&zone.pki.ca()).unwrap();
    let e = raw_tls_error(&zone, &anonymous).await;
    assert!(
        e.contains("CertificateRequired"),
        "no client certificate: {e}"
    );
    assert!(
        zone.client_with(anonymous)
            .fetch("mes", 1, 0, 0)
            .await
            .is_err()
    );

    // A certificate with the right name from a foreign CA.
    let foreign = Pki::init(&zone.dir().join("foreign"), "Foreign CA", 30).unwrap();
    foreign.issue(APP_CERT, 30).unwrap();
    let foreign_tls = bsfg::tls::client::client_config(
        &zone.pki.ca(),
        &foreign.cert(APP_CERT),
        &foreign.key(APP_CERT),
    )
    .unwrap();
    let e = raw_tls_error(&zone, &foreign_tls).await;
    assert!(e.contains("UnknownCA"), "foreign CA: {e}");
    assert!(
        zone.client_with(foreign_tls)
            .append(envelope(&mid("foreign")), batch_fact(1))
            .await
            .is_err()
    );
    // A foreign CA that copies the site CA's name: the signature does not verify.
    let impostor = Pki::init(&zone.dir().join("impostor"), TEST_CA, 30).unwrap();
    impostor.issue(APP_CERT, 30).unwrap();
    let impostor_tls = bsfg::tls::client::client_config(
        &zone.pki.ca(),
        &impostor.cert(APP_CERT),
        &impostor.key(APP_CERT),
    )
    .unwrap();
    let e = raw_tls_error(&zone, &impostor_tls).await;
    assert!(
        e.contains("DecryptError"),
        "impostor CA with the site CA's name: {e}"
    );

    // An expired certificate of the zone's own CA, for a known identity.
    let expired_dir = zone.dir().join("expired");
    std::fs::create_dir_all(&expired_dir).unwrap();
    let mut request = IssueRequest::new(APP_CERT, 1);
    request.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    request.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let issued = bsfg::tls::pki::issue(&zone.pki.dir, &expired_dir, &request).unwrap();
    let expired_tls =
        bsfg::tls::client::client_config(&zone.pki.ca(), &issued.cert, &issued.key).unwrap();
    let e = raw_tls_error(&zone, &expired_tls).await;
    assert!(e.contains("CertificateExpired"), "expired certificate: {e}");
    assert!(
        zone.client_with(expired_tls)
            .append(envelope(&mid("expired")), batch_fact(2))
            .await
            .is_err()
    );

    // Refused in the handshake: no request reached the node, nothing stored
    // (not even an audit record: there is no request to attribute it to).
    assert_eq!(zone.all_counts().await, before);
    // Refused handshakes are counted by reason (and logged, rate-limited).
    let text = zone.metrics_text().await;
    let refused = |reason: &str| {
        metric_value(
            &text,
            "bsfg_tls_handshake_refusals_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .unwrap_or(0.0)
    };
    assert!(refused("no_client_certificate") >= 1.0, "{text}");
    assert!(
        refused("certificate_refused") >= 3.0,
        "foreign, impostor and expired certificates: {text}"
    );
    // The zone's own valid certificate still gets in.
    zone.client()
        .append(envelope(&mid("ok")), batch_fact(3))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_refusals_are_precise_audited_and_store_nothing() {
    let zone = security_zone().await;
    let mes = zone.client();
    let qa = zone.client_as("qa.plant-a");
    let idmz = zone.client_as("idmz-bsfg");
    let stranger = zone.client_as("stranger.plant-a");
    let (mes_fp, idmz_fp, stranger_fp) = (
        fingerprint(&zone.pki, APP_CERT),
        fingerprint(&zone.pki, "idmz-bsfg"),
        fingerprint(&zone.pki, "stranger.plant-a"),
    );
    // One fact for qa_inbox, so a confirm would have something to confirm.
    mes.append(envelope(&mid("seed")), batch_fact(0))
        .await
        .unwrap();
    assert_eq!(
        qa.fetch("qa_inbox", 10, 0, 1000).await.unwrap().facts.len(),
        1
    );
    let operational = zone.message_count("operational").await;

    // Unknown identity: valid for the site CA, mapped to no principal.
    assert_rejected(
        stranger
            .append(envelope(&mid("stranger")), batch_fact(1))
            .await,
        "permission_denied",
        "unknown_identity",
    );
    let r = expect_audit(&mes, "unknown", &stranger_fp, "unknown_identity", "refused").await;
    assert_eq!(r["identity"], "stranger.plant-a", "{r}");
    assert_eq!(r["rpc"], "AppendFact", "{r}");
    assert_rejected(
        stranger.fetch("mes", 1, 0, 0).await,
        "permission_denied",
        "unknown_identity",
    );
    expect_audit(&mes, "unknown", &stranger_fp, "unknown_identity", "refused").await;

    // A local application asserting another zone's from_zone.
    assert_rejected(
        mes.append(
            env_from(&mid("spoof"), "enterprise", "plant-a"),
            batch_fact(2),
        )
        .await,
        "permission_denied",
        "from_zone_not_allowed",
    );
    let r = expect_audit(&mes, "mes", &mes_fp, "from_zone_not_allowed", "refused").await;
    assert_eq!(r["identity"], APP_CERT, "{r}");

    // A peer asserting an origin not routed through it.
    assert_rejected(
        idmz.append(env_from(&mid("spoof"), "plant-b", "plant-a"), batch_fact(3))
            .await,
        "permission_denied",
        "from_zone_not_allowed",
    );
    expect_audit(&mes, "idmz", &idmz_fp, "from_zone_not_allowed", "refused").await;

    // Fetching or confirming another principal's consumer.
    assert_rejected(
        mes.fetch("qa_inbox", 10, 0, 0).await,
        "permission_denied",
        "consumer_not_allowed",
    );
    expect_audit(&mes, "mes", &mes_fp, "consumer_not_allowed", "refused").await;
    assert_rejected(
        mes.confirm("qa_inbox", 1).await,
        "permission_denied",
        "consumer_not_allowed",
    );
    expect_audit(&mes, "mes", &mes_fp, "consumer_not_allowed", "refused").await;
    assert_rejected(
        idmz.fetch("mes", 10, 0, 0).await,
        "permission_denied",
        "consumer_not_allowed",
    );
    expect_audit(&mes, "idmz", &idmz_fp, "consumer_not_allowed", "refused").await;

    // A peer fetching a consumer whose category is not exported to it.
    assert_rejected(
        idmz.fetch("to_idmz_docs", 10, 0, 0).await,
        "permission_denied",
        "category_not_exported",
    );
    expect_audit(&mes, "idmz", &idmz_fp, "category_not_exported", "refused").await;

    // Writing (and reading) a bucket the principal has no right to.
    assert_rejected(
        put(&mes, SECRET_BUCKET, "x/y.bin", b"not for mes", "").await,
        "permission_denied",
        "bucket_not_allowed",
    );
    expect_audit(&mes, "mes", &mes_fp, "bucket_not_allowed", "refused").await;
    assert!(
        zone.list_bucket(SECRET_BUCKET).await.is_empty(),
        "nothing written to the bucket"
    );
    assert!(
        get(&qa, BUCKET, "any.bin", 0)
            .await
            .unwrap_err()
            .to_string()
            .contains("bucket_not_allowed")
    );
    expect_audit(
        &mes,
        "qa",
        &fingerprint(&zone.pki, "qa.plant-a"),
        "bucket_not_allowed",
        "refused",
    )
    .await;

    // Import side of enterprise -> plant: nothing from enterprise through
    // idmz except recipes.
    assert_rejected(
        idmz.append(
            env_from(&mid("ent-batch"), "enterprise", "plant-a"),
            batch_fact(4),
        )
        .await,
        "permission_denied",
        "kind_not_allowed_from_origin",
    );
    let r = expect_audit(
        &mes,
        "idmz",
        &idmz_fp,
        "kind_not_allowed_from_origin",
        "refused",
    )
    .await;
    assert!(r["detail"].as_str().unwrap().contains("recipe"), "{r}");

    // Nothing reached the operational log, and the consumers did not move.
    assert_eq!(zone.message_count("operational").await, operational);
    assert_eq!(zone.message_count("documents").await, 0);
    assert_eq!(qa.fetch("qa_inbox", 10, 0, 0).await.unwrap().frontier, 0);

    // Allowed crossings still pass: a recipe from enterprise, a fact of idmz.
    let recipe = fact("recipe:R-77", "version_released", r#"{"version":3}"#);
    let ok = idmz
        .append(
            env_from(&mid("ent-recipe"), "enterprise", "plant-a"),
            recipe,
        )
        .await
        .unwrap();
    assert_eq!(ok.category, "documents");
    idmz.append(env_from(&mid("idmz-own"), "idmz", "plant-a"), batch_fact(5))
        .await
        .unwrap();
    assert_eq!(zone.message_count("documents").await, 1);
    assert_eq!(zone.message_count("operational").await, operational + 1);

    let metrics = zone.metrics_text().await;
    for reason in [
        "unknown_identity",
        "from_zone_not_allowed",
        "consumer_not_allowed",
        "category_not_exported",
        "bucket_not_allowed",
        "kind_not_allowed_from_origin",
    ] {
        let v = metric_value(
            &metrics,
            "bsfg_access_refusals",
            &[&format!("reason=\"{reason}\"")],
        );
        assert!(
            v.is_some_and(|v| v >= 1.0),
            "bsfg_access_refusals for {reason}: {v:?}\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_policy_withholds_denied_kinds_and_the_link_moves_past_them() {
    let zone = security_zone().await;
    let mes = zone.client();
    let idmz = zone.client_as("idmz-bsfg");
    let idmz_fp = fingerprint(&zone.pki, "idmz-bsfg");
    let asset = fact("asset:FILLER-07", "state_changed", r#"{"state":"running"}"#);
    let a = mes
        .append(env_from(&mid("b1"), ZONE, "enterprise"), batch_fact(1))
        .await
        .unwrap()
        .offset;
    let withheld = mes
        .append(env_from(&mid("asset"), ZONE, "enterprise"), asset)
        .await
        .unwrap()
        .offset;
    let b = mes
        .append(env_from(&mid("b2"), ZONE, "enterprise"), batch_fact(2))
        .await
        .unwrap()
        .offset;

    let r = idmz.fetch("to_idmz", 100, 0, 1000).await.unwrap();
    let served: Vec<u64> = r.facts.iter().map(|f| f.offset).collect();
    assert_eq!(
        served,
        vec![a, b],
        "the asset fact at {withheld} is never served to idmz"
    );
    assert!(
        r.facts
            .iter()
            .all(|f| !f.fact.as_option().unwrap().subject.starts_with("asset:"))
    );
    assert_eq!(r.last_delivered_offset, b);

    let rec = expect_audit(&mes, "idmz", &idmz_fp, "kind_not_allowed", "withheld").await;
    assert!(
        rec["key"]
            .as_str()
            .unwrap()
            .contains(&format!("offset {withheld}")),
        "{rec}"
    );
    let metrics = zone.metrics_text().await;
    let refusals = metric_value(
        &metrics,
        "bsfg_crossing_refusals",
        &[
            "peer=\"idmz\"",
            "direction=\"export\"",
            "reason=\"kind_not_allowed\"",
        ],
    );
    assert_eq!(refusals, Some(1.0), "{metrics}");

    // Confirming last_delivered_offset moves the frontier past the withheld fact.
    assert_eq!(
        idmz.confirm("to_idmz", r.last_delivered_offset)
            .await
            .unwrap(),
        b
    );
    // The link is not blocked: the next fact comes, the withheld one never.
    let c = mes
        .append(env_from(&mid("b3"), ZONE, "enterprise"), batch_fact(3))
        .await
        .unwrap()
        .offset;
    let r = idmz.fetch("to_idmz", 100, 0, 1000).await.unwrap();
    assert_eq!(
        r.facts.iter().map(|f| f.offset).collect::<Vec<_>>(),
        vec![c]
    );
    // A local app sees its consumer whole.
    assert_eq!(fetch_all(&mes, "mes", 4).await.len(), 4);
}

/// Referencing an object in a fact needs read access to its bucket: a
/// principal without it learns nothing about the object (existence, digest,
/// size) and cannot freeze it against its owner's overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_need_read_access_to_their_bucket() {
    let zone = security_zone().await;
    let mes = zone.client();
    let qa = zone.client_as("qa.plant-a");
    let qa_fp = fingerprint(&zone.pki, "qa.plant-a");
    let bytes = b"batch record B9, owned by mes".to_vec();
    let stored = put(&mes, BUCKET, "batch/B9/record.bin", &bytes, "")
        .await
        .unwrap();
    let reference = |key: &str, digest: &str, size_bytes: u64| {
        let mut f = batch_fact(9);
        f.attachments.push(AttachmentRef {
            bucket: BUCKET.into(),
            key: key.into(),
            digest: digest.into(),
            size_bytes,
            media_type: "application/octet-stream".into(),
            ..Default::default()
        });
        f
    };
    let operational = zone.message_count("operational").await;
    let wrong = sha256(b"a guess");
    let mut messages = vec![];
    for (key, digest, size) in [
        (
            "batch/B9/record.bin",
            stored.digest.as_str(),
            bytes.len() as u64,
        ),
        ("batch/B9/record.bin", wrong.as_str(), 1),
        ("batch/B9/absent.bin", wrong.as_str(), 1),
    ] {
        let r = qa
            .append(envelope(&mid("qa-ref")), reference(key, digest, size))
            .await;
        let message = r
            .as_ref()
            .err()
            .and_then(|e| e.message.clone())
            .unwrap_or_default();
        assert_rejected(r, "permission_denied", "bucket_not_allowed");
        assert!(
            !message.contains(&stored.digest) && !message.contains(&bytes.len().to_string()),
            "{message}"
        );
        expect_audit(&mes, "qa", &qa_fp, "bucket_not_allowed", "refused").await;
        messages.push(message);
    }
    assert!(
        messages.iter().all(|m| *m == messages[0]),
        "identical refusals whether the object exists or matches: {messages:?}"
    );
    assert_eq!(
        zone.message_count("operational").await,
        operational,
        "nothing appended"
    );

    // Not frozen: the owner can still replace it, and reference it itself.
    let replacement = put(&mes, BUCKET, "batch/B9/record.bin", b"corrected record", "")
        .await
        .unwrap();
    mes.append(
        envelope(&mid("mes-ref")),
        reference(
            "batch/B9/record.bin",
            &replacement.digest,
            replacement.size_bytes,
        ),
    )
    .await
    .unwrap();
    assert_rejected(
        put(&mes, BUCKET, "batch/B9/record.bin", b"again", "").await,
        "failed_precondition",
        "object_immutable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_over_mtls_with_a_valid_certificate_succeeds() {
    let zone = security_zone().await;
    let append = serde_json::json!({
        "envelope": {"messageId": "buf-1", "fromZone": "plant-a", "toZone": "enterprise", "producedAtUnixMs": "1700000000000"},
        "fact": {"subject": "batch:PlantA/B7", "predicate": "step_completed", "objectJson": "{\"step\":\"mixing\"}"}
    });
    let out = crate::interop::buf_curl_as(&zone, APP_CERT, "AppendFact", &append).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["offset"], "1", "{r}");
    // The same tool with a certificate the zone does not know is refused.
    let out = crate::interop::buf_curl_as(&zone, "stranger.plant-a", "AppendFact", &append).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission_denied") && stderr.contains("unknown_identity"),
        "{stderr}"
    );
    assert_eq!(zone.message_count("operational").await, 1);
}

/// The server's leaf certificate on a fresh connection.
async fn presented_certificate(zone: &Zone, tls: &Arc<rustls::ClientConfig>) -> String {
    let stream = tls_connect(zone.boundary_addr, tls, &[b"h2"])
        .await
        .unwrap();
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    bsfg::tls::identity::fingerprint(&der)
}

/// Atomically replaces `<name>.pem`/`<name>.key` in the zone's PKI by the
/// ones in `from`.
fn install(from: &Pki, to: &Pki, name: &str) {
    let stage = to.dir.join(format!(".{name}.stage"));
    std::fs::copy(from.key(name), &stage).unwrap();
    std::fs::rename(&stage, to.key(name)).unwrap();
    std::fs::copy(from.cert(name), &stage).unwrap();
    std::fs::rename(&stage, to.cert(name)).unwrap();
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_restart_and_expiry_is_a_metric() {
    let zone = security_zone().await;
    assert_eq!(zone.config.tls.reload_interval, Duration::from_millis(200));
    let mes_tls = zone.tls_config();
    // The days-until-expiry gauge: node certificate and CA issued for 30 days.
    wait_until("expiry gauges", || async {
        expiry_days(&zone, "node").await.is_some() && expiry_days(&zone, "ca").await.is_some()
    })
    .await;
    let node_days = expiry_days(&zone, "node").await.unwrap();
    assert!(
        (29.9..=30.0).contains(&node_days),
        "node certificate days {node_days}"
    );
    let ca_days = expiry_days(&zone, "ca").await.unwrap();
    assert!((29.9..=30.0).contains(&ca_days), "CA days {ca_days}");
    let old = presented_certificate(&zone, &mes_tls).await;
    assert_eq!(old, fingerprint(&zone.pki, NODE_CERT));

    // 1. A new node certificate (same CA, 12 days) replaces the files on disk.
    let stage = Pki {
        dir: zone.dir().join("stage1"),
    };
    std::fs::create_dir_all(&stage.dir).unwrap();
    bsfg::tls::pki::issue(&zone.pki.dir, &stage.dir, &Pki::node_request(NODE_CERT, 12)).unwrap();
    install(&stage, &zone.pki, NODE_CERT);
    let new = fingerprint(&zone.pki, NODE_CERT);
    assert_ne!(new, old);
    wait_until("node certificate gauge at 12 days", || async {
        expiry_days(&zone, "node").await.is_some_and(|d| d < 12.1)
    })
    .await;
    assert_eq!(
        presented_certificate(&zone, &mes_tls).await,
        new,
        "a new connection sees the new certificate"
    );
    zone.client()
        .append(envelope(&mid("after-reload")), batch_fact(1))
        .await
        .unwrap();

    // 2. A new CA (valid 90 days), with a node certificate and an app
    //    certificate from it. Afterwards its clients get in, the old CA's are refused.
    let new_ca = Pki::init(&zone.dir().join("new-ca"), "BSFG test CA 2", 90).unwrap();
    new_ca.issue_node(NODE_CERT, 30).unwrap();
    new_ca.issue(APP_CERT, 30).unwrap();
    install(&new_ca, &zone.pki, NODE_CERT);
    let stage = zone.pki.dir.join(".ca.stage");
    std::fs::copy(new_ca.ca(), &stage).unwrap();
    std::fs::rename(&stage, zone.pki.ca()).unwrap();
    wait_until("CA gauge at 90 days", || async {
        expiry_days(&zone, "ca").await.is_some_and(|d| d > 89.0)
    })
    .await;
    wait_until("node certificate gauge at 30 days", || async {
        expiry_days(&zone, "node").await.is_some_and(|d| d > 29.0)
    })
    .await;

    let new_client = new_ca.client_config(APP_CERT).unwrap();
    assert_eq!(
        presented_certificate(&zone, &new_client).await,
        fingerprint(&new_ca, NODE_CERT)
    );
    zone.client_with(new_client)
        .append(envelope(&mid("new-ca")), batch_fact(2))
        .await
        .unwrap();
    // The old app certificate, even trusting the new CA for the server, is refused.
    let old_cert_dir = zone.pki.dir.clone();
    let old_app = bsfg::tls::client::client_config(
        &new_ca.ca(),
        &old_cert_dir.join(format!("{APP_CERT}.pem")),
        &old_cert_dir.join(format!("{APP_CERT}.key")),
    )
    .unwrap();
    let e = raw_tls_error(&zone, &old_app).await;
    assert!(e.contains("UnknownCA"), "old CA's client: {e}");
    assert!(
        zone.client_with(old_app)
            .append(envelope(&mid("old-ca")), batch_fact(3))
            .await
            .is_err()
    );
    assert_eq!(zone.message_count("operational").await, 2);
    let failures = metric_value(&zone.metrics_text().await, "bsfg_tls_reload_failures", &[]);
    assert!(failures.is_some(), "reload failure counter exported");
}

/// The key index (it holds the secret hash key), its saved filter and the
/// embedded nats-server's config, log and store directory are the node's
/// alone: files 0600, directories 0700, also where an earlier version left
/// them world-readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let set_mode = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let filter_of = |index: &Path| index.with_extension("kix.filter");

    // A node on an external nats-server: its key index and saved filter.
    let mut zone = Zone::start(Opts::default()).await;
    let index = zone.config.key_index_path();
    assert_eq!(mode(&index), 0o600, "key index file");
    zone.stop_node().await;
    assert_eq!(mode(&filter_of(&index)), 0o600, "saved key filter");
    // As an earlier version left them: the next start tightens the index.
    set_mode(&index, 0o644);
    set_mode(&filter_of(&index), 0o644);
    zone.restart_node(false).await;
    assert_eq!(mode(&index), 0o600, "existing key index file");
    zone.stop_node().await;
    assert_eq!(
        mode(&filter_of(&index)),
        0o600,
        "saved key filter, saved again"
    );

    // A node with its own nats-server: a store directory, config and log
    // left world-readable, and a key index directory that does not exist.
    let root = zone.dir().join("embedded");
    let store_dir = root.join("jetstream");
    std::fs::create_dir_all(&store_dir).unwrap();
    set_mode(&store_dir, 0o755);
    for file in ["nats-server.conf", "nats-server.log"] {
        std::fs::write(store_dir.join(file), "").unwrap();
        set_mode(&store_dir.join(file), 0o644);
    }
    let mut config = zone.config.clone();
    config.nats.url = None;
    config.nats.store_dir = store_dir.clone();
    let index = root.join("index/keys.kix");
    config.commit.key_index_path = Some(index.clone());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.ops_listen = "127.0.0.1:0".parse().unwrap();
    let node = bsfg::node::start(config)
        .await
        .expect("a node with an embedded nats-server starts");
    assert_eq!(mode(&store_dir), 0o700, "nats store directory");
    assert_eq!(
        mode(&store_dir.join("nats-server.conf")),
        0o600,
        "nats-server config"
    );
    assert_eq!(
        mode(&store_dir.join("nats-server.log")),
        0o600,
        "nats-server log"
    );
    assert_eq!(mode(index.parent().unwrap()), 0o700, "key index directory");
    assert_eq!(mode(&index), 0o600, "key index file");
    drop(node);
    wait_until_key_index_closed(&index).await;
    assert_eq!(mode(&filter_of(&index)), 0o600, "saved key filter");
}

/// The embedded nats-server admits only its own node: a local process
/// without the generated password can neither read nor write the zone's
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_nats_server_admits_only_its_node() {
    let zone = Zone::start(Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = bsfg::ports::free_port().unwrap();
    let mut config = zone.config.clone();
    config.zone = "plant-e".into();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.ops_listen = "127.0.0.1:0".parse().unwrap();
    config.nats = bsfg::config::NatsConfig {
        url: None,
        port,
        store_dir: dir.path().join("jetstream"),
        ..Default::default()
    };
    config.commit.key_index_path = Some(dir.path().join("plant-e.kix"));
    let node = bsfg::node::start(config)
        .await
        .expect("the node starts its own server");

    let url = format!("nats://127.0.0.1:{port}");
    let anonymous = async_nats::ConnectOptions::new().connect(&url).await;
    assert!(
        anonymous.is_err(),
        "a client without credentials is refused"
    );
    let guessed = async_nats::ConnectOptions::with_user_and_password("bsfg".into(), "guess".into())
        .connect(&url)
        .await;
    assert!(guessed.is_err(), "a wrong password is refused");
    let conf = std::fs::read_to_string(dir.path().join("jetstream/nats-server.conf")).unwrap();
    assert!(
        conf.contains("authorization") && conf.contains("listen: \"127.0.0.1:"),
        "{conf}"
    );

    // The node itself works through it.
    let client = bsfg::client::BsfgClient::connect_tls(
        &format!("https://{}", node.boundary_addr),
        zone.tls_config(),
    )
    .unwrap();
    let mut e = envelope(&mid("through-auth"));
    e.from_zone = "plant-e".into();
    e.to_zone = "plant-e".into();
    let appended = client.append(e, batch_fact(1)).await;
    assert!(appended.is_ok(), "{appended:?}");
    drop(node);
}

/// Only the node writes audit records: a caller's fact of the audit kind
/// is refused, so the trail cannot be forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_cannot_be_forged() {
    let zone = Zone::start(Opts::default()).await;
    let forged = fact(
        "audit:plant-a/mes",
        "access_refused",
        r#"{"decision":"refused"}"#,
    );
    assert_rejected(
        zone.client().append(envelope(&mid("forged")), forged).await,
        "permission_denied",
        "kind_reserved",
    );
    assert_eq!(
        zone.message_count("audit").await,
        1,
        "only the node's record of the refusal"
    );
}

/// A flood of refusals from one certificate gets a burst of records and
/// then one summary that counts the rest: the trail is neither filled nor
/// silenced, and another caller's refusal is still recorded on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_summarized_not_stored_one_by_one() {
    let zone = Zone::start(Opts::default()).await;
    let flood = 1400;
    let stranger = zone.client_as("stranger.plant-a");
    // One connection first: calls started before it exists would each open
    // their own, and the node's connections_max would refuse some.
    let first = stranger
        .append(envelope("flood-first"), batch_fact(1))
        .await;
    assert_rejected(first, "permission_denied", "unknown_identity");
    // Then waves of calls multiplexed on it.
    for wave in 0..flood / 350 {
        let calls = (0..350).map(|i| {
            let stranger = stranger.clone();
            async move {
                let id = format!("flood-{wave}-{i}");
                stranger.append(envelope(&id), batch_fact(1)).await
            }
        });
        for r in futures::future::join_all(calls).await {
            assert_rejected(r, "permission_denied", "unknown_identity");
        }
    }
    let other = zone.client_as("intruder.plant-a");
    assert_rejected(
        other.append(envelope(&mid("other")), batch_fact(1)).await,
        "permission_denied",
        "unknown_identity",
    );

    let audit_client = zone.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut records = Vec::new();
    let summarized = loop {
        records.extend(
            audit_client
                .fetch("auditor", 1000, 0, 500)
                .await
                .unwrap()
                .facts,
        );
        let summary = records
            .iter()
            .find(|f| f.fact.predicate == "refusals_summarized")
            .cloned();
        if let Some(summary) = summary {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "no summary record within 20 s; {} records",
            records.len()
        );
    };
    let individual = records
        .iter()
        .filter(|f| f.fact.predicate == "access_refused")
        .count();
    assert!(
        individual <= 2 * bsfg::node::audit::limiter::BURST_RECORDS as usize,
        "{individual} individual records for {flood} refusals"
    );
    assert!(
        records
            .iter()
            .any(|f| f.fact.object_json.contains("intruder.plant-a")),
        "the other caller's refusal is recorded"
    );
    let counted: u64 = summarized
        .fact
        .object_json
        .split("further refusals")
        .next()
        .unwrap()
        .rsplit('"')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        counted >= flood as u64 - 2 * bsfg::node::audit::limiter::BURST_RECORDS as u64,
        "{}",
        summarized.fact.object_json
    );
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(&text, "bsfg_audit_records_dropped_total", &[]),
        Some(0.0)
    );
}

/// An audit record whose append fails while the store stalls is retried,
/// not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_record_survives_a_store_stall() {
    let zone = Zone::start(Opts::default()).await;
    let stranger = zone.client_as("stranger.plant-a");
    zone.nats.signal("STOP").unwrap();
    let refused = tokio::spawn(async move {
        stranger
            .append(envelope(&mid("during-stall")), batch_fact(1))
            .await
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    zone.nats.signal("CONT").unwrap();
    assert_rejected(
        refused.await.unwrap(),
        "permission_denied",
        "unknown_identity",
    );
    let audit = fetch_all(&zone.client(), "auditor", 1).await;
    assert!(
        audit
            .iter()
            .any(|f| f.fact.object_json.contains("stranger.plant-a")),
        "{audit:?}"
    );
    let text = zone.metrics_text().await;
    assert_eq!(
        metric_value(&text, "bsfg_audit_records_dropped_total", &[]),
        Some(0.0)
    );
}

/// plant-a of the reference site, plus an `auditor` consumer for the app
/// (the operator) and the app principal `viewer` (certificate
/// `viewer.plant-a`, not an operator) granted that consumer too.
fn operations_zone(zone: &str, config: &mut bsfg::config::ZoneConfig) {
    if zone != "plant-a" {
        return;
    }
    config.consumers.push(consumer("auditor", "audit"));
    config
        .principals
        .iter_mut()
        .find(|p| p.name == "app")
        .unwrap()
        .consumers
        .push("auditor".into());
    config.principals.push(app_principal(
        "viewer",
        "viewer.plant-a",
        &["auditor"],
        &[],
        &[],
    ));
}

/// The ResetConsumer refusals recorded in plant-a's audit since the last call.
async fn reset_refusals(operator: &bsfg::client::BsfgClient) -> Vec<serde_json::Value> {
    let r = operator.fetch("auditor", 1000, 0, 300).await.unwrap();
    if let Some(last) = r.facts.last() {
        operator.confirm("auditor", last.offset).await.unwrap();
    }
    r.facts
        .iter()
        .map(|f| {
            serde_json::from_str::<serde_json::Value>(&f.fact.as_option().unwrap().object_json)
                .unwrap()
        })
        .filter(|r| r["rpc"] == "ResetConsumer")
        .collect()
}

/// OperationsService: an operator sees every link and consumer and may
/// replay; anyone else (an app granted the auditor consumer, a peer) sees
/// only its own consumers and no links, and may not replay (refused,
/// audited, counted). A replay beyond the end of the log is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_need_the_operator_right() {
    use bsfg_proto::bsfg::v1::reset_consumer_request::Position;
    let site = crate::crossing::Site::start_with(crate::crossing::SiteOpts {
        tweak: Some(operations_zone),
        ..Default::default()
    })
    .await;
    let plant = &site.zones["plant-a"];
    let client_as = |name: &str| {
        if !site.certs.join(format!("{name}.pem")).exists() {
            bsfg::tls::pki::issue(&site.certs, &site.certs, &IssueRequest::new(name, 5)).unwrap();
        }
        let tls = bsfg::tls::client::client_config(
            &site.certs.join("ca.pem"),
            &site.certs.join(format!("{name}.pem")),
            &site.certs.join(format!("{name}.key")),
        )
        .unwrap();
        bsfg::client::BsfgClient::connect_tls(&format!("https://{}", plant.config.listen), tls)
            .unwrap()
    };
    let operator = site.app("plant-a");
    let (viewer, peer) = (client_as("viewer.plant-a"), client_as("idmz-bsfg"));

    // Who sees what.
    let names = |s: &GetStatusResponse| {
        let mut n: Vec<String> = s.consumers.iter().map(|c| c.name.clone()).collect();
        n.sort();
        n
    };
    let all = operator.status().await.unwrap();
    assert_eq!(
        all.links
            .iter()
            .map(|l| l.peer.as_str())
            .collect::<Vec<_>>(),
        // The production link and the status link (see `site.rs`).
        ["idmz", "idmz/to-plant-a-status"]
    );
    assert_eq!(
        names(&all),
        ["auditor", "local", "to-idmz", "to-idmz-status"]
    );
    // A zone of one node on its embedded server: role single, no lease.
    let ha = all.ha.as_option().expect("the writer status");
    assert_eq!((ha.role.as_str(), ha.node_id.as_str()), ("single", ""));
    assert!(ha.lease_holder_node_id.is_empty() && ha.lease_renewal_age_seconds < 0.0);
    assert_eq!(ha.servers.len(), 1, "the embedded server: {ha:?}");
    assert!(ha.servers[0].streams.iter().all(|r| r.leader), "{ha:?}");
    for (who, client, own) in [
        ("viewer", &viewer, &["auditor"][..]),
        ("peer idmz", &peer, &["to-idmz", "to-idmz-status"][..]),
    ] {
        let s = client.status().await.unwrap();
        assert_eq!(s.zone, "plant-a");
        assert!(s.links.is_empty(), "{who} sees no links: {:?}", s.links);
        let ha = s.ha.as_option().expect("the writer status");
        assert_eq!(ha.role, "single", "{who} sees the role");
        assert!(ha.servers.is_empty(), "{who} sees no store servers: {ha:?}");
        assert_eq!(names(&s), own, "{who} sees only its own consumers");
    }

    // Only an operator replays: a principal granted the auditor consumer
    // cannot blank it, nor a peer replay its own.
    reset_refusals(operator).await;
    assert_rejected(
        viewer
            .reset_consumer("auditor", Position::Offset(u64::MAX))
            .await,
        "permission_denied",
        "operator_required",
    );
    assert_rejected(
        peer.reset_consumer("to-idmz", Position::Offset(1)).await,
        "permission_denied",
        "operator_required",
    );
    let records = reset_refusals(operator).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (
            &records[0]["principal"],
            &records[0]["reason"],
            &records[0]["decision"]
        ),
        (
            &"viewer".into(),
            &"operator_required".into(),
            &"refused".into()
        )
    );
    assert!(
        records[0]["key"].as_str().unwrap().starts_with("auditor "),
        "{}",
        records[0]
    );
    assert_eq!(
        (&records[1]["principal"], &records[1]["reason"]),
        (&"idmz".into(), &"operator_required".into())
    );
    let (_, metrics) = http_raw(plant.ops_addr, "GET", "/metrics", "text/plain", b"")
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "bsfg_access_refusals",
            &["reason=\"operator_required\""]
        ),
        Some(2.0),
        "{metrics}"
    );

    // An operator's replay past the end of the log is refused (and audited);
    // to the end it moves nothing, from the start it delivers all again.
    let ids: Vec<String> = (0..3).map(|i| mid(&format!("ops-{i}"))).collect();
    let mut offsets = vec![];
    for (i, id) in ids.iter().enumerate() {
        offsets.push(
            site.append("plant-a", "plant-a", id, batch_fact(i))
                .await
                .offset,
        );
    }
    assert_eq!(site.drain_local("plant-a").await.len(), 3);
    let last = *offsets.last().unwrap();
    for beyond in [u64::MAX, last + 2] {
        assert_rejected(
            operator
                .reset_consumer("local", Position::Offset(beyond))
                .await,
            "out_of_range",
            "offset_beyond_end",
        );
    }
    let records = reset_refusals(operator).await;
    assert_eq!(
        records
            .iter()
            .map(|r| (
                r["principal"].as_str().unwrap(),
                r["reason"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("app", "offset_beyond_end"); 2]
    );
    assert_eq!(
        operator
            .reset_consumer("local", Position::Offset(last + 1))
            .await
            .unwrap(),
        last
    );
    assert!(site.drain_local("plant-a").await.is_empty());
    assert_eq!(
        operator
            .reset_consumer("local", Position::Offset(offsets[0]))
            .await
            .unwrap(),
        offsets[0] - 1
    );
    let again = site.drain_local("plant-a").await;
    assert_eq!(
        again
            .iter()
            .map(|f| f.envelope.message_id.clone())
            .collect::<Vec<_>>(),
        ids
    );
    // Each replay is on the trail as an operator's act.
    let records = reset_refusals(operator).await;
    let done: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(done, [("operated", "consumer_reset"); 2], "{records:?}");
}
