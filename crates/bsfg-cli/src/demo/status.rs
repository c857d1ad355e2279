//! What the site demo prints as tables: the partition table, and
//! `bsfg status` of the zones.

use super::partition::Counters;
use super::site::DemoSite;
use bsfg_testkit::site::ZONES;
use std::sync::atomic::Ordering;

/// The two header lines of the table printed while the link is cut.
pub(super) fn print_partition_header() {
    println!(
        "  {:<8} {:>9} {:>9} {:>14} {:>13}   enterprise ← idmz link",
        "", "plant-a", "plant-b", "idmz received", "queued at"
    );
    println!(
        "  {:<8} {:>9} {:>9} {:>14} {:>13}",
        "", "appended", "appended", "from plants", "idmz for ent."
    );
}

/// One row of the partition table: appends per plant, what idmz received
/// and holds for enterprise, and enterprise's link to idmz.
pub(super) async fn print_partition_row(
    site: &DemoSite,
    counters: &Counters,
) -> anyhow::Result<()> {
    let idmz = site.app("idmz").status().await?;
    let received: u64 = idmz
        .links
        .iter()
        .filter(|l| l.peer.starts_with("plant-"))
        .map(|l| l.facts_replicated)
        .sum();
    let link = site.link("enterprise", "idmz").await?;
    let age = if link.last_confirm_age_seconds < 0.0 {
        "never".into()
    } else {
        format!("{:.1} s", link.last_confirm_age_seconds)
    };
    println!(
        "  {} {:>9} {:>9} {:>14} {:>13}   {}, last confirmation {age} ago",
        site.t(),
        counters["plant-a"].load(Ordering::SeqCst),
        counters["plant-b"].load(Ordering::SeqCst),
        received,
        site.queued_at_idmz_for_enterprise().await?,
        link.mode
    );
    Ok(())
}

/// `bsfg status` of enterprise and idmz while the link is cut.
pub(super) async fn print_partition_status(site: &DemoSite) -> anyhow::Result<()> {
    println!("  {} status during the partition (bsfg status):", site.t());
    print!(
        "{}",
        indent(&crate::status_table::render_status(
            &site.app("enterprise").status().await?
        ))
    );
    print!(
        "{}",
        indent(&crate::status_table::render_status(
            &site.app("idmz").status().await?
        ))
    );
    println!(
        "  enterprise's link to idmz is autonomous; idmz keeps pulling the plants; {} facts wait at idmz for enterprise.",
        site.queued_at_idmz_for_enterprise().await?
    );
    Ok(())
}

/// Phase 9: `bsfg status` of every zone.
pub(super) async fn print_all_zones(site: &DemoSite) -> anyhow::Result<()> {
    println!(
        "  link (pull) = the neighbour this zone pulls from; frontier = what the neighbour has confirmed for it;"
    );
    println!(
        "  backlog = facts still waiting at the neighbour; replicated = facts this zone appended from that link."
    );
    for z in ZONES {
        print!(
            "{}",
            crate::status_table::render_status(&site.app(z).status().await?)
        );
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
