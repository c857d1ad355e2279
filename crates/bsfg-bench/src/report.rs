//! The single-zone run's generated section of BENCHMARKS.md.

use std::path::Path;

const BEGIN: &str = "<!-- bsfg-bench results: begin (generated, do not edit) -->";
const END: &str = "<!-- bsfg-bench results: end -->";

/// Replaces the single-zone section of `out`, keeping everything else.
pub(crate) fn write_results(out: &Path, results: &str) -> anyhow::Result<()> {
    write_section(out, BEGIN, END, results)
}

/// Replaces the section of `out` between the `begin` and `end` marker lines
/// (appends one if either is missing), keeping everything else.
pub(crate) fn write_section(
    out: &Path,
    begin: &str,
    end: &str,
    results: &str,
) -> anyhow::Result<()> {
    let existing =
        std::fs::read_to_string(out).unwrap_or_else(|_| "# BSFG benchmarks\n\n".to_string());
    let section = format!("{begin}\n{results}{end}\n");
    let text = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &existing[..b],
            section,
            &existing[e + end.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{}", existing.trim_end(), section),
    };
    std::fs::write(out, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_between_its_markers_or_appended() {
        let dir = std::env::temp_dir().join(format!("bsfg-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("B.md");
        std::fs::write(&out, "# T\n\nintro\n").unwrap();
        write_section(&out, "<!-- b -->", "<!-- e -->", "one\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "# T\n\nintro\n\n<!-- b -->\none\n<!-- e -->\n"
        );
        std::fs::write(&out, "# T\n<!-- b -->\nold\n<!-- e -->\n\nafter\n").unwrap();
        write_section(&out, "<!-- b -->", "<!-- e -->", "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "# T\n<!-- b -->\nnew\n<!-- e -->\nafter\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
