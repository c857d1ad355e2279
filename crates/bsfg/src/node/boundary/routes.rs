//! What each RPC of the boundary port may make the node hold: the largest
//! message it accepts and, from that, the memory it is admitted with.

use crate::config::ZoneConfig;
use bsfg_proto::bsfg::v1::{
    BOUNDARY_SERVICE_APPEND_FACT_SPEC, BOUNDARY_SERVICE_APPEND_FACTS_SPEC,
    BOUNDARY_SERVICE_CONFIRM_RECEIPT_SPEC, BOUNDARY_SERVICE_FETCH_FACTS_SPEC,
    BOUNDARY_SERVICE_GET_OBJECT_SPEC, BOUNDARY_SERVICE_PUT_OBJECT_SPEC,
    OPERATIONS_SERVICE_GET_STATUS_SPEC, OPERATIONS_SERVICE_RESET_CONSUMER_SPEC,
};
use connectrpc::{Spec, StreamType};

/// Room for an AppendFact's envelope and framing around the largest fact.
const ENVELOPE_BYTES_MAX: usize = 64 * 1024;
/// Largest AppendFacts message when the fact limit is smaller: room for
/// hundreds of typical facts (a few hundred bytes each).
const APPEND_FACTS_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Largest message of the small requests (fetch, confirm, status, reset,
/// object reads): a few names and numbers.
const SMALL_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest PutObject message: a chunk of up to 1 MiB plus its framing.
/// Clients send 64–256 KiB chunks; a larger chunk only costs admission.
pub const PUT_OBJECT_MESSAGE_BYTES_MAX: usize = 1024 * 1024 + 64 * 1024;
/// A request's memory is admitted as this many times its largest message:
/// the received bytes, the inflated bytes, the decoded message and the
/// record built from it can all be alive at once.
const MEMORY_PER_MESSAGE_BYTES: usize = 4;
/// Headers, tasks and buffers of one request, whatever its body.
const REQUEST_BASE_BYTES: usize = 16 * 1024;

/// One RPC of the boundary port.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The method name, for logs, metrics and audit records.
    pub rpc: &'static str,
    /// Client-streamed request (PutObject): bounded per message, not in
    /// total, and read with an idle timeout instead of a deadline.
    pub streaming_request: bool,
    /// Largest single message (after inflation).
    pub message_bytes_max: usize,
}

/// Every route of the node, and the fallback for unknown paths (the RPC
/// layer answers those without reading a body).
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<(&'static str, Route)>,
    unknown: Route,
}

impl Routes {
    pub fn new(config: &ZoneConfig) -> Self {
        let small = |spec: Spec, rpc| {
            (
                spec.procedure,
                Route {
                    rpc,
                    streaming_request: false,
                    message_bytes_max: SMALL_MESSAGE_BYTES_MAX,
                },
            )
        };
        let append = Route {
            rpc: "AppendFact",
            streaming_request: false,
            message_bytes_max: config.limits.fact_bytes_max + ENVELOPE_BYTES_MAX,
        };
        // At least one largest fact with its envelope fits.
        let append_facts = Route {
            rpc: "AppendFacts",
            streaming_request: false,
            message_bytes_max: APPEND_FACTS_MESSAGE_BYTES_MAX
                .max(config.limits.fact_bytes_max + ENVELOPE_BYTES_MAX),
        };
        let put = Route {
            rpc: "PutObject",
            streaming_request: true,
            message_bytes_max: PUT_OBJECT_MESSAGE_BYTES_MAX,
        };
        debug_assert_eq!(
            BOUNDARY_SERVICE_PUT_OBJECT_SPEC.stream_type,
            StreamType::ClientStream
        );
        let routes = vec![
            (BOUNDARY_SERVICE_APPEND_FACT_SPEC.procedure, append),
            (BOUNDARY_SERVICE_APPEND_FACTS_SPEC.procedure, append_facts),
            small(BOUNDARY_SERVICE_FETCH_FACTS_SPEC, "FetchFacts"),
            small(BOUNDARY_SERVICE_CONFIRM_RECEIPT_SPEC, "ConfirmReceipt"),
            (BOUNDARY_SERVICE_PUT_OBJECT_SPEC.procedure, put),
            small(BOUNDARY_SERVICE_GET_OBJECT_SPEC, "GetObject"),
            small(OPERATIONS_SERVICE_GET_STATUS_SPEC, "GetStatus"),
            small(OPERATIONS_SERVICE_RESET_CONSUMER_SPEC, "ResetConsumer"),
        ];
        let unknown = Route {
            rpc: "unknown",
            streaming_request: false,
            message_bytes_max: SMALL_MESSAGE_BYTES_MAX,
        };
        Self { routes, unknown }
    }

    pub fn find(&self, path: &str) -> Route {
        self.routes
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(self.unknown, |(_, r)| *r)
    }

    /// Each route's path and route, for the RPC layer's per-route limits.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, Route)> + '_ {
        self.routes.iter().copied()
    }

    /// The most any one request can be admitted with.
    pub fn cost_bytes_max(&self) -> usize {
        self.routes
            .iter()
            .map(|(_, r)| r.cost_bytes(r.message_bytes_max))
            .max()
            .unwrap_or(0)
    }
}

impl Route {
    /// Bytes the request body may have on the wire (unary only; a stream is
    /// bounded per message). A declared length, uncompressed, is all the
    /// body may be.
    pub fn wire_bytes_max(&self, declared: Option<usize>) -> Option<usize> {
        // The gRPC and Connect-streaming envelope adds 5 bytes a message.
        let framed = self.message_bytes_max + 5;
        (!self.streaming_request).then(|| declared.map_or(framed, |d| d.min(framed)))
    }

    /// Memory this request is admitted with: its largest message, or the
    /// declared length of an uncompressed body, times what decoding it can
    /// keep alive at once.
    pub fn cost_bytes(&self, message_bytes: usize) -> usize {
        message_bytes.min(self.message_bytes_max) * MEMORY_PER_MESSAGE_BYTES + REQUEST_BASE_BYTES
    }

    /// The limits the RPC layer applies to this route (a little above the
    /// gate's, so the gate's precise refusal comes first).
    pub fn rpc_limits(&self) -> connectrpc::Limits {
        connectrpc::Limits::default()
            .with_max_message_size(self.message_bytes_max)
            .with_max_request_body_size(self.message_bytes_max + 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZoneConfig {
        toml::from_str("zone = \"plant-a\"\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n[tls]\nmode = \"plaintext-dev\"\n").unwrap()
    }

    #[test]
    fn every_route_is_bounded_and_unknown_paths_are_small() {
        let routes = Routes::new(&config());
        let append = routes.find("/bsfg.v1.BoundaryService/AppendFact");
        assert_eq!(append.message_bytes_max, 256 * 1024 + ENVELOPE_BYTES_MAX);
        assert_eq!(
            append.wire_bytes_max(None),
            Some(append.message_bytes_max + 5)
        );
        assert_eq!(
            append.wire_bytes_max(Some(300)),
            Some(300),
            "a declared length bounds the body"
        );
        let put = routes.find("/bsfg.v1.BoundaryService/PutObject");
        assert!(put.streaming_request && put.wire_bytes_max(None).is_none());
        assert_eq!(routes.find("/evil/Path").rpc, "unknown");
        assert_eq!(
            routes.find("/evil/Path").message_bytes_max,
            SMALL_MESSAGE_BYTES_MAX
        );
        assert_eq!(routes.all().count(), 8);
        let batch = routes.find("/bsfg.v1.BoundaryService/AppendFacts");
        assert_eq!(batch.message_bytes_max, APPEND_FACTS_MESSAGE_BYTES_MAX);
        assert_eq!(routes.cost_bytes_max(), put.cost_bytes(usize::MAX));
        assert!(append.cost_bytes(1000) < append.cost_bytes(usize::MAX));
    }
}
