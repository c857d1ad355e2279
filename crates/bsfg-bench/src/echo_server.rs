//! The echo server (`echo-server` subcommand): the bare RPC stack, and with
//! `--jetstream` the bare append.

use crate::echo_proto::bench::v1::{EchoRequest, EchoResponse, EchoService, EchoServiceExt as _};
use crate::now_ms;
use async_nats::HeaderMap;
use async_nats::jetstream;
use connectrpc::{RequestContext, Response, ServiceRequest, ServiceResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The echo service; with `store`, a bare append: the request's payload is
/// durably stored in JetStream before the answer. That is the least an
/// AppendFact must do (an RPC, then a JetStream write acknowledged), with
/// none of its own work (validation, canonical JSON, key index, record
/// encoding, logs, metrics), so it is the substrate's floor for AppendFact.
struct Echo {
    store: Option<BareStore>,
}

struct BareStore {
    js: jetstream::Context,
    next: AtomicU64,
    id_prefix: String,
}

#[allow(refining_impl_trait)]
impl EchoService for Echo {
    async fn echo(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, EchoRequest>,
    ) -> ServiceResult<EchoResponse> {
        // Owned decode, like the node's handlers do.
        let request = request.to_owned_message();
        if let Some(store) = &self.store {
            let n = store.next.fetch_add(1, Ordering::Relaxed);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}-{n}", store.id_prefix).as_str());
            let stored = match store
                .js
                .publish_with_headers(
                    format!("bareappend.{}", n % 64),
                    headers,
                    bytes::Bytes::copy_from_slice(&request.payload),
                )
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                return Err(connectrpc::ConnectError::new(
                    connectrpc::ErrorCode::Unavailable,
                    "JetStream did not acknowledge the bare append",
                ));
            }
        }
        Ok(Response::new(EchoResponse {
            payload: request.payload,
            ..Default::default()
        }))
    }
}

pub(crate) async fn echo_server(addr: String, jetstream_url: Option<String>) -> anyhow::Result<()> {
    let store = match jetstream_url {
        Some(url) => {
            // One URL, or several (a cluster) separated by commas.
            let urls = url
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
            let mut js = jetstream::new(async_nats::ConnectOptions::new().connect(urls).await?);
            js.set_timeout(Duration::from_secs(10));
            Some(BareStore {
                js,
                next: AtomicU64::new(0),
                id_prefix: format!("bare-{}-{}", std::process::id(), now_ms()),
            })
        }
        None => None,
    };
    let router = Arc::new(Echo { store }).register(connectrpc::Router::new());
    let service = connectrpc::ConnectRpcService::new(router);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // Same server settings as the node's boundary port.
    let server = connectrpc::Server::from_listener(listener)
        .with_header_read_timeout(Duration::from_secs(10))
        .with_max_connection_idle(Duration::from_secs(300))
        .with_max_concurrent_streams(bsfg::node::MAX_CONCURRENT_STREAMS)
        .with_http2_initial_connection_window_size(bsfg::node::CONNECTION_WINDOW_BYTES)
        .with_http2_initial_stream_window_size(bsfg::node::STREAM_WINDOW_BYTES);
    server
        .serve_with_service(service)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
