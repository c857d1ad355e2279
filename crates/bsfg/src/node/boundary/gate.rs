//! The gate every request passes before the RPC layer reads its body:
//!
//! 1. **identify** the caller from its certificate; an identity that names
//!    no principal is refused, audited and counted without a byte of its
//!    body read or inflated;
//! 2. **admit** it into the node's request memory budget with what its
//!    route can make the node hold (`routes`); a request that cannot be
//!    admitted in time is refused `resource_exhausted` / `node_busy`;
//! 3. **guard** its body: a size bound and a deadline (`body`);
//! 4. hand it to the RPC layer, and answer a body that hit a bound with
//!    that bound's code and reason instead of the RPC layer's generic one.

use super::body::{BodyBounds, BodyFault, FaultCell, GuardedBody};
use super::routes::{Route, Routes};
use crate::metrics::{Metrics, labels};
use crate::node::audit::{Audit, AuditEvent};
use crate::node::auth::{Auth, Identified, Unidentified};
use crate::node::errors::to_connect;
use bsfg_domain::{Code, Reason, Rejection};
use connectrpc::server::PeerCerts;
use connectrpc::{ConnectRpcBody, ConnectRpcService, Router};
use http::{HeaderMap, Request, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

/// Headers that announce a compressed body (Connect unary, Connect
/// streaming, gRPC).
const ENCODING_HEADERS: [&str; 3] = [
    "content-encoding",
    "connect-content-encoding",
    "grpc-encoding",
];

pub struct Gate {
    inner: ConnectRpcService<Router>,
    routes: Routes,
    auth: Auth,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    /// Bytes of request memory the node admits at once.
    budget: Arc<Semaphore>,
    /// Unary bodies complete within it; streams send a frame within it.
    body_timeout: Duration,
}

impl Gate {
    pub fn new(
        inner: ConnectRpcService<Router>,
        routes: Routes,
        auth: Auth,
        audit: Arc<Audit>,
        metrics: Arc<Metrics>,
        budget_bytes: usize,
        body_timeout: Duration,
    ) -> Self {
        assert!(
            budget_bytes >= routes.cost_bytes_max(),
            "the request budget admits the largest request (config checked)"
        );
        let budget = Arc::new(Semaphore::new(budget_bytes));
        Self {
            inner,
            routes,
            auth,
            audit,
            metrics,
            budget,
            body_timeout,
        }
    }

    /// Serves one request (see the module docs for the steps).
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ConnectRpcBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let route = self.routes.find(request.uri().path());
        let identified = match request.extensions().get::<Arc<Identified>>() {
            Some(identified) => identified.0.clone(),
            None => self
                .auth
                .identify(request.extensions().get::<PeerCerts>().map(|c| &c.0[..])),
        };
        if let Err(unidentified) = identified {
            return self
                .unidentified(route, unidentified, request.headers())
                .await;
        }
        let (declared, compressed) = body_shape(request.headers());
        let message_bytes = if compressed {
            route.message_bytes_max
        } else {
            declared.unwrap_or(route.message_bytes_max)
        };
        let _admitted = match self.admit(route, route.cost_bytes(message_bytes)).await {
            Ok(permit) => permit,
            Err(rejection) => return self.refuse(route, rejection, request.headers()),
        };
        // What answering in the caller's protocol needs (its content type),
        // kept in case the body fails a bound after the request moved on.
        let mut headers = HeaderMap::new();
        if let Some(content_type) = request.headers().get(http::header::CONTENT_TYPE) {
            headers.insert(http::header::CONTENT_TYPE, content_type.clone());
        }
        let fault = FaultCell::default();
        let wire_declared = if compressed { None } else { declared };
        let bounds = BodyBounds {
            limit_bytes: route.wire_bytes_max(wire_declared),
            timeout: self.body_timeout,
            streaming: route.streaming_request,
        };
        let request = request.map(|body| GuardedBody::new(body, bounds, fault.clone()));
        let Ok(response) = self.inner.clone().call(request).await;
        match fault.get() {
            Some(fault) => self.refuse(route, body_rejection(route, *fault), &headers),
            None => response,
        }
    }

    /// Identifies a connection's caller once, for all its requests.
    pub fn identify(&self, chain: Option<&PeerCerts>) -> Arc<Identified> {
        Arc::new(Identified(self.auth.identify(chain.map(|c| &c.0[..]))))
    }

    /// Waits (at most a body timeout) for `cost_bytes` of the budget.
    async fn admit(
        &self,
        route: Route,
        cost_bytes: usize,
    ) -> Result<OwnedSemaphorePermit, Rejection> {
        let permits = u32::try_from(cost_bytes).expect("a route's cost fits in u32");
        match tokio::time::timeout(
            self.body_timeout,
            self.budget.clone().acquire_many_owned(permits),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::new(
                Code::ResourceExhausted,
                Reason::NodeBusy,
                format!(
                    "the node's request memory is taken by other requests and {} could not be admitted within {:?}; retry with backoff",
                    route.rpc, self.body_timeout
                ),
            )),
        }
    }

    /// Refuses a caller whose certificate names no principal; audited.
    async fn unidentified(
        &self,
        route: Route,
        u: Unidentified,
        headers: &HeaderMap,
    ) -> Response<ConnectRpcBody> {
        self.metrics
            .access_refusals_total
            .get_or_create(&labels(&[("reason", u.rejection.reason.as_str())]))
            .inc();
        self.audit
            .record(AuditEvent::unidentified(route.rpc, String::new(), &u))
            .await;
        self.refuse(route, u.rejection, headers)
    }

    /// Answers a refusal in the caller's protocol; logged and counted.
    fn refuse(&self, route: Route, r: Rejection, headers: &HeaderMap) -> Response<ConnectRpcBody> {
        let l = labels(&[("rpc", route.rpc), ("reason", r.reason.as_str())]);
        self.metrics.boundary_refusals_total.get_or_create(&l).inc();
        let reason = r.reason.as_str();
        tracing::info!(rpc = route.rpc, outcome = "rejected", reason, message = %r.message);
        to_connect(r).into_http_response(headers)
    }
}

/// The declared body length, and whether the body is compressed.
fn body_shape(headers: &HeaderMap) -> (Option<usize>, bool) {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let compressed = ENCODING_HEADERS
        .iter()
        .any(|h| headers.get(*h).is_some_and(|v| v.as_bytes() != b"identity"));
    (declared, compressed)
}

/// The refusal for a body that hit a bound.
fn body_rejection(route: Route, fault: BodyFault) -> Rejection {
    match fault {
        BodyFault::TooLarge { limit_bytes } if route.rpc == "AppendFact" => Rejection::invalid(
            Reason::FactTooLarge,
            format!(
                "the AppendFact request is larger than {limit_bytes} bytes (the fact limit plus its envelope); send a smaller fact and put large content in an artifact"
            ),
        ),
        BodyFault::TooLarge { limit_bytes } => Rejection::invalid(
            Reason::RequestTooLarge,
            format!(
                "the {} request is larger than {limit_bytes} bytes",
                route.rpc
            ),
        ),
        BodyFault::Late {
            timeout,
            streaming: false,
        } => Rejection::new(
            Code::DeadlineExceeded,
            Reason::RequestBodyTimeout,
            format!(
                "the {} request body did not arrive within {timeout:?}",
                route.rpc
            ),
        ),
        BodyFault::Late {
            timeout,
            streaming: true,
        } => Rejection::new(
            Code::DeadlineExceeded,
            Reason::RequestBodyTimeout,
            format!("the {} stream sent nothing for {timeout:?}", route.rpc),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_or_declared_bodies_are_told_apart() {
        let mut h = HeaderMap::new();
        assert_eq!(body_shape(&h), (None, false));
        h.insert("content-length", "1234".parse().unwrap());
        assert_eq!(body_shape(&h), (Some(1234), false));
        h.insert("grpc-encoding", "identity".parse().unwrap());
        assert_eq!(body_shape(&h), (Some(1234), false));
        h.insert("connect-content-encoding", "zstd".parse().unwrap());
        assert_eq!(body_shape(&h), (Some(1234), true));
    }
}
