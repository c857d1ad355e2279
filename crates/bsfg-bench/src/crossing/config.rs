//! The crossing zones' node configurations, and their TLS (also the `ab`
//! mode's).

use crate::node_config::{node_commit_section, node_nats_section};
use anyhow::bail;
use bsfg_testkit::pki::Pki;
use bsfg_testkit::site::{app_identity, node_identity};
use std::collections::BTreeMap;
use std::path::Path;

fn peer_toml(name: &str, origins: &[&str], consumers: &[&str]) -> String {
    let q = |l: &[&str]| {
        l.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[principals]]\nname = \"{name}\"\nkind = \"peer\"\nidentities = [\"{name}-bsfg\"]\nzone = \"{name}\"\norigins = [{}]\nconsumers = [{}]\nbuckets_read = [\"records\"]\n",
        q(origins),
        q(consumers)
    )
}

fn upstream_toml(peer: &str, url: &str, consumer: &str, spool: &Path) -> String {
    format!(
        "\n[[upstreams]]\npeer = \"{peer}\"\nurl = \"{url}\"\nconsumer = \"{consumer}\"\nbatch_facts_max = 1000\nbatch_bytes_max = 4194304\nwait = \"500ms\"\nbatches_ahead_max = 4\nbackoff_min = \"20ms\"\nbackoff_max = \"200ms\"\nspool_dir = \"{}\"\n",
        spool.display()
    )
}

/// A crossing zone node's configuration.
pub(super) fn node_toml(
    zone: &str,
    port: u16,
    ops: u16,
    nats_port: u16,
    dir: &Path,
    upstream_urls: &BTreeMap<&str, String>,
    mtls: bool,
) -> String {
    let mut s = format!(
        r#"zone = "{zone}"
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
retention_interval = "5s"

{tls}

{nats}

{commit}

[[categories]]
name = "operational"
default = true
capacity_bytes = 17179869184
max_age = "30days"
{operational_extra}

[[categories]]
name = "audit"
kinds = ["audit"]
capacity_bytes = 4294967296
max_age = "30days"

[[buckets]]
name = "records"
capacity_bytes = 8589934592
"#,
        commit = node_commit_section(dir, zone),
        // Lines added to the operational category, for A/B runs of its
        // settings (e.g. `duplicate_window = "30s"`).
        operational_extra = std::env::var("BENCH_OPERATIONAL_EXTRA").unwrap_or_default(),
        nats = node_nats_section(nats_port),
        tls = tls_section(dir, zone, mtls, &["records"])
    );
    s.push_str(&links_toml(zone, dir, upstream_urls));
    s
}

/// A zone's place in the chain plant-a → idmz → enterprise: its routes,
/// the consumers its downstream pulls, its peers and its upstream.
fn links_toml(zone: &str, dir: &Path, upstream_urls: &BTreeMap<&str, String>) -> String {
    let mut s = String::new();
    let spool = dir.join(format!("spool-{zone}"));
    match zone {
        "plant-a" => {
            s.push_str("\n[routes]\nenterprise = \"idmz\"\n");
            s.push_str("\n[[consumers]]\nname = \"to-idmz\"\ncategory = \"operational\"\n");
            s.push_str(&peer_toml("idmz", &["enterprise"], &["to-idmz"]));
        }
        "idmz" => {
            s.push_str("\n[[consumers]]\nname = \"to-enterprise\"\ncategory = \"operational\"\nkinds = [\"hop2\"]\n");
            s.push_str(&peer_toml("plant-a", &["plant-a"], &[]));
            s.push_str(&peer_toml(
                "enterprise",
                &["enterprise"],
                &["to-enterprise"],
            ));
            s.push_str(&upstream_toml(
                "plant-a",
                &upstream_urls["plant-a"],
                "to-idmz",
                &spool,
            ));
        }
        _ => {
            s.push_str(&peer_toml("idmz", &["plant-a", "idmz"], &[]));
            s.push_str(&upstream_toml(
                "idmz",
                &upstream_urls["idmz"],
                "to-enterprise",
                &spool,
            ));
        }
    }
    s
}

/// `--tls`: whether the nodes run mutual TLS.
pub(crate) fn parse_tls(tls: &str) -> anyhow::Result<bool> {
    match tls {
        "mtls" => Ok(true),
        "plaintext-dev" => Ok(false),
        t => bail!("--tls {t}: expected mtls or plaintext-dev"),
    }
}

/// A site CA in `certs` and, per zone, the node's certificate
/// `<zone>-bsfg` (also for localhost and 127.0.0.1) and an app's
/// `app.<zone>`.
pub(crate) fn issue_certs(certs: &Path, zones: &[&str]) -> anyhow::Result<()> {
    const VALID_DAYS: i64 = 5;
    let pki = Pki::init(certs, "bench CA", VALID_DAYS)?;
    for z in zones {
        pki.issue_node(&node_identity(z), VALID_DAYS)?;
        pki.issue(&app_identity(z), VALID_DAYS)?;
    }
    Ok(())
}

/// A zone node's `[tls]` section: plaintext-dev, or mTLS with the
/// certificates of `issue_certs` in `<dir>/certs` and the principal `app`
/// (identity `app.<zone>`, reading and writing `buckets`).
pub(crate) fn tls_section(dir: &Path, zone: &str, mtls: bool, buckets: &[&str]) -> String {
    if !mtls {
        return "[tls]\nmode = \"plaintext-dev\"\n".to_string();
    }
    let c = dir.join("certs");
    let buckets = buckets
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[tls]\nmode = \"mtls\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[[principals]]\nname = \"app\"\nkind = \"app\"\nidentities = [\"app.{zone}\"]\nbuckets_read = [{buckets}]\nbuckets_write = [{buckets}]\n",
        c.join("ca.pem").display(),
        c.join(format!("{zone}-bsfg.pem")).display(),
        c.join(format!("{zone}-bsfg.key")).display()
    )
}
