//! The status table `bsfg status` prints and the demo shows: a zone's
//! links (mode, frontier, backlog, lag, last confirmation) and consumers,
//! one row each, readable at a glance.

/// How much of a link's last error a status row shows: enough for the code,
/// the reason and the path or peer it names.
const LAST_ERROR_CHARS_MAX: usize = 240;

/// A status table a person can read at a glance.
pub fn render_status(s: &bsfg_proto::bsfg::v1::GetStatusResponse) -> String {
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
    if !s.links.is_empty() {
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
        for l in &s.links {
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
    for c in &s.consumers {
        let _ = writeln!(
            out,
            "  consumer {:<12} {:<12} frontier {:>8} delivered {:>8} unconfirmed {:>6} pending {:>8}",
            c.name, c.category, c.frontier, c.delivered_max, c.unconfirmed, c.pending
        );
    }
    out
}
