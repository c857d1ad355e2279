//! The embedded default: a zone node that is given no NATS URL starts and
//! supervises its own nats-server, with JetStream domain = zone name and its
//! own store directory. It is restarted (same port, same store) if it dies.

use crate::config::ZoneConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Restart backoff bounds for a crashed embedded nats-server.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A server that ran at least this long before it exited had started and
/// served: its crash is a new incident, and it is restarted after the
/// shortest backoff again. Why: the backoff never came down before, so
/// after six crashes in a node's life every later crash cost at least 10 s
/// of store outage. A crash loop (a bad binary, a port taken, a full disk)
/// exits within seconds of each start and keeps backing off.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// The delay before each restart of the embedded server.
#[derive(Debug)]
struct RestartBackoff {
    next: Duration,
}

impl RestartBackoff {
    fn new() -> Self {
        Self {
            next: RESTART_BACKOFF_MIN,
        }
    }

    /// The delay before restarting a server that ran for `ran_for` before it
    /// exited: doubling from the minimum to the maximum while it keeps
    /// exiting soon after each start, back to the minimum after a healthy run.
    fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_RUN {
            self.next = RESTART_BACKOFF_MIN;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(RESTART_BACKOFF_MAX);
        delay
    }
}

pub struct EmbeddedNats {
    pub url: String,
    /// The credentials generated for this run (see [`ServerAuth`]).
    pub auth: ServerAuth,
    /// The server's log (in its store directory).
    pub log_path: PathBuf,
    /// Asks the supervisor to stop the server and start it again at once.
    restart: Arc<tokio::sync::Notify>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl EmbeddedNats {
    /// Stops the server (SIGKILL: it writes nothing acknowledged after
    /// its fsync, see `sync_interval`) and starts it again at once, on the
    /// same port and store; the node's connection reconnects by itself.
    pub fn request_restart(&self) {
        self.restart.notify_one();
    }
}

/// The one user of an embedded server: generated at each start, written
/// only to the server's owner-only config file, known only to the node.
/// Why: without it, any local process could read the zone's store and
/// write into it (a forged record once wedged every fetch of a link).
#[derive(Clone)]
pub struct ServerAuth {
    pub user: String,
    pub password: String,
}

impl ServerAuth {
    pub fn generate() -> Self {
        Self {
            user: "bsfg".into(),
            password: hex::encode(rand::random::<[u8; 32]>()),
        }
    }
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Drop for EmbeddedNats {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// Finds the nats-server binary: config, `BSFG_NATS_SERVER`, the project's
/// `.tools/bin` (searched upwards from the working directory and from the
/// executable), then PATH.
pub fn find_binary(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("BSFG_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let mut roots = vec![std::env::current_dir()?];
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    for root in roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".tools/bin/nats-server");
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join("nats-server");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "nats-server not found: run scripts/setup.sh, set BSFG_NATS_SERVER, or set [nats] url"
    )
}

use crate::ports::free_port;

/// Writes the server's configuration (owner-only, see
/// [`crate::owner_only`]); with `auth`, clients must log in as its user.
///
/// `sync_interval`: `always` makes JetStream acknowledge a write only once
/// it is fsynced, so an acknowledged fact survives a power cut. A duration
/// (e.g. `1s`) syncs periodically: faster, but a power cut (not a process
/// crash) can lose up to that much acknowledged data. Written quoted:
/// unquoted, nats-server reads `2m` as the number 2,000,000 (seconds, about
/// 23 days) rather than two minutes.
fn write_config(
    path: &Path,
    zone: &str,
    port: u16,
    store_dir: &Path,
    sync_interval: &str,
    auth: Option<&ServerAuth>,
) -> anyhow::Result<()> {
    let mut text = format!(
        "server_name: \"bsfg-{zone}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  domain: \"{zone}\"\n  store_dir: \"{}\"\n  sync_interval: \"{sync_interval}\"\n}}\n",
        store_dir.display()
    );
    if let Some(auth) = auth {
        text.push_str(&format!(
            "authorization {{\n  user: \"{}\"\n  password: \"{}\"\n}}\n",
            auth.user, auth.password
        ));
    }
    crate::owner_only::write(path, text.as_bytes())?;
    Ok(())
}

fn spawn(binary: &Path, config_path: &Path, log_path: &Path) -> anyhow::Result<Child> {
    let log = crate::owner_only::open_options()
        .create(true)
        .append(true)
        .open(log_path)?;
    crate::owner_only::restrict(&log)?;
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(config_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // The embedded server belongs to this node: if the node dies, even by
    // SIGKILL, the kernel stops the server too (no orphaned zone store).
    crate::parent_death::tie_to_parent(command.as_std_mut());
    Ok(command.spawn()?)
}

/// How long a starting nats-server may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until the server logs that it is ready. A server that exits first
/// (its port taken by another zone's server, a bad store) stops the node's
/// start with the end of its log, instead of the node quietly using
/// whatever else answers on that port.
async fn wait_started(
    child: &mut Child,
    log_path: &Path,
    log_from: u64,
    port: u16,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let log = read_log_from(log_path, log_from);
        if log.contains("Server is ready") {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            anyhow::bail!(
                "the embedded nats-server exited at start ({status}) on port {port}; its log {} ends: {}",
                log_path.display(),
                tail.join(" | ")
            );
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the embedded nats-server did not become ready within {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_log_from(path: &Path, from: u64) -> String {
    use std::io::{Read as _, Seek as _};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(std::io::SeekFrom::Start(from)).is_ok()
    {
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    text
}

pub async fn start(config: &ZoneConfig) -> anyhow::Result<EmbeddedNats> {
    let binary = find_binary(config.nats.server_bin.as_deref())?;
    let store_dir = std::path::absolute(&config.nats.store_dir)?;
    // The store directory belongs to the node (and its server) alone.
    crate::owner_only::create_private_dir(&store_dir)?;
    let port = if config.nats.port == 0 {
        free_port()?
    } else {
        config.nats.port
    };
    let config_path = store_dir.join("nats-server.conf");
    let log_path = store_dir.join("nats-server.log");
    let auth = ServerAuth::generate();
    write_config(
        &config_path,
        &config.zone,
        port,
        &store_dir,
        &config.nats.sync_interval,
        Some(&auth),
    )?;
    let log_from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let mut child = spawn(&binary, &config_path, &log_path)?;
    wait_started(&mut child, &log_path, log_from, port).await?;
    tracing::info!(binary = %binary.display(), port, store_dir = %store_dir.display(), "started embedded nats-server");
    let restart = Arc::new(tokio::sync::Notify::new());
    let requested = restart.clone();
    let supervisor_log = log_path.clone();
    let log_path = supervisor_log.clone();
    let supervisor = tokio::spawn(async move {
        let mut backoff = RestartBackoff::new();
        let mut started = std::time::Instant::now();
        loop {
            let status = tokio::select! {
                status = child.wait() => status,
                () = requested.notified() => {
                    tracing::warn!("restarting the embedded nats-server as asked");
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    started = std::time::Instant::now();
                    match spawn(&binary, &config_path, &supervisor_log) {
                        Ok(c) => child = c,
                        Err(e) => tracing::error!(error = %e, "could not restart nats-server"),
                    }
                    continue;
                }
            };
            let delay = backoff.after_exit(started.elapsed());
            tracing::error!(?status, ?delay, "embedded nats-server exited; restarting");
            tokio::time::sleep(delay).await;
            // A failed spawn counts as a run of no time: the backoff grows.
            started = std::time::Instant::now();
            match spawn(&binary, &config_path, &supervisor_log) {
                Ok(c) => child = c,
                Err(e) => tracing::error!(error = %e, "could not restart nats-server"),
            }
        }
    });
    Ok(EmbeddedNats {
        url: format!("nats://127.0.0.1:{port}"),
        auth,
        log_path,
        restart,
        supervisor,
    })
}

/// The store's filesystem counts as exhausted below this many free bytes.
const EXHAUSTED_BYTES: u64 = 1 << 20;
/// A server that hit storage errors is restarted once its filesystem has
/// this much free (and at least the floor): room to start and recover.
const RESTART_FREE_BYTES_MIN: u64 = 8 << 20;
/// At most one storage restart per this long (a disk that fails again at
/// once does not make a restart loop).
const STORAGE_RESTART_COOLDOWN: Duration = Duration::from_secs(10);
/// What the server logs when its disk fails it (lower case).
const STORAGE_ERRORS: [&str; 3] = [
    "no space left on device",
    "will be disabled",
    "jetstream out of",
];

/// Lines of the embedded server's log that tell of storage errors.
fn storage_errors_in(log: &str) -> Option<&str> {
    log.lines().find(|line| {
        let line = line.to_ascii_lowercase();
        STORAGE_ERRORS.iter().any(|pattern| line.contains(pattern))
    })
}

impl EmbeddedNats {
    /// Watches for storage trouble and restarts the server once space is
    /// back. Why: after its filesystem filled, nats-server kept failing
    /// writes ("no space left on device" for a stream's block file) long
    /// after space was freed, and only a restart helped. Trouble is the
    /// store's filesystem seen exhausted (under 1 MiB free), or storage
    /// errors in the server's log (written once there is room for it
    /// again). While it lasts `/healthz` says `store_storage_error`.
    pub fn watch_storage(
        &self,
        disk: Arc<crate::store::disk::DiskWatch>,
        health: Arc<crate::store::health::JetStreamHealth>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        let restart = self.restart.clone();
        let log_path = self.log_path.clone();
        tokio::spawn(async move {
            let mut log_from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let mut trouble: Option<String> = None;
            let mut last_restart: Option<std::time::Instant> = None;
            // After a restart the stopped server's last lines are not news.
            let mut quiet_until: Option<std::time::Instant> = None;
            let mut ticker = tokio::time::interval(crate::store::disk::POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let log_len = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
                if log_len < log_from {
                    log_from = 0;
                }
                if quiet_until.is_some_and(|until| std::time::Instant::now() < until) {
                    log_from = log_len;
                }
                if log_len > log_from {
                    let text = read_log_from(&log_path, log_from);
                    log_from = log_len;
                    if trouble.is_none()
                        && let Some(line) = storage_errors_in(&text)
                    {
                        trouble = Some(format!(
                            "the embedded nats-server logged a storage error: {}",
                            line.trim()
                        ));
                    }
                }
                let free = disk.store_free();
                if trouble.is_none()
                    && let Some(free) = free.filter(|f| *f < EXHAUSTED_BYTES)
                {
                    trouble = Some(format!(
                        "the store's filesystem ran out of space ({free} bytes free)"
                    ));
                }
                let Some(why) = &trouble else { continue };
                if health.storage_fault().is_none() {
                    tracing::warn!(problem = %why, "the embedded nats-server hit storage errors; it is restarted once its filesystem has room again");
                    metrics.store_storage_fault.set(1);
                    health.set_storage_fault(Some(why.clone()));
                }
                let room = RESTART_FREE_BYTES_MIN.max(disk.floor());
                let cooled = last_restart.is_none_or(|at| at.elapsed() >= STORAGE_RESTART_COOLDOWN);
                if free.is_some_and(|f| f >= room) && cooled {
                    tracing::warn!(problem = %why, free_bytes = free, "space is back: restarting the embedded nats-server to clear its storage errors");
                    metrics.embedded_nats_storage_restarts_total.inc();
                    restart.notify_one();
                    last_restart = Some(std::time::Instant::now());
                    trouble = None;
                    metrics.store_storage_fault.set(0);
                    health.set_storage_fault(None);
                    quiet_until = Some(std::time::Instant::now() + Duration::from_secs(2));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real server reads the written `sync_interval` as meant: `2m` is
    /// two minutes (unquoted it would be 2,000,000 s), `always` is always.
    #[tokio::test]
    async fn the_server_reads_the_sync_interval_as_written() {
        let binary = find_binary(None).expect("nats-server: run scripts/setup.sh");
        for (written, interval_ns, always) in
            [("2m", 120_000_000_000u64, false), ("always", 0, true)]
        {
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("server.conf");
            let (port, http) = (free_port().unwrap(), free_port().unwrap());
            write_config(&conf, "z1", port, &dir.path().join("js"), written, None).unwrap();
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(&format!("http: \"127.0.0.1:{http}\"\n"));
            std::fs::write(&conf, text).unwrap();
            let mut server = Command::new(&binary)
                .arg("-c")
                .arg(&conf)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let varz = read_varz(http).await;
            server.kill().await.unwrap();
            let config = &varz["jetstream"]["config"];
            assert_eq!(
                config["sync_always"].as_bool().unwrap_or(false),
                always,
                "{written}: {config}"
            );
            if !always {
                assert_eq!(
                    config["sync_interval"].as_u64(),
                    Some(interval_ns),
                    "{written}: {config}"
                );
            }
        }
    }

    /// The monitoring port's /varz, once it answers.
    async fn read_varz(http: u16) -> serde_json::Value {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for _ in 0..100 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
                s.write_all(b"GET /varz HTTP/1.0\r\n\r\n").await.unwrap();
                let mut body = String::new();
                s.read_to_string(&mut body).await.unwrap();
                let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
                return serde_json::from_str(json).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server's monitoring port {http} did not answer");
    }

    #[test]
    fn storage_errors_are_found_in_the_server_log() {
        let log = "[1] [INF] Server is ready\n[1] [ERR] JetStream failed to store a msg on stream '$G > facts_operational': write /s/msgs/1.blk: no space left on device\n";
        assert!(storage_errors_in(log).is_some_and(|l| l.contains("1.blk")));
        assert!(storage_errors_in("[1] [INF] Server is ready\n").is_none());
    }

    #[test]
    fn restart_backoff_grows_while_crashing_and_resets_after_a_healthy_run() {
        let mut backoff = RestartBackoff::new();
        let quick = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..8).map(|_| backoff.after_exit(quick)).collect();
        let ms = |d: &[Duration]| d.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(&delays),
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        // A run just short of healthy keeps the maximum.
        assert_eq!(
            backoff.after_exit(HEALTHY_RUN - Duration::from_millis(1)),
            RESTART_BACKOFF_MAX
        );
        // After a healthy run the next crash is restarted at once again,
        // and a new crash loop backs off from the start.
        assert_eq!(backoff.after_exit(HEALTHY_RUN), RESTART_BACKOFF_MIN);
        assert_eq!(backoff.after_exit(quick), RESTART_BACKOFF_MIN * 2);
        assert_eq!(
            backoff.after_exit(Duration::from_secs(3600)),
            RESTART_BACKOFF_MIN
        );
    }
}
