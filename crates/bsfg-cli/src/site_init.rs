//! `bsfg site init --topology site.toml --out DIR`: everything an operator
//! deploys for a site, from its one description (`bsfg_testkit::topology`):
//!
//! * `DIR/certs/`: a development PKI — the site CA, each zone's node
//!   certificate (`<zone>-bsfg`, also for its host, localhost and
//!   127.0.0.1) and an application certificate per zone (`app.<zone>`);
//!   for a real CA, issue certificates under the same names instead;
//! * `DIR/<zone>/zone.toml`: the zone's configuration, its paths relative
//!   to itself (certificates in `../certs`, store and spool in `data/`);
//! * `DIR/<zone>/bsfg-<zone>.service`: a systemd unit running it from
//!   `--install-dir` (default `/etc/bsfg/site`), the directory `DIR` is
//!   copied to;
//! * `DIR/<zone>/README.md`: how to start the zone, what it talks to.
//!
//! The zone files are the same the demo runs (`bsfg_testkit::site`), with
//! the description's hosts and ports.

use bsfg_testkit::pki::Pki;
use bsfg_testkit::site::{self, ZonePlacement};
use bsfg_testkit::topology::{Topology, ZoneSpec};
use std::path::{Path, PathBuf};

/// How long the development certificates are valid.
const CERTIFICATE_DAYS: i64 = 397;

/// Writes the site described in `topology` into `out`.
pub fn run(topology: &Path, out: &Path, install_dir: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(topology)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", topology.display()))?;
    let site =
        Topology::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", topology.display()))?;
    issue_pki(&site, &out.join("certs"))?;
    for zone in &site.zones {
        let dir = out.join(&zone.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("zone.toml"), zone_file(&site, zone)?)?;
        let unit = format!("bsfg-{}.service", zone.name);
        std::fs::write(dir.join(&unit), systemd_unit(zone, install_dir))?;
        std::fs::write(dir.join("README.md"), zone_readme(&site, zone, install_dir))?;
        println!(
            "{}: {}/zone.toml, {unit}, README.md",
            zone.name,
            dir.display()
        );
    }
    println!("certificates: {}", out.join("certs").display());
    println!(
        "check: bsfg config check {}",
        site.zones
            .iter()
            .map(|z| out.join(&z.name).join("zone.toml").display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

fn issue_pki(site: &Topology, certs: &Path) -> anyhow::Result<()> {
    let pki = Pki::open_or_init(certs, "BSFG site CA", CERTIFICATE_DAYS)?;
    for zone in &site.zones {
        let mut node = Pki::node_request(&site::node_identity(&zone.name), CERTIFICATE_DAYS);
        if !node.extra_sans.contains(&zone.host) {
            node.extra_sans.push(zone.host.clone());
        }
        pki.issue_with(&node)?;
        pki.issue(&site::app_identity(&zone.name), CERTIFICATE_DAYS)?;
    }
    Ok(())
}

/// The zone's configuration file: the site's zone configuration with
/// paths relative to the file and the description's addresses.
fn zone_file(site: &Topology, zone: &ZoneSpec) -> anyhow::Result<String> {
    let at = ZonePlacement {
        dir: Path::new("data"),
        certs: Path::new("../certs"),
        port: zone.port,
        nats_url: None,
    };
    let peer_url = |peer: &str| {
        let p = site.zone(peer).expect("a neighbour is a zone of the site");
        format!("https://{}:{}", p.host, p.port)
    };
    let mut config = site::zone_config(site, &zone.name, &at, &peer_url);
    config.listen = format!("{}:{}", zone.host, zone.port)
        .parse()
        .map_err(|e| {
            anyhow::anyhow!(
                "zone {}: host {:?} is not an IP address: {e}",
                zone.name,
                zone.host
            )
        })?;
    config.ops_listen = ([127, 0, 0, 1], zone.ops_port).into();
    config.nats.port = zone.nats_port;
    config.check()?;
    Ok(format!(
        "# Zone {} of the site, written by `bsfg site init`. Paths are relative\n\
         # to this file. Start it with: bsfg serve --config zone.toml\n\n{}",
        zone.name,
        toml::to_string(&config)?
    ))
}

fn systemd_unit(zone: &ZoneSpec, install_dir: &Path) -> String {
    let dir = install_dir.join(&zone.name);
    format!(
        "# The BSFG node of zone {name}, from {dir}/zone.toml.\n\
         # Install: copy the site directory to {install}, then\n\
         #   cp {dir}/bsfg-{name}.service /etc/systemd/system/ && systemctl enable --now bsfg-{name}\n\
         [Unit]\nDescription=BSFG zone node {name}\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=simple\nUser=bsfg\nGroup=bsfg\nWorkingDirectory={dir}\n\
         ExecStartPre=/usr/bin/bsfg config check {dir}/zone.toml\n\
         ExecStart=/usr/bin/bsfg serve --config {dir}/zone.toml\n\
         Restart=on-failure\nRestartSec=2s\nLimitNOFILE=65536\nNoNewPrivileges=yes\n\
         ProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nReadWritePaths={dir}/data\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        name = zone.name,
        dir = dir.display(),
        install = install_dir.display(),
    )
}

fn zone_readme(site: &Topology, zone: &ZoneSpec, install_dir: &Path) -> String {
    let peers: Vec<String> = site
        .neighbours(&zone.name)
        .iter()
        .map(|n| {
            let p = site.zone(n).expect("a neighbour is a zone of the site");
            format!(
                "- `{n}` at `https://{}:{}` (certificate `{}`)",
                p.host,
                p.port,
                site::node_identity(n)
            )
        })
        .collect();
    let dir: PathBuf = install_dir.join(&zone.name);
    format!(
        "# Zone `{name}`\n\n\
         Written by `bsfg site init`. Boundary port `{host}:{port}` (mutual TLS, node \
         certificate `{node}`), operations port `127.0.0.1:{ops}` (`/metrics`, `/healthz`, \
         the console at `http://127.0.0.1:{ops}/console`), embedded nats-server on \
         `127.0.0.1:{nats}`; store and spool in `data/`.\n\n\
         Linked with (each pulls from the other):\n\n{peers}\n\n\
         Start by hand, from any directory: `bsfg serve --config {name}/zone.toml`.\n\n\
         With systemd: copy the site directory (this one's parent, with `certs/`) to \
         `{install}`, then `cp {dir}/bsfg-{name}.service /etc/systemd/system/` and \
         `systemctl enable --now bsfg-{name}`.\n\n\
         Before starting, and after any change: `bsfg config check */zone.toml` in the site \
         directory checks the zones together (links, ports, routes, certificates).\n\n\
         Applications of this zone present `app.{name}` (or certificates you add as \
         principals); `bsfg status` with it shows the links and consumers.\n",
        name = zone.name,
        host = zone.host,
        port = zone.port,
        node = site::node_identity(&zone.name),
        ops = zone.ops_port,
        nats = zone.nats_port,
        peers = peers.join("\n"),
        install = install_dir.display(),
        dir = dir.display(),
    )
}
