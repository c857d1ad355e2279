//! The Debian package (`scripts/package-deb.sh`): built from this test's
//! binary, unpacked into a throwaway root (`dpkg -x`), checked for its
//! files and unit, and one zone started from what it installs, following
//! its example file's instructions: certificates issued, the file checked,
//! the node serving with the packaged nats-server, a fact appended.

use crate::harness::http_raw;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program args`, which must succeed; returns its stdout.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package built from this test's binary and unpacked under `root`.
fn build_and_unpack(dir: &Path, root: &Path) {
    let script = repo().join("scripts/package-deb.sh");
    let out = dir.join("out");
    let bin = env!("CARGO_BIN_EXE_bsfg");
    let args = [
        "--bin",
        bin,
        "--out",
        out.to_str().unwrap(),
        "--compress",
        "none",
    ];
    let deb = run(&script, &args).trim().to_string();
    let info = run(Path::new("dpkg-deb"), &["--info", &deb]);
    assert!(info.contains("Package: bsfg"), "{info}");
    run(Path::new("dpkg"), &["-x", &deb, root.to_str().unwrap()]);
}

#[tokio::test]
async fn the_package_installs_a_unit_and_a_zone_that_starts_from_its_docs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    build_and_unpack(dir.path(), &root);
    let bsfg = root.join("usr/bin/bsfg");
    for file in ["usr/bin/bsfg", "usr/lib/bsfg/nats-server"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(root.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "{file} is executable");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/bsfg@.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/bsfg serve --config /etc/bsfg/%i.toml"),
        "{unit}"
    );
    assert!(
        unit.contains("StateDirectory=bsfg/%i") && unit.contains("User=bsfg"),
        "{unit}"
    );

    // The example, as an operator would use it, moved into the throwaway
    // root: store and ports of this test, the packaged nats-server.
    let etc = root.join("etc/bsfg");
    let example = std::fs::read_to_string(etc.join("plant-a.toml.example")).unwrap();
    let (listen, ops) = (free_port(), free_port());
    let zone_file = example
        .replace("127.0.0.1:7443", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{ops}"))
        .replace("port = 4222", "port = 0")
        .replace(
            "/usr/lib/bsfg/nats-server",
            root.join("usr/lib/bsfg/nats-server").to_str().unwrap(),
        )
        .replace(
            "/var/lib/bsfg/plant-a",
            dir.path().join("var/plant-a").to_str().unwrap(),
        );
    std::fs::write(etc.join("plant-a.toml"), zone_file).unwrap();
    let certs = etc.join("certs");
    let certs = certs.to_str().unwrap();
    run(&bsfg, &["certs", "init", "--dir", certs]);
    let node = [
        "certs",
        "issue",
        "--dir",
        certs,
        "--name",
        "plant-a-bsfg",
        "--san",
        "127.0.0.1",
    ];
    run(&bsfg, &node);
    run(
        &bsfg,
        &["certs", "issue", "--dir", certs, "--name", "mes.plant-a"],
    );
    let config = etc.join("plant-a.toml");
    let checked = run(&bsfg, &["config", "check", config.to_str().unwrap()]);
    assert!(checked.contains("0 error(s)"), "{checked}");

    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut serve = tokio::process::Command::new(&bsfg)
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ops_addr = format!("127.0.0.1:{ops}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        http_raw(ops_addr, "GET", "/healthz", "text/plain", b"").await,
        Ok((200, _))
    ) {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        assert!(serve.try_wait().unwrap().is_none(), "serve exited: {log}");
        assert!(Instant::now() < deadline, "not healthy in 30 s: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("https://127.0.0.1:{listen}");
    let pem = |name: &str| format!("{certs}/{name}");
    let append = [
        "append",
        "--url",
        &url,
        "--ca",
        &pem("ca.pem"),
        "--cert",
        &pem("mes.plant-a.pem"),
        "--tls-key",
        &pem("mes.plant-a.key"),
        "--from-zone",
        "plant-a",
        "--to-zone",
        "plant-a",
        "--subject",
        "batch:PlantA/B1",
        "--predicate",
        "step_completed",
        "--json",
        "{\"n\":1}",
    ];
    let appended = run(&bsfg, &append);
    assert!(appended.contains("\"offset\""), "{appended}");
    serve.kill().await.unwrap();
}

fn free_port() -> u16 {
    bsfg::ports::free_port().unwrap()
}
