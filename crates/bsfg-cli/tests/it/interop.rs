//! Third-party clients: `buf curl` (Connect protocol over mutual TLS with
//! HTTP/2 by ALPN, schema from the .proto files, its own Go TLS stack), a
//! plain HTTP/1.1 JSON POST over mutual TLS, and `@connectrpc/connect-node`
//! (binary Connect over HTTP/2, Node's TLS stack, the schema from `buf
//! build`), against a real node.

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
    buf_curl_data(zone, cert, method, &body.to_string()).await
}

/// `buf curl` with its `-d` argument as given (`@file` reads the body from
/// a file, for a body larger than one argument may be).
pub async fn buf_curl_data(
    zone: &Zone,
    cert: &str,
    method: &str,
    data: &str,
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
        .arg(data)
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

/// Runs `calls` (`[{method, request}]`, requests as proto JSON) through
/// `@connectrpc/connect-node` presenting the application certificate; one
/// answer per call: `{ok: response}` or `{error: {code, message}}`.
async fn connect_node(zone: &Zone, calls: &serde_json::Value) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let descriptors = dir.path().join("bsfg.binpb");
    let built = std::process::Command::new(buf())
        .current_dir(repo_root())
        .args(["build", "proto", "-o"])
        .arg(&descriptors)
        .output()
        .expect("run buf build");
    assert!(built.status.success(), "buf build: {built:?}");
    let calls_path = dir.path().join("calls.json");
    std::fs::write(&calls_path, calls.to_string()).unwrap();
    zone.pki.client_config(APP_CERT).unwrap(); // issued on first use
    let script = include_str!("connect_node_client.mjs");
    let mut child = tokio::process::Command::new("node")
        .current_dir(repo_root().join(".tools/npm"))
        .args(["--input-type=module", "-"])
        .arg(&descriptors)
        .arg(zone.url())
        .arg(zone.pki.ca())
        .arg(zone.pki.cert(APP_CERT))
        .arg(zone.pki.key(APP_CERT))
        .arg(&calls_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node is installed (scripts/setup.sh installs the npm packages with it)");
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "connect-node client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn interop_fact(id: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({
        "envelope": {"messageId": id, "fromZone": "plant-a", "toZone": "plant-a",
                     "producedAtUnixMs": "1700000000000"},
        "fact": {"subject": subject, "predicate": "step_completed", "objectJson": "{\"n\": 1}"}
    })
}

/// `@connectrpc/connect-node` appends one fact and a batch (one fact of it
/// malformed), repeats the batch (duplicates at the same offsets) and sends
/// a batch over the limit (refused whole): the same answers as the Rust
/// client and `buf curl` get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_node_appends_one_fact_and_a_batch() {
    let zone = Zone::start(Opts::default()).await;
    let batch = serde_json::json!({"facts": [
        interop_fact("node-2", "batch:PlantA/B2"),
        interop_fact("node-bad", "no colon"),
        interop_fact("node-3", "batch:PlantA/B3"),
    ]});
    let too_many: Vec<_> = (0..1001)
        .map(|i| interop_fact(&format!("node-many-{i}"), "batch:PlantA/B9"))
        .collect();
    let calls = serde_json::json!([
        {"method": "AppendFact", "request": interop_fact("node-1", "batch:PlantA/B1")},
        {"method": "AppendFacts", "request": batch},
        {"method": "AppendFacts", "request": batch},
        {"method": "AppendFacts", "request": {"facts": too_many}},
    ]);
    let answers = connect_node(&zone, &calls).await;
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert_eq!(answers[0]["ok"]["offset"], "1", "{}", answers[0]);
    for (answer, duplicate) in [(&answers[1], false), (&answers[2], true)] {
        let results = answer["ok"]["results"].as_array().expect("results");
        assert_eq!(results.len(), 3, "{answer}");
        assert_eq!(results[0]["appended"]["offset"], "2", "{answer}");
        assert_eq!(results[2]["appended"]["offset"], "3", "{answer}");
        let dup = |r: &serde_json::Value| r["appended"]["duplicate"].as_bool().unwrap_or(false);
        assert!(
            dup(&results[0]) == duplicate && dup(&results[2]) == duplicate,
            "{answer}"
        );
        assert_eq!(
            results[1]["refused"]["code"], "invalid_argument",
            "{answer}"
        );
        assert_eq!(results[1]["refused"]["reason"], "bad_subject", "{answer}");
    }
    assert_eq!(
        answers[3]["error"]["code"], "InvalidArgument",
        "{}",
        answers[3]
    );
    let message = answers[3]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("too_many_facts: "), "{message}");
    assert_eq!(zone.message_count("operational").await, 3);
}
