//! A nats-server process for tests and benchmarks: one zone's store on a
//! loopback port, with JetStream domain = its name, started and stopped by
//! the caller. Fault tests kill it (`kill -9`), freeze and thaw it
//! (SIGSTOP / SIGCONT) and restart it on the same port and store; the
//! benchmarks read its memory and CPU through [`crate::procfs`].
//!
//! A zone node given no NATS URL starts its own server instead
//! (`bsfg::node::nats_server`, with generated credentials and supervision);
//! this one has no authorization, so tests and benchmarks can reach the
//! store directly.
//!
//! Files, all in the directory it is given: `<name>.nats.conf`,
//! `<name>.nats.log` (appended to across restarts) and the store
//! `js-<name>/`.

use crate::process::{log_tail, signal};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a started server may take until JetStream answers.
const READY_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long one connection attempt or JetStream request may take while
/// waiting for the server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the server is asked whether it is ready.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines quoted when the server does not start.
const LOG_TAIL_LINES_MAX: usize = 5;

/// How to start a [`NatsServer`]; see [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    dir: PathBuf,
    name: String,
    domain: Option<String>,
    binary: Option<PathBuf>,
    port: Option<u16>,
    sync_interval: String,
    max_file_store_bytes: Option<u64>,
    extra: String,
    tied_to_parent: bool,
}

impl NatsServerBuilder {
    /// The nats-server executable; by default the one
    /// `bsfg::node::nats_server::find_binary` finds (`BSFG_NATS_SERVER`,
    /// the project's `.tools/bin`, then PATH).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// The JetStream domain; by default the server's name. The servers of
    /// one cluster share it (the zone's name) and differ in name.
    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = Some(domain.to_string());
        self
    }

    /// The client port; by default a free loopback port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// JetStream's `sync_interval`, written as given: `always` (the
    /// default: a write is acknowledged once it is fsynced) or a duration.
    pub fn sync_interval(mut self, sync_interval: &str) -> Self {
        self.sync_interval = sync_interval.to_string();
        self
    }

    /// JetStream's `max_file_store`; by default nats-server's own limit
    /// (75 % of the disk free at start-up).
    pub fn max_file_store_bytes(mut self, bytes: u64) -> Self {
        self.max_file_store_bytes = Some(bytes);
        self
    }

    /// Configuration text after the `jetstream` block (e.g. `leafnodes`).
    pub fn extra(mut self, config: &str) -> Self {
        self.extra = config.to_string();
        self
    }

    /// The server (and each restart of it) gets SIGTERM when the thread
    /// that starts it ends, even if this process is killed
    /// (`bsfg::parent_death`): for `bsfg demo`, which may be stopped with
    /// Ctrl-C or `kill`. Off by default: a test's server is killed when
    /// dropped.
    pub fn tied_to_parent(mut self) -> Self {
        self.tied_to_parent = true;
        self
    }

    /// Writes the configuration, starts the server and waits until
    /// JetStream answers; if it does not, the error quotes the end of the
    /// server's log.
    pub async fn start(self) -> anyhow::Result<NatsServer> {
        let mut server = self.launch()?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Writes the configuration and starts the server without waiting for
    /// JetStream: a cluster's servers answer only once a majority is up.
    pub(crate) fn launch(self) -> anyhow::Result<NatsServer> {
        let binary = match self.binary.clone() {
            Some(binary) => binary,
            None => bsfg::node::nats_server::find_binary(None)?,
        };
        let port = match self.port {
            Some(port) => port,
            None => bsfg::ports::free_port()?,
        };
        let store_dir = self.dir.join(format!("js-{}", self.name));
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("creating {}", store_dir.display()))?;
        let conf_path = self.dir.join(format!("{}.nats.conf", self.name));
        std::fs::write(&conf_path, self.config_text(port, &store_dir))
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let mut server = NatsServer {
            child: None,
            port,
            store_dir,
            binary,
            conf_path,
            log_path: self.dir.join(format!("{}.nats.log", self.name)),
            tied_to_parent: self.tied_to_parent,
        };
        server.spawn_process()?;
        Ok(server)
    }

    fn config_text(&self, port: u16, store_dir: &Path) -> String {
        let max_file_store = match self.max_file_store_bytes {
            Some(bytes) => format!("  max_file_store: {bytes}\n"),
            None => String::new(),
        };
        format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nmax_payload: 8MB\n\
             jetstream {{\n  domain: \"{domain}\"\n  store_dir: \"{store}\"\n\
             {max_file_store}  sync_interval: \"{sync}\"\n}}\n{extra}\n",
            name = self.name,
            domain = self.domain.as_deref().unwrap_or(&self.name),
            store = store_dir.display(),
            sync = self.sync_interval,
            extra = self.extra,
        )
    }
}

/// A running (or killed, see [`NatsServer::kill9`]) nats-server; killed
/// when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<std::process::Child>,
    /// The client port, the same across restarts.
    pub port: u16,
    /// JetStream's store directory, the same across restarts.
    pub store_dir: PathBuf,
    binary: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    tied_to_parent: bool,
}

impl NatsServer {
    /// A server named `name` (its `server_name` and JetStream domain) with
    /// its files in `dir`: a free port, `sync_interval: always`, no extra
    /// configuration.
    pub fn builder(dir: &Path, name: &str) -> NatsServerBuilder {
        NatsServerBuilder {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            domain: None,
            binary: None,
            port: None,
            sync_interval: "always".to_string(),
            max_file_store_bytes: None,
            extra: String::new(),
            tied_to_parent: false,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id; panics after [`NatsServer::kill9`].
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the nats-server is running")
            .id()
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .child
            .take()
            .context("the nats-server is not running")?;
        child.kill()?;
        while child.try_wait()?.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Sends `signal` (e.g. `STOP` to freeze the server, `CONT` to thaw it).
    pub fn signal(&self, signal_name: &str) -> anyhow::Result<()> {
        signal(self.pid(), signal_name)
    }

    /// Starts the server again, on the same port and store, after
    /// [`NatsServer::kill9`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "the nats-server is running: kill it first"
        );
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.spawn_process()?;
        self.wait_ready().await
    }

    fn spawn_process(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut command = std::process::Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.conf_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        if self.tied_to_parent {
            bsfg::parent_death::tie_to_parent(&mut command);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until JetStream answers on the client port.
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            if self.jetstream_answers().await {
                return Ok(());
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                anyhow::bail!(
                    "nats-server on port {} exited ({status}){}",
                    self.port,
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "nats-server on port {} not ready within {READY_WAIT_MAX:?}{}",
                    self.port,
                    self.tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn jetstream_answers(&self) -> bool {
        let Ok(Ok(client)) =
            tokio::time::timeout(PROBE_TIMEOUT, async_nats::connect(self.url())).await
        else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        tokio::time::timeout(PROBE_TIMEOUT, js.query_account())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn tail(&self) -> String {
        format!(
            "; the end of its log {}:\n{}",
            self.log_path.display(),
            log_tail(&self.log_path, LOG_TAIL_LINES_MAX)
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
