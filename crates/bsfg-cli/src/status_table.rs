//! The status table `bsfg status` prints and the demo shows: a zone's
//! writer role and lease, its store's servers with their replicas' lag,
//! links (mode, frontier, backlog, lag, last confirmation) and consumers,
//! one row each, readable at a glance.

use bsfg_proto::bsfg::v1::{GetStatusResponse, HaStatus, LinkStatus};

/// How much of a link's last error a status row shows: enough for the code,
/// the reason and the path or peer it names.
const LAST_ERROR_CHARS_MAX: usize = 240;

/// A status table a person can read at a glance.
pub fn render_status(s: &GetStatusResponse) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "zone {}", s.zone);
    let skew_max = s.clock_skew_max_seconds;
    if skew_max > 0.0 && s.store_clock_skew_seconds.abs() > skew_max {
        let _ = writeln!(
            out,
            "  clock: the store's clock is {:+.1} s from this node's (clock_skew_max {skew_max} s): fix the time source",
            s.store_clock_skew_seconds
        );
    }
    if let Some(ha) = s.ha.as_option() {
        render_ha(&mut out, ha);
    }
    if !s.links.is_empty() {
        render_links(&mut out, &s.links, skew_max);
    }
    for c in &s.consumers {
        let _ = writeln!(
            out,
            "  consumer {:<12} {:<12} frontier {:>8} delivered {:>8} unconfirmed {:>6} pending {:>8}",
            c.name, c.category, c.frontier, c.delivered_max, c.unconfirmed, c.pending
        );
    }
    out
}

/// The writer role, the lease and, for a store of several servers, a row
/// per server with its replicas' lag by category (`*` marks the stream's
/// leader).
fn render_ha(out: &mut String, ha: &HaStatus) {
    use std::fmt::Write;
    let mut line = format!("  writer: {}", ha.role);
    if !ha.node_id.is_empty() {
        let _ = write!(line, " (node {})", ha.node_id);
    }
    if ha.role != "single" {
        let active = match ha.lease_holder_node_id.as_str() {
            "" => "unknown".to_string(),
            id => format!("{id} {}", ha.lease_holder_url),
        };
        let _ = write!(line, ", active node {active}");
        let _ = match ha.lease_renewal_age_seconds {
            never if never < 0.0 => write!(line, "; this node never held the lease"),
            seconds => write!(line, "; this node renewed the lease {seconds:.1} s ago"),
        };
    }
    let _ = writeln!(out, "{line}");
    // One server (the embedded one) is the leader of everything: no rows.
    if ha.servers.len() < 2 {
        return;
    }
    let _ = writeln!(
        out,
        "  {:<16} {:<8} replica lag by category (read {:.1} s ago)",
        "store server", "current", ha.servers_read_age_seconds
    );
    for server in &ha.servers {
        let lags: Vec<String> = server
            .streams
            .iter()
            .map(|r| {
                let mark = if r.leader { "*" } else { "" };
                let state = if r.offline { " offline" } else { "" };
                format!("{}{mark} {}{state}", r.category, r.lag)
            })
            .collect();
        let current = if server.current { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "  {:<16} {current:<8} {}",
            server.name,
            lags.join(", ")
        );
    }
}

/// A row per link (and its clock or last error when they matter).
fn render_links(out: &mut String, links: &[LinkStatus], skew_max: f64) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  {:<14} {:<15} {:>10} {:>9} {:>9} {:>12} {:>10} {:>8}",
        "link (pull)",
        "mode",
        "frontier",
        "backlog",
        "lag s",
        "confirmed s",
        "replicated",
        "refused"
    );
    for l in links {
        let age = if l.last_confirm_age_seconds < 0.0 {
            "never".to_string()
        } else {
            format!("{:.1}", l.last_confirm_age_seconds)
        };
        // Cut off, the backlog is the last one the peer reported: at least that.
        let backlog = if l.mode == "autonomous" {
            format!(">={}", l.backlog)
        } else {
            l.backlog.to_string()
        };
        let _ = writeln!(
            out,
            "  {:<14} {:<15} {:>10} {:>9} {:>9.3} {:>12} {:>10} {:>8}",
            l.peer,
            l.mode,
            l.remote_frontier,
            backlog,
            l.lag_seconds,
            age,
            l.facts_replicated,
            l.facts_refused
        );
        if skew_max > 0.0 && l.peer_clock_skew_seconds.abs() > skew_max {
            let _ = writeln!(
                out,
                "    peer clock: {:+.1} s from this node's (clock_skew_max {skew_max} s)",
                l.peer_clock_skew_seconds
            );
        }
        if l.mode != "normal" && !l.last_error.is_empty() {
            let error: String = l.last_error.chars().take(LAST_ERROR_CHARS_MAX).collect();
            let _ = writeln!(out, "    last error: {error}");
        }
    }
}
