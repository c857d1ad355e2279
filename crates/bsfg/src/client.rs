//! A typed client for the boundary contract, used by the CLI, the tests and
//! the benchmarks. Thin: it picks the transport and returns owned messages
//! (and, for FetchFacts, optionally a view of the received bytes).
//!
//! Given several URLs (comma-separated: the nodes of one zone, see
//! `docs/ha.md`), AppendFact, FetchFacts and ConfirmReceipt move to the
//! next node when a node cannot be reached or answers `not_active`, with a
//! growing pause after each full turn, and keep the node that answered for
//! the next calls. Safe because each of them can be repeated: an append
//! by its message id, a confirm by the consumer's frontier, and a fetch
//! from the frontier: a repeated fetch asks for `restart_from_frontier`,
//! since the failed attempt may have been served and its answer lost.

use bsfg_proto::bsfg::v1::__buffa::view::FetchFactsResponseView;
use bsfg_proto::bsfg::v1::*;
use buffa::view::OwnedView;
use connectrpc::ConnectError;
use connectrpc::client::{ClientConfig, HttpClient};
use std::time::Duration;

#[derive(Clone)]
pub struct BsfgClient {
    nodes: std::sync::Arc<[Endpoint]>,
    /// The node the next call goes to first.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Each AppendFact and ConfirmReceipt call's deadline (a FetchFacts
    /// call's is this plus its wait): how long a node that accepted the
    /// call but does not answer (frozen, cut off) holds the caller before
    /// it moves on to the next node.
    call_timeout: Duration,
}

/// One node's boundary and operations services.
struct Endpoint {
    inner: BoundaryServiceClient<HttpClient>,
    ops: OperationsServiceClient<HttpClient>,
}

/// Turns over every node a call makes before it gives up.
const FAILOVER_TURNS_MAX: u32 = 16;
/// The pause after the first full turn over the nodes; doubled after each
/// further turn, up to `FAILOVER_PAUSE_MAX`.
const FAILOVER_PAUSE_FIRST: Duration = Duration::from_millis(50);
const FAILOVER_PAUSE_MAX: Duration = Duration::from_millis(250);

/// Whether another node of the zone may answer what this one could not: it
/// is a standby (`not_active`), or no node answered at all (no node's
/// reason: not reached, or the connection broke mid-call).
fn is_failover(e: &ConnectError) -> bool {
    match e.response_headers().get("bsfg-reason") {
        Some(r) => r.as_bytes() == bsfg_domain::Reason::NotActive.as_str().as_bytes(),
        None => true,
    }
}

/// Every call has a deadline; a dead peer never hangs a caller forever.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl BsfgClient {
    /// Plaintext Connect client (binary protobuf) for `http://host:port`:
    /// only for a node in plaintext-dev mode. HTTP/2 with prior knowledge,
    /// as the TLS client negotiates by ALPN: concurrent calls share one
    /// connection. (An HTTP/1.1 pool opened one connection per call in
    /// flight: ~4,700 connections and 200 MiB of node RSS under a 5k/s
    /// open-loop overload in the crossing bench.)
    /// `base_url` may name several nodes, comma-separated.
    pub fn connect(base_url: &str) -> anyhow::Result<Self> {
        let http = HttpClient::plaintext_http2_only();
        Self::over(base_url, |_| Ok(()), http)
    }

    /// One endpoint per comma-separated URL, each checked by `check`.
    fn over(
        base_urls: &str,
        check: impl Fn(&http::Uri) -> anyhow::Result<()>,
        http: HttpClient,
    ) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for url in base_urls.split(',').map(str::trim) {
            let uri: http::Uri = url.parse()?;
            check(&uri)?;
            let config = ClientConfig::new(uri).with_default_timeout(CALL_TIMEOUT_DEFAULT);
            nodes.push(Endpoint {
                inner: BoundaryServiceClient::new(http.clone(), config.clone()),
                ops: OperationsServiceClient::new(http.clone(), config),
            });
        }
        anyhow::ensure!(!nodes.is_empty(), "no URL given");
        Ok(Self {
            nodes: nodes.into(),
            current: Default::default(),
            call_timeout: CALL_TIMEOUT_DEFAULT,
        })
    }

    /// Sets the calls' deadline (`call_timeout`); a client of a zone of
    /// several nodes sets it a little above the nodes' `[nats]
    /// request_timeout` to move past a frozen node quickly.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        assert!(!timeout.is_zero(), "a call needs time to be answered");
        self.call_timeout = timeout;
        self
    }

    fn call_options(&self, wait: Duration) -> connectrpc::client::CallOptions {
        connectrpc::client::CallOptions::default().with_timeout(self.call_timeout + wait)
    }

    fn node(&self) -> &Endpoint {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.nodes[i % self.nodes.len()]
    }

    /// Runs `call` on the current node, moving on to the next on a
    /// failover error (see the module documentation).
    async fn failover<T, F, Fut>(&self, call: F) -> Result<T, ConnectError>
    where
        F: Fn(BoundaryServiceClient<HttpClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectError>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let attempts = self.nodes.len() as u32 * FAILOVER_TURNS_MAX;
        let mut pause = FAILOVER_PAUSE_FIRST;
        let mut attempt = 1;
        loop {
            let i = self.current.load(Relaxed) % self.nodes.len();
            match call(self.nodes[i].inner.clone()).await {
                Err(e) if self.nodes.len() > 1 && attempt < attempts && is_failover(&e) => {
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % self.nodes.len(),
                        Relaxed,
                        Relaxed,
                    );
                    if attempt % self.nodes.len() as u32 == 0 {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(FAILOVER_PAUSE_MAX);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Mutual-TLS Connect client for `https://host:port`, presenting the
    /// given certificate and trusting only the given CA.
    pub fn connect_tls(
        base_url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let check = |uri: &http::Uri| {
            anyhow::ensure!(
                uri.scheme_str() == Some("https"),
                "a TLS client needs an https:// URL, got {uri}"
            );
            Ok(())
        };
        Self::over(base_url, check, HttpClient::with_tls(tls))
    }

    /// `https://` with the files, `http://` without: what the CLI uses.
    pub fn from_files(
        base_url: &str,
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => {
                Self::connect_tls(base_url, crate::tls::client::client_config(ca, cert, key)?)
            }
            (None, None, None) => Self::connect(base_url),
            _ => anyhow::bail!(
                "--ca, --cert and --tls-key (BSFG_CA, BSFG_CERT, BSFG_KEY) go together"
            ),
        }
    }

    pub async fn status(&self) -> Result<GetStatusResponse, ConnectError> {
        Ok(self
            .node()
            .ops
            .get_status(GetStatusRequest::default())
            .await?
            .into_owned())
    }

    pub async fn reset_consumer(
        &self,
        consumer: &str,
        position: reset_consumer_request::Position,
    ) -> Result<u64, ConnectError> {
        let request = ResetConsumerRequest {
            consumer_name: consumer.into(),
            position: Some(position),
            ..Default::default()
        };
        Ok(self
            .node()
            .ops
            .reset_consumer(request)
            .await?
            .into_owned()
            .frontier)
    }

    pub async fn append(
        &self,
        envelope: Envelope,
        fact: Fact,
    ) -> Result<AppendFactResponse, ConnectError> {
        let request = AppendFactRequest {
            envelope: envelope.into(),
            fact: fact.into(),
            ..Default::default()
        };
        let options = self.call_options(Duration::ZERO);
        let response = self
            .failover(|node| {
                let (request, options) = (request.clone(), options.clone());
                async move { node.append_fact_with_options(request, options).await }
            })
            .await?;
        Ok(response.into_owned())
    }

    /// Appends several facts in one request (at most 1,000): one answer per
    /// fact, by position, each `Ok` (stored or duplicate) or the refusal its
    /// own AppendFact would have had. The facts are stored in the order
    /// given; a fact refused `unavailable` holds back those after it (retry
    /// them, or the whole request: stored facts answer `duplicate`).
    pub async fn append_facts(
        &self,
        facts: Vec<(Envelope, Fact)>,
    ) -> Result<Vec<Result<AppendFactResponse, FactRefusal>>, ConnectError> {
        let request = AppendFactsRequest {
            facts: facts
                .into_iter()
                .map(|(envelope, fact)| AppendFactRequest {
                    envelope: envelope.into(),
                    fact: fact.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let count = request.facts.len();
        let options = self.call_options(Duration::ZERO);
        let response = self
            .failover(|node| {
                let (request, options) = (request.clone(), options.clone());
                async move { node.append_facts_with_options(request, options).await }
            })
            .await?;
        let results = response.into_owned().results;
        if results.len() != count {
            return Err(ConnectError::new(
                connectrpc::ErrorCode::Internal,
                format!(
                    "the node answered {} results for {count} facts",
                    results.len()
                ),
            ));
        }
        Ok(results
            .into_iter()
            .map(|r| match r.result {
                Some(append_fact_result::Result::Appended(a)) => Ok(*a),
                Some(append_fact_result::Result::Refused(f)) => Err(*f),
                None => Err(FactRefusal {
                    code: "unknown".into(),
                    reason: "missing_result".into(),
                    message: "the node sent no result for this fact".into(),
                    ..Default::default()
                }),
            })
            .collect())
    }

    pub async fn fetch(
        &self,
        consumer: &str,
        limit: u32,
        max_bytes: u64,
        wait_ms: u32,
    ) -> Result<FetchFactsResponse, ConnectError> {
        self.fetch_request(FetchFactsRequest {
            consumer_name: consumer.into(),
            limit,
            max_bytes,
            wait_ms,
            ..Default::default()
        })
        .await
    }

    /// FetchFacts with every field, e.g. `restart_from_frontier`.
    pub async fn fetch_request(
        &self,
        request: FetchFactsRequest,
    ) -> Result<FetchFactsResponse, ConnectError> {
        Ok(self.fetch_view(request).await?.to_owned_message())
    }

    /// FetchFacts, the answer left as a view of the received bytes: a
    /// caller that copies out only what it keeps (the replicator) copies
    /// each fact once.
    pub async fn fetch_view(
        &self,
        request: FetchFactsRequest,
    ) -> Result<OwnedView<FetchFactsResponseView<'static>>, ConnectError> {
        let options = self.call_options(Duration::from_millis(u64::from(request.wait_ms)));
        let attempted = std::sync::atomic::AtomicBool::new(false);
        let response = self
            .failover(|node| {
                let (mut request, options) = (request.clone(), options.clone());
                // An attempt that failed may have been served, its answer
                // lost (a connection broken mid-call, a deadline passed):
                // its facts were delivered but never taken in. The repeat
                // redelivers from the frontier, so that no later confirm
                // covers them.
                if attempted.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    request.restart_from_frontier = true;
                }
                async move { node.fetch_facts_with_options(request, options).await }
            })
            .await?;
        Ok(response.into_view())
    }

    pub async fn confirm(&self, consumer: &str, offset: u64) -> Result<u64, ConnectError> {
        let request = ConfirmReceiptRequest {
            consumer_name: consumer.into(),
            offset,
            ..Default::default()
        };
        let options = self.call_options(Duration::ZERO);
        let response = self
            .failover(|node| {
                let (request, options) = (request.clone(), options.clone());
                async move { node.confirm_receipt_with_options(request, options).await }
            })
            .await?;
        Ok(response.into_owned().frontier)
    }

    /// Uploads from any stream of chunks; the header goes first.
    pub async fn put_object<S>(
        &self,
        header: PutObjectHeader,
        chunks: S,
        timeout: Duration,
    ) -> Result<PutObjectResponse, ConnectError>
    where
        S: futures::Stream<Item = Vec<u8>> + Send + 'static,
    {
        use futures::StreamExt;
        let first = futures::stream::once(futures::future::ready(PutObjectRequest {
            part: Some(put_object_request::Part::Header(Box::new(header))),
            ..Default::default()
        }));
        let rest = chunks.map(|chunk| PutObjectRequest {
            part: Some(put_object_request::Part::Chunk(chunk)),
            ..Default::default()
        });
        let options = connectrpc::client::CallOptions::default().with_timeout(timeout);
        Ok(self
            .node()
            .inner
            .put_object_with_options(first.chain(rest), options)
            .await?
            .into_owned())
    }

    /// Streams an object to `sink`, starting at `start`. Returns its info.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        timeout: Duration,
        mut sink: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> Result<ObjectInfo, anyhow::Error> {
        self.get_object_with(
            bucket,
            key,
            start,
            timeout,
            |_| {},
            |offset, chunk| std::future::ready(sink(offset, &chunk)),
        )
        .await
    }

    /// Like [`Self::get_object`], with an asynchronous sink that owns each
    /// chunk (e.g. forwards it over a bounded channel: back-pressure
    /// reaches the network). `on_info` sees the object's info as soon as it
    /// arrives, before any chunk (the node sends it first).
    pub async fn get_object_with<F>(
        &self,
        bucket: &str,
        key: &str,
        start: u64,
        timeout: Duration,
        mut on_info: impl FnMut(&ObjectInfo),
        mut sink: impl FnMut(u64, Vec<u8>) -> F,
    ) -> Result<ObjectInfo, anyhow::Error>
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        let request = GetObjectRequest {
            bucket: bucket.into(),
            key: key.into(),
            start_offset_bytes: start,
            ..Default::default()
        };
        let options = connectrpc::client::CallOptions::default().with_timeout(timeout);
        let mut stream = self
            .node()
            .inner
            .get_object_with_options(request, options)
            .await?;
        let mut info = None;
        while let Some(message) = stream.message::<GetObjectResponse>().await? {
            let message = message.to_owned_message();
            if let Some(i) = message.info.into_option() {
                on_info(&i);
                info = Some(i);
            }
            if !message.chunk.is_empty() {
                sink(message.offset_bytes, message.chunk).await?;
            }
        }
        if let Some(e) = stream.error() {
            return Err(anyhow::anyhow!(
                "{}: {}",
                e.code.as_str(),
                e.message.clone().unwrap_or_default()
            ));
        }
        info.ok_or_else(|| anyhow::anyhow!("GetObject ended without object info"))
    }
}
