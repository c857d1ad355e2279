//! The zone node: one process serving one zone.
//!
//! Start-up order: (embedded) nats-server → store provisioning (streams,
//! consumers, buckets, explicit configs) → retention task → operations port
//! → boundary port. Each part lives in its own module.

mod append_facts;
pub mod audit;
pub mod auth;
pub mod boundary;
pub mod call;
pub mod console;
pub mod errors;
pub mod ha_status;
pub mod lease;
pub mod nats_server;
pub mod operations;
pub mod ops_http;
pub mod service;
pub mod status;

use crate::config::{TlsMode, ZoneConfig};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::server::{ReloadingTls, TlsFiles};
use bsfg_proto::bsfg::v1::{BoundaryServiceExt as _, OperationsServiceExt as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Concurrent RPCs per HTTP/2 connection; more wait in the client.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Fixed HTTP/2 receive windows instead of adaptive ones. Why: adaptive
/// windows start at 64 KiB. When the node pauses (a stall on a busy host)
/// with hundreds of appends in flight on one connection, that window fills,
/// the client then sends each request body in slivers as the window
/// reopens, and h2's defence against floods of small DATA frames closes the
/// whole connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames"),
/// failing every call on it. 8 MiB holds 1,024 streams of ordinary facts
/// (4 KiB objects) whole; it is also the most request data one connection
/// can make the node buffer before the node reads it (what it reads is
/// admitted into `[boundary] request_memory_bytes_max`). 1 MiB per stream caps one PutObject upload at
/// about 50 MB/s over a 20 ms round trip.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
/// Per-stream receive window; see [`CONNECTION_WINDOW_BYTES`].
pub const STREAM_WINDOW_BYTES: u32 = 1 << 20;

/// The boundary port's connection settings: the configured bounds and the
/// fixed ones above.
fn listener_settings(config: &ZoneConfig) -> boundary::listener::ListenerSettings {
    boundary::listener::ListenerSettings {
        connections_max: config.boundary.connections_max,
        tls_handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(10),
        connection_idle_timeout: config.boundary.connection_idle_timeout,
        streams_per_connection_max: MAX_CONCURRENT_STREAMS,
        connection_window_bytes: CONNECTION_WINDOW_BYTES,
        stream_window_bytes: STREAM_WINDOW_BYTES,
        header_bytes_max: HEADER_BYTES_MAX,
    }
}

/// Largest request header block: names, a deadline, a few metadata
/// headers. hyper's HTTP/2 default is 16 MiB per request.
pub const HEADER_BYTES_MAX: u32 = 64 * 1024;

/// A running node, with the addresses it actually bound.
pub struct RunningNode {
    pub boundary_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// The live TLS configuration (None in plaintext-dev mode).
    pub tls: Option<Arc<ReloadingTls>>,
    /// Links to upstream peers (empty when none are configured).
    pub replicator: Arc<crate::replicator::Replicator>,
    _embedded: Option<nats_server::EmbeddedNats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Waits until the boundary server stops (it normally never does).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let server = self.tasks.remove(0);
        server.await?;
        Ok(())
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.store.facts.stop_upkeep();
    }
}

/// How long start-up waits for the zone's JetStream to answer.
const STORE_READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn start(mut config: ZoneConfig) -> anyhow::Result<RunningNode> {
    let seed_fixed = config.random_seed.is_some();
    let random_seed = *config.random_seed.get_or_insert_with(rand::random);
    if seed_fixed {
        tracing::warn!(
            random_seed,
            "random_seed is fixed by the configuration: for tests and replays only"
        );
    }
    let config = Arc::new(config);
    let embedded = start_embedded_nats(&config).await?;
    let url = nats_url(&config, embedded.as_ref());
    let metrics = Arc::new(Metrics::new());
    let login = store_login(&config, embedded.as_ref())?;
    let store =
        Arc::new(open_store_with_retry(&url, &login, config.clone(), metrics.clone()).await?);
    let retention = spawn_retention(&config, &store, &metrics);
    let console_slot = Arc::new(std::sync::OnceLock::new());
    let (ops, ops_addr) = spawn_ops(&config, &store, &metrics, &console_slot).await?;
    let tls = load_tls(&config)?;
    let mut tasks = spawn_watchers(&config, embedded.as_ref(), tls.as_ref(), &store, &metrics);
    let (audit, audit_tasks) =
        audit::Audit::start(&config.zone, store.commit.clone(), metrics.clone());
    tasks.extend(audit_tasks);
    tasks.extend(start_lease(&config, &store, &metrics, &audit).await?);
    let (replicator, replication_tasks) = start_replication(&config, &store, &metrics, &audit)?;
    tasks.extend(replication_tasks);
    tasks.push(start_console(
        &config,
        &store,
        &replicator,
        tls.as_ref(),
        &console_slot,
    ));
    tasks.push(tokio::spawn(status::run(status::StatusSource {
        config: config.clone(),
        store: store.clone(),
        replicator: replicator.clone(),
        tls: tls.clone(),
    })));
    let gate = build_gate(&config, &store, &metrics, audit, &replicator);
    let (server_task, boundary_addr) =
        serve_boundary(&config, tls.as_ref(), gate, &metrics).await?;
    tracing::info!(zone = %config.zone, boundary = %boundary_addr, ops = %ops_addr, nats = %url, random_seed, "zone node ready");
    let mut all_tasks = vec![server_task, retention, ops];
    all_tasks.extend(tasks);
    Ok(RunningNode {
        boundary_addr,
        ops_addr,
        store,
        metrics,
        tls,
        replicator,
        _embedded: embedded,
        tasks: all_tasks,
    })
}

/// The writer lease's task for a zone of several nodes (`[ha]`); a zone of
/// one node holds no lease and always writes.
async fn start_lease(
    config: &Arc<ZoneConfig>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    audit: &Arc<audit::Audit>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(ha) = &config.ha else {
        metrics.lease_held.set(1);
        return Ok(None);
    };
    let lease = lease::Lease::open(
        &store.jetstream,
        config,
        ha,
        store.facts.clone(),
        metrics.clone(),
        audit.clone(),
    )
    .await?;
    Ok(Some(tokio::spawn(lease.run())))
}

/// The embedded nats-server, started when no external NATS URL is configured.
async fn start_embedded_nats(
    config: &ZoneConfig,
) -> anyhow::Result<Option<nats_server::EmbeddedNats>> {
    Ok(match config.nats.is_embedded() {
        false => None,
        true => Some(nats_server::start(config).await?),
    })
}

/// The configured NATS URLs (comma-separated), else the embedded server's.
fn nats_url(config: &ZoneConfig, embedded: Option<&nats_server::EmbeddedNats>) -> String {
    match embedded {
        Some(e) => e.url.clone(),
        None => config.nats.external_urls().join(","),
    }
}

/// The store's login: the embedded server's own user, else the configured one.
fn store_login(
    config: &ZoneConfig,
    embedded: Option<&nats_server::EmbeddedNats>,
) -> anyhow::Result<crate::store::Login> {
    Ok(match embedded {
        Some(e) => crate::store::Login::UserPassword {
            user: e.auth.user.clone(),
            password: e.auth.password.clone(),
        },
        None => crate::store::Login::from_config(&config.nats)?,
    })
}

/// The retention task.
fn spawn_retention(
    config: &ZoneConfig,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::store::retention::run(
        store.client.clone(),
        store.facts.clone(),
        store.consumers.clone(),
        store.clock.clone(),
        metrics.clone(),
        config.retention_interval,
    ))
}

/// Binds the operations port and serves it; returns the task and the
/// address it bound.
async fn spawn_ops(
    config: &ZoneConfig,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    console: &Arc<std::sync::OnceLock<Arc<console::Console>>>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let ops_listener = tokio::net::TcpListener::bind(config.ops_listen).await?;
    let ops_addr = ops_listener.local_addr()?;
    let state = ops_http::OpsState {
        metrics: metrics.clone(),
        store: store.clone(),
        console: console.clone(),
    };
    let ops = tokio::spawn(ops_http::serve(ops_listener, state));
    Ok((ops, ops_addr))
}

/// The console's state, handed to the operations port, and its sampler.
fn start_console(
    config: &Arc<ZoneConfig>,
    store: &Arc<Store>,
    replicator: &Arc<crate::replicator::Replicator>,
    tls: Option<&Arc<ReloadingTls>>,
    slot: &std::sync::OnceLock<Arc<console::Console>>,
) -> tokio::task::JoinHandle<()> {
    let console = Arc::new(console::Console::new(
        config.clone(),
        store.clone(),
        replicator.clone(),
        tls.cloned(),
    ));
    let _ = slot.set(console.clone());
    tokio::spawn(console::sample(console))
}

/// The boundary port's TLS (None in plaintext-dev mode, with a loud warning).
fn load_tls(config: &ZoneConfig) -> anyhow::Result<Option<Arc<ReloadingTls>>> {
    Ok(match config.tls.mode {
        TlsMode::Mtls => {
            let files = TlsFiles {
                ca: config.tls.ca.clone().expect("config checked"),
                cert: config.tls.cert.clone().expect("config checked"),
                key: config.tls.key.clone().expect("config checked"),
            };
            Some(ReloadingTls::load(files)?)
        }
        TlsMode::PlaintextDev => {
            tracing::warn!(
                "*** PLAINTEXT-DEV MODE: the boundary port has NO TLS and NO authentication; every caller has every right. Never use this outside development. ***"
            );
            None
        }
    })
}

/// The embedded server's storage watch and the TLS reload watch, for
/// whichever of the two this node has.
fn spawn_watchers(
    config: &ZoneConfig,
    embedded: Option<&nats_server::EmbeddedNats>,
    tls: Option<&Arc<ReloadingTls>>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(embedded) = embedded {
        tasks.push(embedded.watch_storage(
            store.disk.clone(),
            store.jetstream_health.clone(),
            metrics.clone(),
        ));
    }
    if let Some(tls) = tls {
        tasks.push(tokio::spawn(crate::tls::server::watch(
            tls.clone(),
            metrics.clone(),
            config.tls.reload_interval,
        )));
    }
    tasks
}

/// The replicator (links to upstream peers) and its confirm-age publisher.
fn start_replication(
    config: &Arc<ZoneConfig>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    audit: &Arc<audit::Audit>,
) -> anyhow::Result<(
    Arc<crate::replicator::Replicator>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let peer_tls = match config.tls.mode {
        TlsMode::Mtls => Some(crate::replicator::PeerTls {
            ca: config.tls.ca.clone().expect("config checked"),
            cert: config.tls.cert.clone().expect("config checked"),
            key: config.tls.key.clone().expect("config checked"),
        }),
        TlsMode::PlaintextDev => None,
    };
    let (replicator, mut tasks) = crate::replicator::start(
        config.clone(),
        store.clone(),
        metrics.clone(),
        audit.clone(),
        peer_tls,
    )?;
    tasks.push(tokio::spawn(crate::replicator::publish_confirm_age(
        replicator.clone(),
        metrics.clone(),
    )));
    Ok((replicator, tasks))
}

/// The boundary's front: both RPC services on one router, each route's
/// limits, and the gate (auth, audit, request memory) before it.
fn build_gate(
    config: &Arc<ZoneConfig>,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    audit: Arc<audit::Audit>,
    replicator: &Arc<crate::replicator::Replicator>,
) -> Arc<boundary::gate::Gate> {
    let audit_for_gate = audit.clone();
    let service = Arc::new(service::Boundary {
        config: config.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        auth: auth::Auth::new(config),
        refusals: call::Refusals {
            metrics: metrics.clone(),
            audit: audit.clone(),
            audited: call::Audited::Authorization,
        },
        audit,
    });
    let operations = Arc::new(operations::Operations {
        config: config.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        auth: auth::Auth::new(config),
        audit: audit_for_gate.clone(),
        replicator: replicator.clone(),
        refusals: call::Refusals {
            metrics: metrics.clone(),
            audit: audit_for_gate.clone(),
            audited: call::Audited::EveryRefusal,
        },
    });
    let routes = boundary::routes::Routes::new(config);
    let mut router = operations.register(service.register(connectrpc::Router::new()));
    for (path, route) in routes.all() {
        router = router.with_route_limits(path, route.rpc_limits());
    }
    Arc::new(boundary::gate::Gate::new(
        connectrpc::ConnectRpcService::new(router),
        routes,
        auth::Auth::new(config),
        audit_for_gate,
        metrics.clone(),
        config.boundary.request_memory_bytes_max,
        config.boundary.body_timeout,
    ))
}

/// Binds the boundary port and serves it through the gate; returns the
/// server task and the address it bound.
async fn serve_boundary(
    config: &ZoneConfig,
    tls: Option<&Arc<ReloadingTls>>,
    gate: Arc<boundary::gate::Gate>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let boundary_addr = listener.local_addr()?;
    let server_tls = tls.map(|t| t.server_config()).transpose()?;
    let server_task = tokio::spawn(boundary::listener::serve(
        listener,
        server_tls,
        gate,
        listener_settings(config),
        metrics.clone(),
    ));
    Ok((server_task, boundary_addr))
}

/// What to do when JetStream refuses to reserve the zone's streams and
/// buckets (error 10047, nats-server's `JSStorageResourcesExceededErr`,
/// "insufficient storage resources available").
fn storage_refused(config: &ZoneConfig) -> String {
    let gib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    let categories: u64 = config.categories.iter().map(|c| c.capacity_bytes).sum();
    let buckets: u64 = config.buckets.iter().map(|b| b.capacity_bytes).sum();
    format!(
        "JetStream cannot reserve the zone's storage: the categories' capacity_bytes add up to {:.1} GiB and the object buckets' to {:.1} GiB, more than this nats-server lets JetStream use (max_file_store, by default 75% of the disk space free when the server started). Lower capacity_bytes in the zone config, or free disk space and restart (the embedded nats-server restarts with the node; an external one can also be given a larger max_file_store)",
        gib(categories),
        gib(buckets)
    )
}

/// Whether opening the store failed with [`storage_refused`]'s error; the
/// error chain carries JetStream's code only as text.
fn is_storage_refused(e: &anyhow::Error) -> bool {
    let code = async_nats::jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED.0;
    format!("{e:#}").contains(&code.to_string())
}

async fn open_store_with_retry(
    url: &str,
    login: &crate::store::Login,
    config: Arc<ZoneConfig>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Store> {
    let deadline = tokio::time::Instant::now() + STORE_READY_TIMEOUT;
    let mut delay = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            Store::open(url, login, config.clone(), metrics.clone()),
        )
        .await
        {
            Ok(Ok(store)) => return Ok(store),
            // Retrying cannot help: the configured capacity does not fit.
            Ok(Err(e)) if is_storage_refused(&e) => {
                return Err(e.context(storage_refused(&config)));
            }
            Ok(Err(e)) if e.downcast_ref::<crate::store::WrongDomain>().is_some() => return Err(e),
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "zone store not ready yet; retrying");
            }
            Ok(Err(e)) => {
                return Err(e.context(format!(
                    "zone store at {url} not ready after {STORE_READY_TIMEOUT:?}"
                )));
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tracing::info!("zone store slow to answer; retrying")
            }
            Err(_) => {
                anyhow::bail!("zone store at {url} did not answer within {STORE_READY_TIMEOUT:?}")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
