//! The single-zone run's generated section of BENCHMARKS.md.

use std::path::Path;

const BEGIN: &str = "<!-- bsfg-bench results: begin (generated, do not edit) -->";
const END: &str = "<!-- bsfg-bench results: end -->";

/// Replaces the generated section of `out`, keeping everything else.
pub(crate) fn write_results(out: &Path, results: &str) -> anyhow::Result<()> {
    let existing =
        std::fs::read_to_string(out).unwrap_or_else(|_| "# BSFG benchmarks\n\n".to_string());
    let section = format!("{BEGIN}\n{results}{END}\n");
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &existing[..b],
            section,
            &existing[e + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{}", existing.trim_end(), "\n".to_string() + &section),
    };
    std::fs::write(out, text)?;
    Ok(())
}
