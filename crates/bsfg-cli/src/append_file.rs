//! `bsfg append-file`: appends the facts of a JSON-lines file (or stdin), in
//! file order, through AppendFacts.
//!
//! Each line is an AppendFact request in proto JSON (`{"envelope": {...},
//! "fact": {...}}`; other fields are ignored, so a line `bsfg fetch`
//! printed is one); its `message_id` is required, so running the same file again
//! appends nothing twice (stored facts answer `duplicate`). A missing
//! `produced_at_unix_ms` is set to now. The file is read one request's
//! worth at a time ([`FACTS_PER_REQUEST`] lines, [`REQUEST_BYTES_MAX`]
//! bytes), so its size does not matter. Facts refused for a transient
//! reason (`unavailable`, `deadline_exceeded`) are sent again, in order,
//! before the next lines; a line that is not a request stops the run
//! before anything of its request is sent. One JSON line per fact on
//! stdout; exit code 1 if a fact was refused, 2 if the file is malformed.

use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::{AppendFactRequest, Envelope, Fact, FactRefusal};
use std::io::BufRead;
use std::time::Duration;

/// Facts per AppendFacts request (the node takes up to 1,000).
const FACTS_PER_REQUEST: usize = 500;
/// Bytes of lines per request: under the node's 1 MiB message bound.
const REQUEST_BYTES_MAX: usize = 768 * 1024;
/// Sends of a transiently refused fact before it is reported refused.
const TRIES_MAX: u32 = 10;

/// How the run ended.
pub enum Outcome {
    /// Every fact stored (or found stored).
    Stored,
    /// Some fact refused (reported on its line).
    Refused,
}

/// Appends the lines of `input` through `client`, printing each fact's
/// answer; `Err` for a line that is not a request (with its number).
pub async fn run(client: &BsfgClient, input: impl BufRead) -> anyhow::Result<Outcome> {
    let mut lines = input.lines().enumerate();
    let mut refused = false;
    loop {
        let chunk = read_chunk(&mut lines)?;
        if chunk.is_empty() {
            break;
        }
        refused |= send_chunk(client, chunk).await?;
    }
    Ok(if refused {
        Outcome::Refused
    } else {
        Outcome::Stored
    })
}

/// The next request's worth of `(line number, fact)`.
fn read_chunk(
    lines: &mut impl Iterator<Item = (usize, std::io::Result<String>)>,
) -> anyhow::Result<Vec<(usize, (Envelope, Fact))>> {
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    while chunk.len() < FACTS_PER_REQUEST && bytes < REQUEST_BYTES_MAX {
        let Some((i, line)) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        bytes += line.len();
        chunk.push((i + 1, parse_line(i + 1, &line)?));
    }
    Ok(chunk)
}

fn parse_line(number: usize, line: &str) -> anyhow::Result<(Envelope, Fact)> {
    let request: AppendFactRequest = serde_json::from_str(line).map_err(|e| {
        anyhow::anyhow!("line {number}: not an AppendFact request in proto JSON ({e}); nothing of its request was sent")
    })?;
    let mut envelope = request.envelope.into_option().unwrap_or_default();
    let fact = request.fact.into_option().unwrap_or_default();
    if envelope.message_id.is_empty() {
        anyhow::bail!(
            "line {number}: envelope.messageId is required (it makes a second run append nothing twice); nothing of its request was sent"
        );
    }
    if envelope.produced_at_unix_ms == 0 {
        envelope.produced_at_unix_ms = bsfg::store::now_unix_ms();
    }
    Ok((envelope, fact))
}

/// Sends one request's facts until each is answered for good; prints each.
/// True if one was refused.
async fn send_chunk(
    client: &BsfgClient,
    mut pending: Vec<(usize, (Envelope, Fact))>,
) -> anyhow::Result<bool> {
    let mut refused = false;
    for attempt in 1..=TRIES_MAX {
        let facts = pending.iter().map(|(_, f)| f.clone()).collect();
        let answers = match client.append_facts(facts).await {
            Ok(answers) => answers,
            Err(e) if attempt < TRIES_MAX && is_transient_code(e.code.as_str()) => {
                pause(attempt).await;
                continue;
            }
            Err(e) => anyhow::bail!("line {}: {e}", pending[0].0),
        };
        let mut again = Vec::new();
        for ((number, fact), answer) in pending.into_iter().zip(answers) {
            match answer {
                Err(r) if attempt < TRIES_MAX && is_transient_code(&r.code) => {
                    again.push((number, fact))
                }
                answer => refused |= print_answer(number, &fact.0, answer),
            }
        }
        if again.is_empty() {
            return Ok(refused);
        }
        pending = again;
        pause(attempt).await;
    }
    unreachable!("the last attempt answers every fact")
}

/// Prints one fact's answer as a JSON line; true if it was refused.
fn print_answer(
    number: usize,
    envelope: &Envelope,
    answer: Result<bsfg_proto::bsfg::v1::AppendFactResponse, FactRefusal>,
) -> bool {
    let id = &envelope.message_id;
    let (line, refused) = match answer {
        Ok(a) => (
            serde_json::json!({"line": number, "message_id": id, "offset": a.offset,
                "duplicate": a.duplicate, "category": a.category}),
            false,
        ),
        Err(r) => (
            serde_json::json!({"line": number, "message_id": id, "code": r.code,
                "reason": r.reason, "message": r.message}),
            true,
        ),
    };
    println!("{line}");
    refused
}

fn is_transient_code(code: &str) -> bool {
    matches!(code, "unavailable" | "deadline_exceeded")
}

async fn pause(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_a_request_in_proto_json_with_a_message_id() {
        let line = r#"{"envelope": {"messageId": "m-1", "fromZone": "plant-a", "toZone": "idmz",
            "producedAtUnixMs": "1700000000000"}, "fact": {"subject": "batch:B1",
            "predicate": "step_completed", "objectJson": "{}"}}"#;
        let (envelope, fact) = parse_line(1, &line.replace('\n', " ")).unwrap();
        assert_eq!(envelope.message_id, "m-1");
        assert_eq!(envelope.produced_at_unix_ms, 1_700_000_000_000);
        assert_eq!(fact.subject, "batch:B1");
        // A fact as `bsfg fetch` prints it (offset, category, provenance
        // besides envelope and fact) is a line too.
        let fetched = r#"{"offset": "7", "category": "operational", "envelope": {"messageId": "m-2"}, "fact": {"subject": "batch:B2"}, "provenance": {"originZone": "plant-a"}}"#;
        let (envelope, _) = parse_line(2, fetched).unwrap();
        assert_eq!(envelope.message_id, "m-2");
        assert!(envelope.produced_at_unix_ms > 0, "set to now when missing");
        let e = parse_line(3, r#"{"fact": {}}"#).unwrap_err().to_string();
        assert!(
            e.starts_with("line 3: envelope.messageId is required"),
            "{e}"
        );
        let e = parse_line(4, "not json").unwrap_err().to_string();
        assert!(e.starts_with("line 4: not an AppendFact request"), "{e}");
    }
}
