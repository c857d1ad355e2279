//! The storage port and its JetStream adapter.
//!
//! Everything persistent lives in the zone's own JetStream domain:
//! * one stream per category (`facts_<category>`, subjects
//!   `facts.<category>.<kind>`), see [`facts`], written through
//!   [`publish`], AppendFact calls and audit records through group commit
//!   ([`commit`]) in front of it;
//! * the idempotency key index, a file derived from those streams, see
//!   [`key_index`];
//! * one durable pull consumer per configured consumer, see [`consumers`];
//! * one object store bucket per configured bucket, see [`objects`];
//! * retention and capacity accounting, see [`retention`], judging ages
//!   by the store's clock, see [`clock`];
//! * facts as served (stored bytes, checked and completed), see [`served`].
//!
//! Nothing outside the zone is touched: the node connects only to its own
//! nats-server, and its one file of its own (the key index) is derived.

pub mod clock;
pub mod commit;
pub mod consumers;
pub mod direct;
pub mod disk;
pub mod facts;
pub mod health;
pub mod key_index;
pub mod objects;
pub mod publish;
pub mod retention;
pub mod served;

use crate::config::ZoneConfig;
use bsfg_domain::{Code, Rejection};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use consumers::Consumers;
pub use facts::FactLog;
pub use objects::Objects;

/// Every storage handle the node needs, built once at start-up.
pub struct Store {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub facts: Arc<FactLog>,
    /// Group commit in front of `facts`: where AppendFact calls and audit
    /// records append (see [`commit`]).
    pub commit: Arc<commit::GroupCommit>,
    pub consumers: Arc<Consumers>,
    pub objects: Arc<Objects>,
    /// Free space of the store's and the key index's filesystems.
    pub disk: Arc<disk::DiskWatch>,
    /// Whether JetStream answers (see [`health`]).
    pub jetstream_health: Arc<health::JetStreamHealth>,
    /// The store's clock, for ages (see [`clock`]).
    pub clock: Arc<clock::StoreClock>,
}

impl Store {
    /// Connects to the zone's nats-server and provisions streams, consumers
    /// and buckets exactly as configured (every option set explicitly).
    pub async fn open(
        url: &str,
        login: &Login,
        config: Arc<ZoneConfig>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let client = login
            .options()
            .await?
            .name(format!("bsfg-{}", config.zone))
            .request_timeout(Some(config.nats.request_timeout))
            .subscription_capacity(publish::SUBSCRIPTION_CAPACITY)
            .retry_on_initial_connect()
            .connect(url)
            .await?;
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(config.nats.request_timeout);
        check_domain(&jetstream, url, &config.zone).await?;
        let direct =
            Arc::new(direct::DirectGets::start(client.clone(), config.nats.request_timeout).await?);
        // An external server's store is not the node's to watch.
        let store_dir = config
            .nats
            .url
            .is_none()
            .then_some(config.nats.store_dir.as_path());
        let disk = disk::DiskWatch::new(
            store_dir,
            &config.key_index_path(),
            config.nats.store_free_bytes_min,
            metrics.clone(),
        );
        disk.spawn_poller();
        let objects = Arc::new(
            Objects::open(
                jetstream.clone(),
                config.clone(),
                direct.clone(),
                disk.clone(),
            )
            .await?,
        );
        let facts = FactLog::open(
            jetstream.clone(),
            config.clone(),
            objects.clone(),
            disk.clone(),
            metrics.clone(),
        )
        .await?;
        let commit = Arc::new(commit::GroupCommit::start(
            facts.clone(),
            config.commit.clone(),
            metrics.clone(),
        ));
        let clock = Arc::new(clock::StoreClock::new(
            config.clock_skew_max,
            metrics.clone(),
        ));
        let consumers =
            Arc::new(Consumers::open(client.clone(), &facts, config.clone(), metrics).await?);
        let jetstream_health =
            health::JetStreamHealth::start(jetstream.clone(), facts.metrics().clone());
        Ok(Self {
            client,
            jetstream,
            facts,
            commit,
            consumers,
            objects,
            disk,
            jetstream_health,
            clock,
        })
    }

    /// Why the node cannot take appends now (a one-line reason that starts
    /// with a reason token), or None when it is ready: `/healthz`.
    pub fn not_ready(&self) -> Option<String> {
        if let state @ (async_nats::connection::State::Disconnected
        | async_nats::connection::State::Pending) = self.client.connection_state()
        {
            return Some(format!(
                "store_disconnected: the zone's nats-server is not connected ({state:?})"
            ));
        }
        if let Some(why) = self.jetstream_health.problem() {
            return Some(format!("jetstream_unavailable: {why}"));
        }
        if let Some(why) = self.jetstream_health.storage_fault() {
            return Some(format!("store_storage_error: {why}"));
        }
        if let Some(why) = self.disk.full() {
            return Some(format!("disk_full: {why}"));
        }
        if !self.facts.index_ready() {
            return Some("key_index_catching_up: the idempotency key index is still reading the stored facts (bsfg_key_index_ready 0)".into());
        }
        None
    }
}

/// How the node logs in to its zone's nats-server.
#[derive(Clone)]
pub enum Login {
    /// An external server without authentication.
    None,
    UserPassword {
        user: String,
        password: String,
    },
    CredsFile(std::path::PathBuf),
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::None => f.write_str("Login::None"),
            Login::UserPassword { user, .. } => write!(
                f,
                "Login::UserPassword {{ user: {user:?}, password: <redacted> }}"
            ),
            Login::CredsFile(path) => write!(f, "Login::CredsFile({})", path.display()),
        }
    }
}

impl Login {
    /// From `[nats]` (external server); a password file's first line is the password.
    pub fn from_config(nats: &crate::config::NatsConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if let Some(creds) = &nats.creds_file {
            return Ok(Login::CredsFile(creds.clone()));
        }
        match (&nats.user, &nats.password_file) {
            (Some(user), Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading [nats] password_file {}", file.display()))?;
                let password = text.lines().next().unwrap_or_default().to_string();
                Ok(Login::UserPassword {
                    user: user.clone(),
                    password,
                })
            }
            (None, None) => Ok(Login::None),
            _ => anyhow::bail!("[nats] user and password_file go together"),
        }
    }

    async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        Ok(match self {
            Login::None => async_nats::ConnectOptions::new(),
            Login::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Login::CredsFile(path) => {
                async_nats::ConnectOptions::with_credentials_file(path).await?
            }
        })
    }
}

/// The server must serve this zone's own JetStream domain (domain = zone
/// name): a node pointed at another zone's server (two zones given the same
/// `[nats] port`, a mistyped `url`) would store its facts in that zone.
async fn check_domain(
    jetstream: &async_nats::jetstream::Context,
    url: &str,
    zone: &str,
) -> anyhow::Result<()> {
    let account = jetstream
        .query_account()
        .await
        .map_err(|e| anyhow::anyhow!("reading the JetStream account at {url}: {e}"))?;
    if account.domain.as_deref() == Some(zone) {
        return Ok(());
    }
    Err(WrongDomain(format!(
        "the nats-server at {url} serves JetStream domain {:?}, not this zone's {zone:?}: it belongs to another zone (two zones given the same [nats] port, or a wrong [nats] url); give each zone its own server",
        account.domain.unwrap_or_default()
    ))
    .into())
}

/// A zone node connected to a server of another JetStream domain; retrying
/// cannot help.
#[derive(Debug)]
pub struct WrongDomain(pub String);

impl std::fmt::Display for WrongDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongDomain {}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A storage failure the client may retry.
pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Rejection {
    Rejection::new(
        Code::Unavailable,
        "store_unavailable",
        format!("{what}: {err}; the zone store is unavailable, retry with backoff"),
    )
}

/// One wildcard reply subscription, `<inbox>.<name>.>`, whose messages a
/// router task hands to `deliver` with their subject's tail (after the
/// prefix and its dot). Why one: a subscription per request costs a SUB
/// and an UNSUB each, and every subscription change invalidates
/// nats-server's subject-match cache that every publish goes through.
/// Dropping the router stops its task.
pub struct ReplyRouter {
    prefix: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ReplyRouter {
    pub async fn start(
        client: &async_nats::Client,
        name: &str,
        mut deliver: impl FnMut(&str, async_nats::Message) + Send + 'static,
    ) -> anyhow::Result<Self> {
        use futures::StreamExt as _;
        let prefix = format!("{}.{name}", client.new_inbox());
        let mut replies = client.subscribe(format!("{prefix}.>")).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let tail_from = prefix.len() + 1;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => return,
                    message = replies.next() => match message {
                        Some(message) => message,
                        None => return,
                    },
                };
                // The subject shares the message's bytes; cloning it is cheap.
                let subject = message.subject.clone();
                deliver(subject.get(tail_from..).unwrap_or_default(), message);
            }
        });
        Ok(Self {
            prefix,
            _stop: stop,
        })
    }

    /// The reply subject with this tail.
    pub fn reply_to(&self, tail: std::fmt::Arguments<'_>) -> String {
        use std::fmt::Write as _;
        let mut subject = String::with_capacity(self.prefix.len() + 42);
        write!(subject, "{}.{tail}", self.prefix).expect("writing to a String");
        subject
    }
}

#[cfg(test)]
mod tests {
    use super::Login;
    use crate::config::NatsConfig;

    #[test]
    fn an_external_login_comes_from_a_password_file_or_a_creds_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let with = |user: Option<&str>, password_file: Option<&std::path::Path>| NatsConfig {
            user: user.map(str::to_string),
            password_file: password_file.map(|p| p.to_path_buf()),
            ..Default::default()
        };
        assert!(matches!(
            Login::from_config(&with(None, None)).unwrap(),
            Login::None
        ));
        match Login::from_config(&with(Some("zone-a"), Some(&file))).unwrap() {
            Login::UserPassword { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("zone-a", "s3cret"))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Login::from_config(&with(Some("zone-a"), None)).is_err(),
            "a user needs its password file"
        );
        let creds = NatsConfig {
            creds_file: Some(dir.path().join("zone.creds")),
            ..Default::default()
        };
        assert!(matches!(
            Login::from_config(&creds).unwrap(),
            Login::CredsFile(_)
        ));
    }
}
