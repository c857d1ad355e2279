//! The bench's processes (nats-server, nodes, echo servers) and its run
//! directory: starting them, waiting for them to listen, reading their
//! memory and CPU from /proc, and removing them on exit.

use anyhow::{Context as _, bail};
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

/// Writes `<dir>/<name>.nats.conf` and starts nats-server on `port`, with
/// JetStream domain `name` and store `<dir>/js-<name>`; `jetstream_extra`
/// goes inside the `jetstream` block, `extra` after it. Every bench mode
/// starts its servers here, each with `max_file_store` set to
/// [`MAX_FILE_STORE_BYTES`].
///
/// Why: the bench's zones reserve more than JetStream's own limit (75 % of
/// the disk free at start-up) on a disk with less than ~38 GB free, and the
/// node would refuse to start; the bench writes a few GB at most.
pub(crate) const MAX_FILE_STORE_BYTES: u64 = 64 << 30;

pub(crate) async fn start_nats_server(
    bin: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    jetstream_extra: &str,
    extra: &str,
) -> anyhow::Result<Child> {
    let conf = dir.join(format!("{name}.nats.conf"));
    std::fs::write(
        &conf,
        format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  domain: {name}\n  store_dir: \"{}\"\n  max_file_store: {MAX_FILE_STORE_BYTES}\n{jetstream_extra}}}\n{extra}\n",
            dir.join(format!("js-{name}")).display()
        ),
    )?;
    let log = dir.join(format!("{name}.nats.log"));
    let child = spawn_logged(std::process::Command::new(bin).arg("-c").arg(&conf), &log)
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_tcp(port, "nats-server", &log).await?;
    Ok(child)
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
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    bail!(
        "{what} did not listen on {port} within 30 s; the end of its log {}:\n{}",
        log.display(),
        tail.join("\n")
    )
}

/// (VmHWM, VmRSS) in KiB.
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // utime + stime in clock ticks (fields 14 and 15 of /proc/pid/stat).
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
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
