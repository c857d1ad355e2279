//! The HA demo's last step: every fact read back from the zone through
//! consumer `mes` (from whichever node writes now) and checked against
//! what was acknowledged: each acknowledged fact present exactly once, at
//! its acknowledged offset, in acknowledgement order, byte for byte.

use super::ha_writer::Ack;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::StoredFact;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long reading everything back may take.
const READ_BACK_WAIT_MAX: Duration = Duration::from_secs(60);
/// Facts per fetch.
const FETCH_FACTS_MAX: u32 = 1000;
/// How long a fetch waits for facts when there are none.
const FETCH_WAIT_MS: u32 = 500;
/// The wait before retrying a fetch that failed.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// The zone's facts whose message id starts with `prefix`, in offset
/// order: fetched (and confirmed) until at least `expected` are in and a
/// fetch brings nothing new. A redelivery of an offset already taken is
/// skipped.
pub(super) async fn read_back(
    client: &BsfgClient,
    prefix: &str,
    expected: usize,
) -> anyhow::Result<Vec<StoredFact>> {
    let mut read: Vec<StoredFact> = Vec::new();
    let deadline = Instant::now() + READ_BACK_WAIT_MAX;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read back {} of {expected} facts within {READ_BACK_WAIT_MAX:?}",
            read.len()
        );
        let r = match client.fetch("mes", FETCH_FACTS_MAX, 0, FETCH_WAIT_MS).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        let last = read.last().map_or(0, |f| f.offset);
        let new: Vec<StoredFact> = r.facts.into_iter().filter(|f| f.offset > last).collect();
        if r.last_delivered_offset > r.frontier {
            // Not confirming only costs a redelivery, which is skipped.
            let _ = client.confirm("mes", r.last_delivered_offset).await;
        }
        let done = new.is_empty();
        read.extend(new);
        let ours = read.iter().filter(|f| is_ours(f, prefix)).count();
        if done && ours >= expected {
            read.retain(|f| is_ours(f, prefix));
            return Ok(read);
        }
    }
}

fn is_ours(fact: &StoredFact, prefix: &str) -> bool {
    fact.envelope.message_id.starts_with(prefix)
}

/// Prints the tally and fails on anything missing, duplicated, stored
/// without an acknowledgement, out of order or changed.
pub(super) fn exactly_once(read: &[StoredFact], acked: &[Ack]) -> anyhow::Result<()> {
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for f in read {
        *copies.entry(f.envelope.message_id.as_str()).or_default() += 1;
    }
    let acked_ids: BTreeSet<&str> = acked
        .iter()
        .map(|a| a.envelope.message_id.as_str())
        .collect();
    let missing = acked_ids
        .iter()
        .filter(|m| !copies.contains_key(*m))
        .count();
    let duplicated = copies.values().filter(|n| **n > 1).count();
    let unacknowledged = copies.keys().filter(|m| !acked_ids.contains(*m)).count();
    let in_order = read.len() == acked.len()
        && read
            .iter()
            .zip(acked)
            .all(|(f, a)| f.offset == a.offset && f.envelope.message_id == a.envelope.message_id);
    let identical = read.iter().zip(acked).all(|(f, a)| same_bytes(f, a));
    println!(
        "  acknowledged {}, read back {}: {missing} missing, {duplicated} duplicated, \
         {unacknowledged} stored without an acknowledgement; order {}; content {}",
        acked.len(),
        read.len(),
        if in_order {
            "as acknowledged"
        } else {
            "BROKEN"
        },
        if identical {
            "byte for byte"
        } else {
            "CHANGED"
        },
    );
    if missing > 0 || duplicated > 0 || unacknowledged > 0 || !in_order || !identical {
        anyhow::bail!("exactly-once check failed");
    }
    println!("  exactly-once check passed: every acknowledged fact once, in order, byte for byte");
    Ok(())
}

/// What was read back is what was sent: envelope and fact, byte for byte.
fn same_bytes(read: &StoredFact, ack: &Ack) -> bool {
    let (e, f) = (&*read.envelope, &*read.fact);
    e.message_id == ack.envelope.message_id
        && e.from_zone == ack.envelope.from_zone
        && e.to_zone == ack.envelope.to_zone
        && e.produced_at_unix_ms == ack.envelope.produced_at_unix_ms
        && f.subject.as_bytes() == ack.fact.subject.as_bytes()
        && f.predicate.as_bytes() == ack.fact.predicate.as_bytes()
        && f.object_json.as_bytes() == ack.fact.object_json.as_bytes()
}
