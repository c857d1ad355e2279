//! `bsfg config check FILE…`: each zone file loaded and checked alone (as
//! `bsfg serve` does before it starts), then the files checked together as
//! one site (`bsfg::config::site_check`): links, ports, routes, categories
//! and certificates. Every finding names the file, the key and the fix.

use bsfg::config::ZoneConfig;
use bsfg::config::site_check::{self, Finding, Severity, ZoneFile};
use std::path::PathBuf;

/// The check found errors (exit code 1).
#[derive(Debug)]
pub struct ChecksFailed(pub usize);

impl std::fmt::Display for ChecksFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error(s) in the site's configuration", self.0)
    }
}

impl std::error::Error for ChecksFailed {}

/// Prints every finding, one per line, errors first; fails with
/// [`ChecksFailed`] if there is an error.
pub fn run(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut findings = Vec::new();
    let mut loaded = Vec::new();
    for path in files {
        match ZoneConfig::load(path) {
            Ok(config) => loaded.push((path.clone(), config)),
            Err(e) => findings.push(Finding {
                severity: Severity::Error,
                file: path.clone(),
                key: "(the file)".into(),
                problem: format!("{e:#}"),
                fix: "correct it; `bsfg serve` refuses to start with it".into(),
            }),
        }
    }
    let zones: Vec<ZoneFile<'_>> = loaded
        .iter()
        .map(|(path, config)| ZoneFile { path, config })
        .collect();
    findings.extend(site_check::check_site(&zones));
    for zone in &zones {
        findings.extend(site_check::check_certificates(zone, &zones));
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.file.cmp(&b.file)));
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    println!(
        "{} zone file(s): {errors} error(s), {warnings} warning(s)",
        files.len()
    );
    if errors > 0 {
        return Err(ChecksFailed(errors).into());
    }
    Ok(())
}
