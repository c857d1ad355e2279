//! The boundary port's accept loop: a bounded number of connections, TLS
//! with a handshake deadline, refused handshakes logged (rate-limited) and
//! counted, HTTP/1.1 and HTTP/2 with fixed windows, idle connections
//! closed, and every request handed to the [`Gate`].

use super::gate::Gate;
use crate::metrics::{Metrics, labels};
use connectrpc::server::{PeerAddr, PeerCerts};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How the port serves connections. Every field bounds something a peer
/// can make the node hold or wait for.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Open connections at once; more are closed at accept (counted).
    pub connections_max: usize,
    /// A TLS handshake completes within it, or the connection is closed.
    pub tls_handshake_timeout: Duration,
    /// An HTTP/1.1 request's headers arrive within it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub connection_idle_timeout: Duration,
    /// Concurrent RPCs per HTTP/2 connection; more wait in the client.
    pub streams_per_connection_max: u32,
    /// HTTP/2 receive windows: the most request data a connection (and
    /// one stream) can have buffered in the node before it is read.
    pub connection_window_bytes: u32,
    pub stream_window_bytes: u32,
    /// Largest header block of one request (HTTP/2 and HTTP/1.1).
    pub header_bytes_max: u32,
}

/// Serves `listener` until the task is dropped; its connections end with
/// it (they hold the node's store).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gate: Arc<Gate>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
) {
    let stopped = CancellationToken::new();
    let _stop_connections = stopped.clone().drop_guard();
    let connections = Arc::new(Semaphore::new(settings.connections_max));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let warnings = Arc::new(Warnings::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warnings.warn(
                    "accept_failed",
                    || tracing::warn!(error = %e, "accepting a connection failed"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.connections_refused_total.inc();
            let max = settings.connections_max;
            warnings.warn("connections_max", || tracing::warn!(%peer, connections_max = max, "connection refused: the node has its maximum of open connections"));
            continue;
        };
        // Small RPCs answer at once instead of waiting out Nagle's delay.
        let _ = stream.set_nodelay(true);
        metrics.connections_open.inc();
        let connection = Connection {
            peer,
            gate: gate.clone(),
            settings,
            metrics: metrics.clone(),
            warnings: warnings.clone(),
            _permit: permit,
        };
        let stopped = stopped.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection.serve(stream, acceptor) => {}
                _ = stopped.cancelled() => {}
            }
        });
    }
}

/// One accepted connection; its permit returns when it ends.
struct Connection {
    peer: SocketAddr,
    gate: Arc<Gate>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    warnings: Arc<Warnings>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, stream: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        match acceptor {
            None => self.serve_http(TokioIo::new(stream), None).await,
            Some(acceptor) => match tokio::time::timeout(
                self.settings.tls_handshake_timeout,
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => {
                    let chain = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| PeerCerts(c.iter().map(|c| c.clone().into_owned()).collect()));
                    self.serve_http(TokioIo::new(tls), chain).await
                }
                Ok(Err(e)) => self.handshake_refused(handshake_reason(&e), &e.to_string()),
                Err(_) => self.handshake_refused(
                    "handshake_timeout",
                    "the TLS handshake did not complete in time",
                ),
            },
        }
    }

    fn handshake_refused(&self, reason: &'static str, error: &str) {
        self.metrics
            .tls_handshake_refusals_total
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
        let peer = self.peer;
        self.warnings.warn(
            reason,
            || tracing::warn!(%peer, reason, error, "TLS handshake refused"),
        );
    }

    async fn serve_http<I>(&self, io: TokioIo<I>, chain: Option<PeerCerts>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let identified = self.gate.identify(chain.as_ref());
        let service = {
            let (gate, activity, peer) = (self.gate.clone(), activity.clone(), self.peer);
            hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request.extensions_mut().insert(identified.clone());
                if let Some(chain) = &chain {
                    request.extensions_mut().insert(PeerCerts(chain.0.clone()));
                }
                let (gate, busy) = (gate.clone(), activity.begin());
                async move {
                    let response = answer_even_a_panic(gate, request).await;
                    drop(busy);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        let builder = self.builder();
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let idle_timeout = self.settings.connection_idle_timeout;
        let mut ticks = tokio::time::interval(idle_timeout / 4);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = ticks.tick(), if !closing => {
                    if activity.idle_for() >= idle_timeout {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }

    fn builder(&self) -> Builder<TokioExecutor> {
        let s = &self.settings;
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(s.header_bytes_max.max(8192) as usize);
        builder
            .http2()
            .timer(TokioTimer::new())
            .adaptive_window(false)
            .initial_connection_window_size(s.connection_window_bytes)
            .initial_stream_window_size(s.stream_window_bytes)
            .max_concurrent_streams(s.streams_per_connection_max)
            .max_header_list_size(s.header_bytes_max);
        builder
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// A handler that panics answers `internal` instead of taking its whole
/// connection (and every call on it) down with it; the panic is logged.
async fn answer_even_a_panic(
    gate: Arc<Gate>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<connectrpc::ConnectRpcBody> {
    use futures::FutureExt as _;
    let mut headers = http::HeaderMap::new();
    if let Some(content_type) = request.headers().get(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    let path = request.uri().path().to_string();
    match std::panic::AssertUnwindSafe(gate.handle(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path, panic = %what, "a request handler panicked");
            connectrpc::ConnectError::internal("the node failed while handling this request")
                .into_http_response(&headers)
        }
    }
}

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

/// Marks one request in flight until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last_end.lock().unwrap().elapsed()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A stable token for why a TLS handshake failed.
fn handshake_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "handshake_io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(_) => "certificate_refused",
        rustls::Error::PeerIncompatible(_) => "incompatible_tls",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "not_tls"
        }
        _ => "handshake_failed",
    }
}

/// At most one log line per kind of warning per interval, so a flood of
/// refused handshakes cannot flood the log; the metrics count them all.
#[derive(Default)]
struct Warnings {
    last: Mutex<std::collections::HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl Warnings {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// Runs `log` unless a warning of this kind was logged within the
    /// interval; `suppressed` counts the skipped ones.
    fn warn(&self, kind: &'static str, log: impl FnOnce()) {
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        let entry = last.entry(kind).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|at| now.duration_since(at) < Self::INTERVAL)
        {
            entry.1 += 1;
            return;
        }
        if entry.1 > 0 {
            tracing::warn!(
                kind,
                suppressed = entry.1,
                "similar warnings suppressed in the last interval"
            );
        }
        *entry = (Some(now), 0);
        drop(last);
        log();
    }
}
