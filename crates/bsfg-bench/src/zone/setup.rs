//! The single-zone run's processes and clients: its nats-server, the node,
//! the echo server and the bare append server.

use crate::child::{Child, free_port, nats_server, start_echo_server, start_node};
use crate::cli::Args;
use crate::echo_proto::bench::v1::EchoServiceClient;
use crate::node_config::{node_config, with_sync};
use crate::publish::create_plain_stream;
use crate::rpc::rpc_client;
use async_nats::jetstream;
use bsfg_proto::bsfg::v1::BoundaryServiceClient;
use bsfg_testkit::nats_server::NatsServer;
use connectrpc::Protocol;
use connectrpc::client::SharedHttp2Connection;
use std::path::Path;
use std::time::Duration;

/// What every phase measures with.
pub(super) struct Bench {
    pub(super) nats: NatsServer,
    pub(super) node: Child,
    pub(super) echo: Child,
    pub(super) bare: Child,
    pub(super) js: jetstream::Context,
    /// The node's operations port (metrics).
    pub(super) ops: u16,
    pub(super) bsfg: BoundaryServiceClient<SharedHttp2Connection>,
    pub(super) echo_client: EchoServiceClient<SharedHttp2Connection>,
    pub(super) bare_client: EchoServiceClient<SharedHttp2Connection>,
}

impl Bench {
    /// Stops the echo server, the bare append server, the node and
    /// nats-server, in that order.
    pub(super) fn stop(self) {
        drop(self.echo);
        drop(self.bare);
        drop(self.node);
        drop(self.nats);
    }
}

pub(super) async fn start(
    args: &Args,
    dir: &Path,
    reps: usize,
    protocol: Protocol,
) -> anyhow::Result<Bench> {
    // nats-server
    let nats_port = free_port()?;
    let nats = nats_server(&args.nats_server, dir, "bench", nats_port, &args.nats_sync)
        .start()
        .await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let nc = async_nats::ConnectOptions::new().connect(&nats_url).await?;
    let mut js = jetstream::new(nc.clone());
    js.set_timeout(Duration::from_secs(10));

    // node
    let (port, ops) = (free_port()?, free_port()?);
    // `reps` drain consumers: one per drain repetition.
    let config = node_config((port, ops, nats_port), reps, dir, false)?;
    let config = with_sync(config, &args.nats_sync);
    let node = start_node(
        &args.bsfg,
        &config,
        &dir.join("node.toml"),
        &dir.join("node.log"),
    )
    .await?;

    // echo server (separate process, same RPC stack as the node)
    let echo_port = free_port()?;
    let echo = start_echo_server(dir, echo_port, "echo.log", "echo server", None).await?;
    // The bare append: the same echo server, storing each request in
    // JetStream before it answers (AppendFact's floor, see `Echo`).
    create_plain_stream(&js, "bareappend").await?;
    let bare_port = free_port()?;
    let bare = start_echo_server(
        dir,
        bare_port,
        "bare-append.log",
        "bare append server",
        Some(&format!("nats://127.0.0.1:{nats_port}")),
    )
    .await?;

    let bsfg = rpc_client(port, protocol, None, BoundaryServiceClient::new).await?;
    let echo_client = rpc_client(echo_port, protocol, None, EchoServiceClient::new).await?;
    let bare_client = rpc_client(bare_port, protocol, None, EchoServiceClient::new).await?;
    Ok(Bench {
        nats,
        node,
        echo,
        bare,
        js,
        ops,
        bsfg,
        echo_client,
        bare_client,
    })
}
