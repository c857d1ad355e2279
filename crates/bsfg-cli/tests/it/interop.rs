//! A third-party client: `buf curl` (Connect protocol over mutual TLS with
//! HTTP/2 by ALPN, schema from the .proto files, its own Go TLS stack) and a
//! plain HTTP/1.1 JSON POST over mutual TLS, against a real node.

use crate::harness::*;
use std::path::PathBuf;

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub(crate) fn buf() -> PathBuf {
    let path = repo_root().join(".tools/bin/buf");
    assert!(
        path.exists(),
        "buf not found at {}: run scripts/setup.sh to install the project tools",
        path.display()
    );
    path
}

/// `buf curl` presenting the certificate `cert` of the zone's PKI.
pub async fn buf_curl_as(
    zone: &Zone,
    cert: &str,
    method: &str,
    body: &serde_json::Value,
) -> std::process::Output {
    zone.pki.client_config(cert).unwrap(); // issued on first use
    tokio::process::Command::new(buf())
        .arg("curl")
        .arg("--schema")
        .arg(repo_root().join("proto"))
        .arg("--protocol")
        .arg("connect")
        .arg("--cacert")
        .arg(zone.pki.ca())
        .arg("--cert")
        .arg(zone.pki.cert(cert))
        .arg("--key")
        .arg(zone.pki.key(cert))
        .arg("-d")
        .arg(body.to_string())
        .arg(format!("{}/bsfg.v1.BoundaryService/{method}", zone.url()))
        .output()
        .await
        .expect("run buf curl")
}

async fn buf_curl(zone: &Zone, method: &str, body: &serde_json::Value) -> serde_json::Value {
    let output = buf_curl_as(zone, APP_CERT, method, body).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "buf curl {method} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("buf curl {method} printed non-JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_and_plain_http_json_interoperate() {
    let zone = Zone::start(Opts::default()).await;
    let append = serde_json::json!({
        "envelope": {"messageId": "interop-1", "fromZone": "plant-a", "toZone": "plant-a", "producedAtUnixMs": "1700000000000",
                     "labels": {"classification": "GMP"}},
        "fact": {"subject": "batch:PlantA/B1042", "predicate": "step_completed", "objectJson": "{ \"step\": \"mixing\", \"t\": 2.0 }"}
    });
    let r = buf_curl(&zone, "AppendFact", &append).await;
    assert_eq!(r["offset"], "1", "{r}");
    assert_eq!(r["category"], "operational", "{r}");
    let again = buf_curl(&zone, "AppendFact", &append).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["offset"], "1", "{again}");

    // Plain HTTP/1.1, Connect unary with a JSON body, no client library at all.
    let body = serde_json::json!({
        "envelope": {"message_id": "interop-2", "from_zone": "plant-a", "to_zone": "plant-a", "produced_at_unix_ms": 1700000000001i64},
        "fact": {"subject": "asset:FILLER-07", "predicate": "state_changed", "object_json": "{\"state\":\"running\"}"}
    });
    let tls = zone.tls_config();
    let (status, response) = https_raw(
        zone.boundary_addr,
        &tls,
        "POST",
        "/bsfg.v1.BoundaryService/AppendFact",
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
    .unwrap();
    let response: serde_json::Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["offset"], "2", "{response}");
    // A JSON error is a Connect error too.
    let (status, error) = https_raw(
        zone.boundary_addr,
        &tls,
        "POST",
        "/bsfg.v1.BoundaryService/FetchFacts",
        "application/json",
        br#"{"consumerName":"nobody"}"#,
    )
    .await
    .unwrap();
    let error: serde_json::Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["code"], "not_found", "{error}");

    let fetched = buf_curl(
        &zone,
        "FetchFacts",
        &serde_json::json!({"consumerName": "mes", "limit": 10, "waitMs": 1000}),
    )
    .await;
    let facts = fetched["facts"]
        .as_array()
        .unwrap_or_else(|| panic!("no facts: {fetched}"));
    assert_eq!(facts.len(), 2, "{fetched}");
    assert_eq!(facts[0]["offset"], "1");
    assert_eq!(facts[0]["envelope"]["messageId"], "interop-1");
    assert_eq!(facts[0]["envelope"]["labels"]["classification"], "GMP");
    assert_eq!(facts[0]["fact"]["subject"], "batch:PlantA/B1042");
    assert_eq!(facts[0]["fact"]["objectJson"], r#"{"step":"mixing","t":2}"#);
    assert_eq!(facts[1]["offset"], "2");
    assert_eq!(facts[1]["envelope"]["messageId"], "interop-2");
    let confirmed = buf_curl(
        &zone,
        "ConfirmReceipt",
        &serde_json::json!({"consumerName": "mes", "offset": "2"}),
    )
    .await;
    assert_eq!(confirmed["frontier"], "2", "{confirmed}");
}
