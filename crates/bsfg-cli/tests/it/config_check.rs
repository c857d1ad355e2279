//! `bsfg config check` over the reference site's four zone files: clean as
//! generated, and each deliberate mistake named with its file and key.

use bsfg::config::ZoneConfig;
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site::{self, ZONES, ZonePlacement};
use std::path::{Path, PathBuf};

/// The reference site's zone files in `dir` (certificates in `dir/certs`),
/// each zone edited by `edit` before it is written.
fn write_site(dir: &Path, edit: impl Fn(&str, &mut ZoneConfig)) -> Vec<PathBuf> {
    let certs = dir.join("certs");
    site::issue_site_pki(&certs, "check CA", 5).unwrap();
    let port = |z: &str| 17440 + ZONES.iter().position(|x| *x == z).unwrap() as u16;
    ZONES
        .iter()
        .map(|zone| {
            let zdir = dir.join(zone);
            let at = ZonePlacement {
                dir: &zdir,
                certs: &certs,
                port: port(zone),
                nats_url: None,
            };
            let mut config = site::reference_zone_config(zone, &at, &|p| {
                format!("https://127.0.0.1:{}", port(p))
            });
            edit(zone, &mut config);
            let path = dir.join(format!("{zone}.toml"));
            std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
            path
        })
        .collect()
}

fn check(files: &[PathBuf]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bsfg"))
        .args(["config", "check"])
        .args(files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

#[test]
fn the_reference_site_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_site(dir.path(), |_, _| {});
    let (code, text) = check(&files);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("4 zone file(s): 0 error(s), 0 warning(s)"),
        "{text}"
    );
}

#[test]
fn deliberate_mistakes_are_each_named_with_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_site(dir.path(), |zone, config| match zone {
        // A typo in the consumer idmz pulls from plant-a.
        "idmz" => {
            let u = config
                .upstreams
                .iter_mut()
                .find(|u| u.peer == "plant-a")
                .unwrap();
            u.consumer = "to-idmx".into();
        }
        // plant-b copied plant-a's boundary port.
        "plant-b" => config.listen.set_port(17442),
        // enterprise's peer may bring in nothing.
        "enterprise" => config.principals.iter_mut().for_each(|p| p.origins.clear()),
        _ => {}
    });
    std::fs::remove_file(
        dir.path()
            .join("certs")
            .join(format!("{}.pem", site::node_identity("plant-a"))),
    )
    .unwrap();
    let (code, text) = check(&files);
    eprintln!("{text}");
    assert_eq!(code, 1, "{text}");
    let line = |needles: &[&str]| {
        assert!(
            text.lines()
                .any(|l| l.starts_with("error: ") && needles.iter().all(|n| l.contains(n))),
            "no error line with {needles:?} in:\n{text}"
        )
    };
    line(&[
        "idmz.toml",
        "[[upstreams]] peer = \"plant-a\" consumer",
        "to-idmx",
        "fix: ",
    ]);
    line(&["plant-b.toml", "listen", "port 17442", "plant-a.toml"]);
    line(&["enterprise.toml", "origins", "no fact"]);
    line(&["plant-a.toml", "[tls] cert", "missing"]);
}

/// The README's "One zone on three machines" examples (`examples/ha/`):
/// the cluster member's file is valid to nats-server (`-t`), and the
/// node's file passes `bsfg config check` with its certificates issued.
#[test]
fn the_ha_examples_are_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ha");
    let nats = bsfg::node::nats_server::find_binary(None).unwrap();
    let out = std::process::Command::new(nats)
        .args(["-t", "-c"])
        .arg(example.join("nats-server.conf"))
        .env("BSFG_NATS_PASSWORD", "example")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nats-server -t: {text}");
    assert!(text.contains("is valid"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let node_file = dir.path().join("plant-a-1.toml");
    std::fs::copy(example.join("plant-a-1.toml"), &node_file).unwrap();
    let pki = Pki::init(&dir.path().join("certs"), "example CA", 5).unwrap();
    let mut node = Pki::node_request("plant-a-bsfg", 5);
    node.extra_sans.push("plant-a-1.example".into());
    pki.issue_with(&node).unwrap();
    let (code, text) = check(&[node_file]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1 zone file(s): 0 error(s), 0 warning(s)"),
        "{text}"
    );
}
