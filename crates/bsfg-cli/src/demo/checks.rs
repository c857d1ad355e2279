//! Phase 8 of the site demo: every fact appended for enterprise arrived
//! there exactly once, in per-origin order.

use bsfg_proto::bsfg::v1::StoredFact;
use std::collections::BTreeMap;

/// Checks `at_enterprise` against what plant-a sent up (`up_ids`) and what
/// the plants appended during the cut (`lot_ids`), prints the tally and
/// fails on anything missing, duplicated or out of order.
pub(super) fn exactly_once(
    at_enterprise: &[StoredFact],
    up_ids: &[String],
    lot_ids: &BTreeMap<&str, Vec<String>>,
) -> anyhow::Result<()> {
    let mut expected: Vec<(String, String)> = up_ids
        .iter()
        .map(|m| ("plant-a".to_string(), m.clone()))
        .collect();
    for (plant, ids) in lot_ids {
        expected.extend(ids.iter().map(|m| (plant.to_string(), m.clone())));
    }
    let mut copies: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in at_enterprise {
        *copies
            .entry((f.envelope.from_zone.clone(), f.envelope.message_id.clone()))
            .or_default() += 1;
    }
    let missing = expected.iter().filter(|k| !copies.contains_key(*k)).count();
    let duplicated = copies.values().filter(|n| **n > 1).count();
    let mut ordered = true;
    for origin in ["plant-a", "plant-b"] {
        let offsets: Vec<u64> = at_enterprise
            .iter()
            .filter(|f| f.provenance.origin_zone == origin)
            .map(|f| f.provenance.origin_offset)
            .collect();
        ordered &= offsets.windows(2).all(|w| w[0] < w[1]);
    }
    println!(
        "  expected {} (plant-a {}, plant-b {}); at enterprise: {} present, {missing} missing, {duplicated} duplicated; per-origin order {}",
        expected.len(),
        up_ids.len() + lot_ids["plant-a"].len(),
        lot_ids["plant-b"].len(),
        expected.len() - missing,
        if ordered { "preserved" } else { "BROKEN" }
    );
    if missing > 0 || duplicated > 0 || !ordered {
        anyhow::bail!("delivery check failed");
    }
    Ok(())
}
