//! How the node reaches its zone's nats-server: the login, and the check
//! that the server serves this zone's own JetStream domain.

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

/// Connects to the zone's nats-server as `login` and checks that it serves
/// this zone's JetStream domain. `url` is one server's URL or a cluster's,
/// comma-separated: the client connects to one and moves to another (and
/// to the servers the cluster announces) when it is lost.
pub(super) async fn connect(
    url: &str,
    login: &Login,
    config: &crate::config::ZoneConfig,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let client = login
        .options()
        .await?
        .name(format!("bsfg-{}", config.zone))
        .request_timeout(Some(config.nats.request_timeout))
        .subscription_capacity(super::publish::SUBSCRIPTION_CAPACITY)
        .retry_on_initial_connect()
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
        .await?;
    let mut jetstream = async_nats::jetstream::new(client.clone());
    jetstream.set_timeout(config.nats.request_timeout);
    check_domain(&jetstream, url, &config.zone).await?;
    Ok((client, jetstream))
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
