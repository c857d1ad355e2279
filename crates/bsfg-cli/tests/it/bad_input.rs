//! Bad input, table-driven: every case must be refused with its precise
//! Connect code and reason, and leave the zone's state exactly as it was.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::*;
use connectrpc::ConnectError;
use std::time::{Duration, Instant};

// A table of a few dozen cases, built once.
#[allow(clippy::large_enum_variant)]
enum Call {
    Append(Option<Envelope>, Option<Fact>),
    Fetch(&'static str),
    Confirm(&'static str, u64),
    Put {
        bucket: &'static str,
        key: &'static str,
        bytes: Vec<u8>,
        expected_digest: String,
    },
    Get {
        bucket: &'static str,
        key: &'static str,
        start: u64,
    },
}

struct Case {
    name: &'static str,
    call: Call,
    code: &'static str,
    reason: &'static str,
}

fn env_with(change: impl FnOnce(&mut Envelope)) -> Option<Envelope> {
    let mut e = envelope(&mid("bad"));
    change(&mut e);
    Some(e)
}

fn good_fact() -> Option<Fact> {
    Some(batch_fact(1))
}

fn fact_with(change: impl FnOnce(&mut Fact)) -> Option<Fact> {
    let mut f = batch_fact(1);
    change(&mut f);
    Some(f)
}

fn attach(bucket: &str, key: &str, digest: &str, size: u64) -> Option<Fact> {
    fact_with(|f| {
        f.attachments.push(AttachmentRef {
            bucket: bucket.into(),
            key: key.into(),
            digest: digest.into(),
            size_bytes: size,
            ..Default::default()
        })
    })
}

async fn run(client: &BsfgClient, zone: &Zone, call: Call) -> Result<String, ConnectError> {
    match call {
        Call::Append(e, f) => {
            // The typed client always sets both; build the request by hand.
            let request = AppendFactRequest {
                envelope: e.into(),
                fact: f.into(),
                ..Default::default()
            };
            let uri: http::Uri = zone.url().parse().unwrap();
            let config = connectrpc::client::ClientConfig::new(uri);
            let raw = BoundaryServiceClient::new(
                connectrpc::client::HttpClient::with_tls(zone.tls_config()),
                config,
            );
            raw.append_fact(request)
                .await
                .map(|r| format!("{:?}", r.into_owned()))
        }
        Call::Fetch(name) => client
            .fetch(name, 10, 0, 0)
            .await
            .map(|r| format!("{} facts", r.facts.len())),
        Call::Confirm(name, offset) => client
            .confirm(name, offset)
            .await
            .map(|f| format!("frontier {f}")),
        Call::Put {
            bucket,
            key,
            bytes,
            expected_digest,
        } => put(client, bucket, key, &bytes, &expected_digest)
            .await
            .map(|r| format!("{r:?}")),
        Call::Get { bucket, key, start } => {
            let r = get(client, bucket, key, start).await;
            match r {
                Ok((info, bytes)) => Ok(format!("{info:?} {} bytes", bytes.len())),
                // The typed client renders stream errors as "code: message".
                Err(e) => {
                    let text = e.to_string();
                    let (code, message) = text.split_once(": ").unwrap_or(("unknown", &text));
                    let code = match code {
                        "not_found" => connectrpc::ErrorCode::NotFound,
                        "out_of_range" => connectrpc::ErrorCode::OutOfRange,
                        "invalid_argument" => connectrpc::ErrorCode::InvalidArgument,
                        _ => connectrpc::ErrorCode::Unknown,
                    };
                    Err(ConnectError::new(code, message.to_string()))
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_and_changes_nothing() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();

    // State the table runs against: one fact delivered to `mes`, one object.
    let ok = client
        .append(envelope(&mid("seed")), batch_fact(0))
        .await
        .unwrap();
    assert_eq!(
        client.fetch("mes", 10, 0, 1000).await.unwrap().facts.len(),
        1
    );
    let object = b"the batch record".to_vec();
    let digest = sha256(&object);
    put(&client, BUCKET, "batch/B1/record.txt", &object, "")
        .await
        .unwrap();
    let counts_before = zone.all_counts().await;
    let objects_before = zone.list_bucket(BUCKET).await;
    let other_digest = sha256(b"other");

    let cases = vec![
        Case {
            name: "missing envelope",
            call: Call::Append(None, good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "missing fact",
            call: Call::Append(env_with(|_| {}), None),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "missing message_id",
            call: Call::Append(env_with(|e| e.message_id.clear()), good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "missing from_zone",
            call: Call::Append(env_with(|e| e.from_zone.clear()), good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "missing to_zone",
            call: Call::Append(env_with(|e| e.to_zone.clear()), good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "bad zone grammar",
            call: Call::Append(env_with(|e| e.from_zone = "Plant_A".into()), good_fact()),
            code: "invalid_argument",
            reason: "bad_zone",
        },
        Case {
            name: "produced_at 0",
            call: Call::Append(env_with(|e| e.produced_at_unix_ms = 0), good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "produced_at negative",
            call: Call::Append(env_with(|e| e.produced_at_unix_ms = -5), good_fact()),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "control char in message_id",
            call: Call::Append(env_with(|e| e.message_id = "m\u{1}x".into()), good_fact()),
            code: "invalid_argument",
            reason: "control_character",
        },
        Case {
            name: "whitespace in message_id",
            call: Call::Append(env_with(|e| e.message_id = "m x".into()), good_fact()),
            code: "invalid_argument",
            reason: "bad_message_id",
        },
        Case {
            name: "oversize message_id",
            call: Call::Append(env_with(|e| e.message_id = "m".repeat(129)), good_fact()),
            code: "invalid_argument",
            reason: "field_too_long",
        },
        Case {
            name: "too many labels",
            call: Call::Append(
                env_with(|e| {
                    (0..33).for_each(|i| {
                        e.labels.insert(format!("k{i}"), "v".into());
                    })
                }),
                good_fact(),
            ),
            code: "invalid_argument",
            reason: "too_many_labels",
        },
        Case {
            name: "bad label key",
            call: Call::Append(
                env_with(|e| {
                    e.labels.insert("bad key".into(), "v".into());
                }),
                good_fact(),
            ),
            code: "invalid_argument",
            reason: "bad_label",
        },
        Case {
            name: "missing subject",
            call: Call::Append(env_with(|_| {}), fact_with(|f| f.subject.clear())),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "subject without colon",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.subject = "batchB1".into()),
            ),
            code: "invalid_argument",
            reason: "bad_subject",
        },
        Case {
            name: "uppercase kind",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.subject = "Batch:B1".into()),
            ),
            code: "invalid_argument",
            reason: "bad_subject",
        },
        Case {
            name: "subject traversal",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.subject = "batch:../B1".into()),
            ),
            code: "invalid_argument",
            reason: "bad_subject",
        },
        Case {
            name: "missing predicate",
            call: Call::Append(env_with(|_| {}), fact_with(|f| f.predicate.clear())),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "camelCase predicate",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.predicate = "stepCompleted".into()),
            ),
            code: "invalid_argument",
            reason: "bad_predicate",
        },
        Case {
            name: "hyphen predicate",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.predicate = "step-completed".into()),
            ),
            code: "invalid_argument",
            reason: "bad_predicate",
        },
        Case {
            name: "object_json array",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = "[1,2]".into()),
            ),
            code: "invalid_argument",
            reason: "object_json_not_object",
        },
        Case {
            name: "object_json string",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = "\"s\"".into()),
            ),
            code: "invalid_argument",
            reason: "object_json_not_object",
        },
        Case {
            name: "object_json key twice",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = r#"{"a":1,"a":2}"#.into()),
            ),
            code: "invalid_argument",
            reason: "bad_object_json",
        },
        Case {
            name: "nested object_json key twice",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = r#"{"a":{"b":1,"c":2,"b":1}}"#.into()),
            ),
            code: "invalid_argument",
            reason: "bad_object_json",
        },
        Case {
            name: "invalid JSON",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = "{\"a\":".into()),
            ),
            code: "invalid_argument",
            reason: "bad_object_json",
        },
        Case {
            name: "oversize object_json",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| f.object_json = format!("{{\"a\":\"{}\"}}", "x".repeat(200 * 1024))),
            ),
            code: "invalid_argument",
            reason: "fact_too_large",
        },
        Case {
            name: "attachment missing",
            call: Call::Append(
                env_with(|_| {}),
                attach(BUCKET, "batch/none.txt", &digest, object.len() as u64),
            ),
            code: "failed_precondition",
            reason: "attachment_missing",
        },
        Case {
            name: "attachment digest mismatch",
            call: Call::Append(
                env_with(|_| {}),
                attach(
                    BUCKET,
                    "batch/B1/record.txt",
                    &other_digest,
                    object.len() as u64,
                ),
            ),
            code: "failed_precondition",
            reason: "attachment_mismatch",
        },
        Case {
            name: "attachment size mismatch",
            call: Call::Append(
                env_with(|_| {}),
                attach(BUCKET, "batch/B1/record.txt", &digest, 1),
            ),
            code: "failed_precondition",
            reason: "attachment_mismatch",
        },
        Case {
            name: "bad attachment digest format",
            call: Call::Append(
                env_with(|_| {}),
                attach(BUCKET, "batch/B1/record.txt", "md5:abc", 1),
            ),
            code: "invalid_argument",
            reason: "bad_digest",
        },
        Case {
            name: "bad attachment media type",
            call: Call::Append(
                env_with(|_| {}),
                fact_with(|f| {
                    f.attachments.push(AttachmentRef {
                        bucket: BUCKET.into(),
                        key: "batch/B1/record.txt".into(),
                        digest: digest.clone(),
                        size_bytes: object.len() as u64,
                        media_type: "pdf".into(),
                        ..Default::default()
                    })
                }),
            ),
            code: "invalid_argument",
            reason: "bad_media_type",
        },
        Case {
            name: "attachment unknown bucket",
            call: Call::Append(
                env_with(|_| {}),
                attach("nope", "batch/B1/record.txt", &digest, 1),
            ),
            code: "failed_precondition",
            reason: "attachment_missing",
        },
        Case {
            name: "conflicting duplicate",
            call: Call::Append(None, None),
            code: "already_exists",
            reason: "conflicting_duplicate",
        },
        Case {
            name: "unknown consumer (fetch)",
            call: Call::Fetch("nobody"),
            code: "not_found",
            reason: "unknown_consumer",
        },
        Case {
            name: "bad consumer name (fetch)",
            call: Call::Fetch("a b"),
            code: "invalid_argument",
            reason: "bad_consumer_name",
        },
        Case {
            name: "empty consumer name",
            call: Call::Fetch(""),
            code: "invalid_argument",
            reason: "missing_field",
        },
        Case {
            name: "unknown consumer (confirm)",
            call: Call::Confirm("nobody", 1),
            code: "not_found",
            reason: "unknown_consumer",
        },
        Case {
            name: "confirm beyond delivered",
            call: Call::Confirm("mes", ok.offset + 5),
            code: "failed_precondition",
            reason: "not_delivered",
        },
        Case {
            name: "traversal object key",
            call: Call::Put {
                bucket: BUCKET,
                key: "a/../b",
                bytes: b"x".to_vec(),
                expected_digest: String::new(),
            },
            code: "invalid_argument",
            reason: "bad_object_key",
        },
        Case {
            name: "absolute object key",
            call: Call::Put {
                bucket: BUCKET,
                key: "/etc/passwd",
                bytes: b"x".to_vec(),
                expected_digest: String::new(),
            },
            code: "invalid_argument",
            reason: "bad_object_key",
        },
        Case {
            name: "reserved object key",
            call: Call::Put {
                bucket: BUCKET,
                key: "_bsfg/blob/x",
                bytes: b"x".to_vec(),
                expected_digest: String::new(),
            },
            code: "invalid_argument",
            reason: "bad_object_key",
        },
        Case {
            name: "unknown bucket",
            call: Call::Put {
                bucket: "nope",
                key: "a",
                bytes: b"x".to_vec(),
                expected_digest: String::new(),
            },
            code: "not_found",
            reason: "unknown_bucket",
        },
        Case {
            name: "bad bucket name",
            call: Call::Put {
                bucket: "No Pe",
                key: "a",
                bytes: b"x".to_vec(),
                expected_digest: String::new(),
            },
            code: "invalid_argument",
            reason: "bad_bucket",
        },
        Case {
            name: "digest mismatch on PutObject",
            call: Call::Put {
                bucket: BUCKET,
                key: "new/x.bin",
                bytes: b"xyz".to_vec(),
                expected_digest: other_digest.clone(),
            },
            code: "invalid_argument",
            reason: "digest_mismatch",
        },
        Case {
            name: "bad expected digest format",
            call: Call::Put {
                bucket: BUCKET,
                key: "new/x.bin",
                bytes: b"xyz".to_vec(),
                expected_digest: "sha256:XYZ".into(),
            },
            code: "invalid_argument",
            reason: "bad_digest",
        },
        Case {
            name: "GetObject unknown key",
            call: Call::Get {
                bucket: BUCKET,
                key: "no/such.bin",
                start: 0,
            },
            code: "not_found",
            reason: "object_not_found",
        },
        Case {
            name: "GetObject unknown bucket",
            call: Call::Get {
                bucket: "nope",
                key: "a",
                start: 0,
            },
            code: "not_found",
            reason: "unknown_bucket",
        },
        Case {
            name: "GetObject start beyond end",
            call: Call::Get {
                bucket: BUCKET,
                key: "batch/B1/record.txt",
                start: object.len() as u64 + 1,
            },
            code: "out_of_range",
            reason: "offset_beyond_end",
        },
    ];
    assert!(cases.len() >= 25);
    let seed_envelope = {
        let mut e = envelope("seed-conflict");
        e.produced_at_unix_ms = 1;
        e
    };
    // The conflicting-duplicate case needs a stored key: seed it now and
    // count it in the baseline.
    client
        .append(seed_envelope.clone(), batch_fact(1))
        .await
        .unwrap();
    let mut counts_before = counts_before;
    *counts_before.get_mut("operational").unwrap() += 1;

    let mut failures = Vec::new();
    for case in cases {
        let call = match case.call {
            Call::Append(None, None) => {
                Call::Append(Some(seed_envelope.clone()), Some(batch_fact(2)))
            }
            other => other,
        };
        match run(&client, &zone, call).await {
            Ok(v) => failures.push(format!(
                "{}: expected {} {}, got Ok({v})",
                case.name, case.code, case.reason
            )),
            Err(e) => {
                let message = e.message.clone().unwrap_or_default();
                if e.code.as_str() != case.code || !message.starts_with(case.reason) {
                    failures.push(format!(
                        "{}: expected {} {}, got {} {message:?}",
                        case.name,
                        case.code,
                        case.reason,
                        e.code.as_str()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A repeated key is named (serde_json alone kept the last value).
    let refused = client
        .append(
            envelope(&mid("key-twice")),
            fact("batch:B1", "step_completed", r#"{"a":1,"a":2}"#),
        )
        .await
        .unwrap_err();
    assert_eq!(
        refused.message.as_deref(),
        Some(
            r#"bad_object_json: fact.object_json has the key "a" twice; RFC 8785 requires unique member names"#
        )
    );

    assert_eq!(
        zone.all_counts().await,
        counts_before,
        "no fact stored by any refused request"
    );
    assert_eq!(
        zone.list_bucket(BUCKET).await,
        objects_before,
        "object store unchanged"
    );
    // The seeded object is still intact and still overwritable (not frozen by a refused fact).
    let (_, back) = get(&client, BUCKET, "batch/B1/record.txt", 0)
        .await
        .unwrap();
    assert_eq!(back, object);
    put(&client, BUCKET, "batch/B1/record.txt", &object, "")
        .await
        .unwrap();
    // The consumer's frontier did not move.
    assert_eq!(client.fetch("mes", 10, 0, 0).await.unwrap().frontier, 0);
}

/// Encodes a protobuf length-delimited field.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![((number << 3) | 2) as u8];
    let mut len = bytes.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_string_field_is_refused() {
    let zone = Zone::start(Opts::default()).await;
    // A valid request first, to prove the hand-built encoding is right.
    let build = |message_id: &[u8]| {
        let mut env = field(1, message_id);
        env.extend(field(2, b"plant-a"));
        env.extend(field(3, b"plant-a"));
        env.extend([0x20, 0x01]); // produced_at_unix_ms = 1 (field 4, varint)
        let mut fact = field(1, b"batch:B1");
        fact.extend(field(2, b"step_completed"));
        fact.extend(field(3, br#"{"a":1}"#));
        let mut body = field(1, &env);
        body.extend(field(2, &fact));
        body
    };
    let path = "/bsfg.v1.BoundaryService/AppendFact";
    // Hand-written HTTP/1.1 over mutual TLS (ALPN http/1.1), bytes as given.
    let tls = zone.tls_config();
    let (status, body) = https_raw(
        zone.boundary_addr,
        &tls,
        "POST",
        path,
        "application/proto",
        &build(b"utf8-ok"),
    )
    .await
    .unwrap();
    assert_eq!(
        status,
        200,
        "valid hand-encoded request: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(zone.message_count("operational").await, 1);

    let (status, body) = https_raw(
        zone.boundary_addr,
        &tls,
        "POST",
        path,
        "application/proto",
        &build(b"bad-\xff\xfe"),
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("JSON error body, got {:?}", String::from_utf8_lossy(&body)));
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["code"], "invalid_argument", "{json}");
    assert_eq!(zone.message_count("operational").await, 1, "nothing stored");
}

/// A zone whose categories reserve more than JetStream may store refuses to
/// start at once, saying which setting to change (JetStream's error 10047
/// alone names neither the setting nor the fix, and retrying cannot help).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_jetstream_cannot_reserve_is_a_clear_start_up_error() {
    let mut zone = Zone::start(Opts::default()).await;
    zone.stop_node().await;
    let mut config = zone.config.clone();
    let mut huge = category("huge", &["huge"], false);
    huge.capacity_bytes = 1 << 60;
    config.categories.push(huge);
    let refused = bsfg::node::start(config)
        .await
        .err()
        .expect("the node refuses to start");
    let message = format!("{refused:#}");
    assert!(
        message.contains("capacity_bytes add up to 1073741824")
            && message.contains("max_file_store"),
        "{message}"
    );
    assert!(
        !message.contains("not ready after"),
        "refused at once, not after the start-up retries: {message}"
    );
    // The zone's own streams are untouched: the node starts with its config.
    zone.restart_node(false).await;
    assert_eq!(zone.message_count("operational").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_another_zones_nats_server() {
    // External url: plant-b pointed at plant-a's server.
    let zone = Zone::start(Opts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut other = zone.config.clone();
    other.zone = "plant-b".into();
    other.commit.key_index_path = Some(dir.path().join("plant-b.kix"));
    other.listen = "127.0.0.1:0".parse().unwrap();
    other.ops_listen = "127.0.0.1:0".parse().unwrap();
    let started = Instant::now();
    let refused = bsfg::node::start(other.clone())
        .await
        .err()
        .expect("the node refuses another zone's server");
    let message = format!("{refused:#}");
    assert!(
        message.contains("serves JetStream domain \"plant-a\", not this zone's \"plant-b\""),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once, not after the start-up retries"
    );

    // Embedded servers: two zones given the same [nats] port. The second
    // server cannot bind; its node must not use the first zone's store.
    let port = bsfg::ports::free_port().unwrap();
    let embedded = |zone: &str| {
        let mut c = other.clone();
        c.zone = zone.into();
        c.nats = bsfg::config::NatsConfig {
            url: None,
            port,
            store_dir: dir.path().join(zone).join("jetstream"),
            ..Default::default()
        };
        c.commit.key_index_path = Some(dir.path().join(format!("{zone}.kix")));
        c
    };
    let first = bsfg::node::start(embedded("plant-c"))
        .await
        .expect("the first zone starts");
    let started = Instant::now();
    let refused = bsfg::node::start(embedded("plant-d"))
        .await
        .err()
        .expect("the second zone refuses to start");
    let message = format!("{refused:#}");
    assert!(
        message.contains("exited at start") && message.contains("address already in use"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once"
    );
    drop(first);
}

/// Only configured consumer names become metric label values: refused
/// fetches and confirms with unknown or oversize names are counted under
/// `consumer="(unknown)"`. (80 refused calls with 1 MiB names used to add
/// 105 MiB to the node and 84 MB to /metrics; the gate now refuses such a
/// request as too large before it is read, so the names here stay within
/// the 64 KiB a fetch may have.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_values_never_become_metric_labels() {
    let zone = Zone::start(Opts::default()).await;
    let client = zone.client();
    client.fetch("mes", 10, 0, 0).await.unwrap();
    let baseline = zone.metrics_text().await.len();
    let long = "q".repeat(60 * 1024);
    let names = [long.as_str(), "nobody-zz", "bad name zz", &long[..65]];
    for name in names {
        for _ in 0..5 {
            assert!(client.fetch(name, 10, 0, 0).await.is_err());
            assert!(client.confirm(name, 1).await.is_err());
        }
    }
    let text = zone.metrics_text().await;
    assert!(
        !text.contains("qqqq") && !text.contains("zz"),
        "a request's consumer name became a label"
    );
    assert!(
        text.len() < baseline + 4096,
        "/metrics grew from {baseline} to {} bytes",
        text.len()
    );
    let unknown = ["consumer=\"(unknown)\"", "outcome=\"rejected\""];
    assert_eq!(
        metric_value(&text, "bsfg_fetch_requests_total", &unknown),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "bsfg_confirm_requests_total", &unknown),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "bsfg_fetch_requests_total",
            &["consumer=\"mes\"", "outcome=\"ok\""]
        ),
        Some(1.0),
        "configured names still label"
    );
}

/// Request values in log lines (the outcome line's key and message, the
/// audit line) are bounded: a 200 KiB message_id or subject, a 60 KiB
/// consumer name or object key (the most their requests may carry) makes
/// no line longer than a few KiB. (A 1 MiB message_id used to make a 1 MiB
/// log line.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_stay_short_whatever_the_request() {
    let zone = Zone::start(Opts {
        out_of_process: true,
        ..Opts::default()
    })
    .await;
    let client = zone.client();
    let long = "q".repeat(200 * 1024);
    let name = "q".repeat(60 * 1024);
    assert_rejected(
        client.append(envelope(&long), batch_fact(1)).await,
        "invalid_argument",
        "field_too_long",
    );
    let mut f = batch_fact(1);
    f.subject = format!("batch:{long}");
    assert_rejected(
        client.append(envelope(&mid("long-subject")), f).await,
        "invalid_argument",
        "bad_subject",
    );
    assert_rejected(
        client.fetch(&name, 10, 0, 0).await,
        "invalid_argument",
        "bad_consumer_name",
    );
    assert_rejected(
        client.confirm(&name, 1).await,
        "invalid_argument",
        "bad_consumer_name",
    );
    assert_rejected(
        put(&client, BUCKET, &name, b"x", "").await,
        "invalid_argument",
        "field_too_long",
    );
    assert!(get(&client, BUCKET, &name, 0).await.is_err());
    // Beyond what a request may carry: refused before it is read.
    let huge = "q".repeat(1024 * 1024);
    assert_rejected(
        client.append(envelope(&huge), batch_fact(1)).await,
        "invalid_argument",
        "fact_too_large",
    );
    // A certificate of the site CA that names no principal: audited.
    let stranger = zone.client_as("stranger.plant-a");
    assert_rejected(
        stranger.append(envelope(&long), batch_fact(1)).await,
        "permission_denied",
        "unknown_identity",
    );

    let refused = zone
        .log_lines_with(
            1,
            &[
                ("rpc", "AppendFact"),
                ("outcome", "rejected"),
                ("reason", "field_too_long"),
            ],
        )
        .await;
    let key = refused[0]["fields"]["key"].as_str().unwrap();
    assert!(
        key.starts_with("plant-a/qqq")
            && key.contains(&format!("…({} bytes, sha256 ", long.len() + 8)),
        "{key}"
    );
    zone.log_lines_with(
        1,
        &[
            ("rpc", "AppendFact"),
            ("outcome", "rejected"),
            ("reason", "bad_subject"),
        ],
    )
    .await;
    zone.log_lines_with(
        2,
        &[("outcome", "rejected"), ("reason", "bad_consumer_name")],
    )
    .await;
    zone.log_lines_with(
        1,
        &[
            ("outcome", "rejected"),
            ("reason", "field_too_long"),
            ("rpc", "PutObject"),
        ],
    )
    .await;
    zone.log_lines_with(
        1,
        &[("decision", "refused"), ("reason", "unknown_identity")],
    )
    .await;
    zone.log_lines_with(1, &[("rpc", "GetObject"), ("outcome", "rejected")])
        .await;
    let text = zone.log_text();
    let longest = text.lines().map(str::len).max().unwrap();
    assert!(
        longest < 6 * 1024,
        "a log line of {longest} bytes: {}",
        &text.lines().find(|l| l.len() == longest).unwrap()[..1024]
    );
}
