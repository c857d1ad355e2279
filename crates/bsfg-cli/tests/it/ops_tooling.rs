//! The tools operators already run: the Prometheus alert rules
//! (`deploy/prometheus/`) and the Grafana dashboard (`deploy/grafana/`).
//! The rules pass `promtool check rules` and their own unit tests
//! (`promtool test rules`); every metric the rules and the dashboard name
//! is one a node exports (`Metrics::sample_names`, checked against the
//! node's /metrics text in the node's own tests).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path)
}

/// `promtool`, from Debian's `prometheus` package (`scripts/setup.sh`
/// installs it); None, the reason printed, where it is missing.
fn promtool() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!("SKIPPED: promtool not found (scripts/setup.sh installs Debian's prometheus)");
    }
    found
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    for args in [
        ["check", "rules", "bsfg.rules.yml"],
        ["test", "rules", "bsfg.rules.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `bsfg_…` name in `text`.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bsfg_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_exported_by_a_node() {
    let exported: BTreeSet<String> = bsfg::metrics::Metrics::new()
        .sample_names()
        .into_iter()
        .collect();
    assert!(
        exported.contains("bsfg_append_requests_total"),
        "{exported:?}"
    );
    let rules = std::fs::read_to_string(deploy("prometheus/bsfg.rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(deploy("grafana/bsfg-zone.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert_eq!(parsed["uid"], "bsfg-zone");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(
        panels
            .iter()
            .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())),
        "every panel queries something"
    );
    for (file, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        let referenced = referenced_names(text);
        assert!(referenced.len() >= 10, "{file}: {referenced:?}");
        let unknown: Vec<&String> = referenced.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics no node exports: {unknown:?}"
        );
    }
}
