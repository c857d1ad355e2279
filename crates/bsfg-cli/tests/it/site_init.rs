//! `bsfg site init` from the reference description: the files it writes are
//! the ones committed in `examples/site/` (so the example shows what the
//! command does today), and they pass `bsfg config check` together with
//! the PKI it issued.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bsfg(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bsfg {args:?}: {text}");
    text
}

#[test]
fn site_init_writes_the_committed_example_and_it_passes_the_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/site");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("site");
    let topology = example.join("site.toml");
    bsfg(&[
        "site",
        "init",
        "--topology",
        topology.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let zones = ["enterprise", "idmz", "plant-a", "plant-b"];
    for zone in zones {
        for file in ["zone.toml", "README.md", &format!("bsfg-{zone}.service")] {
            let written = std::fs::read_to_string(out.join(zone).join(file)).unwrap();
            let committed = std::fs::read_to_string(example.join(zone).join(file))
                .unwrap_or_else(|e| panic!("examples/site/{zone}/{file}: {e}"));
            assert_eq!(
                written, committed,
                "examples/site/{zone}/{file} is not what `bsfg site init` writes now; \
                 regenerate it: bsfg site init --topology examples/site/site.toml --out examples/site"
            );
        }
    }
    for cert in [
        "ca.pem",
        "plant-a-bsfg.pem",
        "plant-a-bsfg.key",
        "app.enterprise.pem",
    ] {
        assert!(out.join("certs").join(cert).exists(), "{cert}");
    }
    let files: Vec<PathBuf> = zones
        .iter()
        .map(|z| out.join(z).join("zone.toml"))
        .collect();
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let checked = bsfg(&args);
    assert!(
        checked.contains("4 zone file(s): 0 error(s), 0 warning(s)"),
        "{checked}"
    );
}
