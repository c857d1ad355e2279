//! The bench's processes (nats-servers and clusters of them, nodes, echo
//! servers) and its run directory: starting them, waiting for them to
//! listen, and removing them on exit. Their memory and CPU:
//! `bsfg_testkit::procfs`; the nodes' configurations: `node_config`.

use anyhow::{Context as _, bail};
use bsfg::config::ZoneConfig;
use bsfg_testkit::nats_cluster::{NatsCluster, NatsClusterBuilder};
use bsfg_testkit::nats_server::{NatsServer, NatsServerBuilder};
use bsfg_testkit::process::log_tail;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub(crate) struct Child {
    child: std::process::Child,
}
impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    bsfg::ports::free_port()
}

/// A bench nats-server named `name` (its JetStream domain) with its files
/// in `dir`, on `port`, at JetStream `sync_interval` `sync` (`--nats-sync`),
/// with `max_file_store` set to [`MAX_FILE_STORE_BYTES`]: every bench mode
/// starts its servers from here.
pub(crate) fn nats_server(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    sync: &str,
) -> NatsServerBuilder {
    NatsServer::builder(dir, name)
        .binary(bin)
        .port(port)
        .sync_interval(sync)
        .max_file_store_bytes(MAX_FILE_STORE_BYTES)
}

/// A bench JetStream cluster of `size` servers on loopback, domain `zone`,
/// with their files in `dir`, every server as [`nats_server`] starts one.
pub(crate) fn nats_cluster(
    bin: &Path,
    dir: &Path,
    zone: &str,
    size: usize,
    sync: &str,
) -> NatsClusterBuilder {
    NatsCluster::builder(dir, zone, size)
        .binary(bin)
        .sync_interval(sync)
        .max_file_store_bytes(MAX_FILE_STORE_BYTES)
}

/// Why: the bench's zones reserve more than JetStream's own limit (75 % of
/// the disk free at start-up) on a disk with less than ~38 GB free, and the
/// node would refuse to start; the bench writes a few GB at most.
const MAX_FILE_STORE_BYTES: u64 = 64 << 30;

/// `bsfg serve` of `bin` with `config`, written to `config_path`, its
/// output in `log`, once its boundary port listens.
pub(crate) async fn start_node(
    bin: &Path,
    config: &ZoneConfig,
    config_path: &Path,
    log: &Path,
) -> anyhow::Result<Child> {
    std::fs::write(config_path, toml::to_string(config)?)?;
    let mut command = std::process::Command::new(bin);
    command.arg("serve").arg("--config").arg(config_path);
    let node =
        spawn_logged(&mut command, log).with_context(|| format!("starting {}", bin.display()))?;
    wait_tcp(config.listen.port(), "bsfg node", log).await?;
    Ok(node)
}

pub(crate) fn spawn_logged(cmd: &mut std::process::Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log)?;
    let child = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Child { child })
}

/// Log lines quoted when a process does not listen.
const LOG_TAIL_LINES_MAX: usize = 5;

/// Waits for a started process to listen; if it does not, the error
/// carries the end of its log (the run directory is removed on exit).
pub(crate) async fn wait_tcp(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{what} did not listen on {port} within 30 s; the end of its log {}:\n{}",
        log.display(),
        log_tail(log, LOG_TAIL_LINES_MAX)
    )
}

pub(crate) struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("BSFG_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
pub(crate) fn scopeguard(dir: PathBuf) -> Cleanup {
    Cleanup(dir)
}

/// This binary's `echo-server` on `port`, once it listens; with
/// `jetstream` (NATS URLs, comma-separated), the bare append storing into
/// that nats-server or cluster.
pub(crate) async fn start_echo_server(
    dir: &Path,
    port: u16,
    log: &str,
    what: &str,
    jetstream: Option<&str>,
) -> anyhow::Result<Child> {
    let log = dir.join(log);
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.arg("echo-server").arg(format!("127.0.0.1:{port}"));
    if let Some(urls) = jetstream {
        command.arg("--jetstream").arg(urls);
    }
    let child = spawn_logged(&mut command, &log)?;
    wait_tcp(port, what, &log).await?;
    Ok(child)
}
