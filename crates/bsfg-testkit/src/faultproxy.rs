//! A user-space TCP proxy for fault injection and WAN emulation (kernel
//! netem is not available here): it can cut a link (drop every connection
//! and refuse new ones), restore it, and delay every byte by a fixed one-way
//! latency while keeping the stream pipelined (delay, not stop-and-wait).
//! Used by the fault tests, the site demo and the benchmarks; never on a
//! production path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes buffered per direction and connection while delaying.
const DELAY_QUEUE_CHUNKS_MAX: usize = 1024;
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    delay_us: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_from_target: AtomicU64,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("literal"), target).await
    }

    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if accept_state.cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let state = accept_state.clone();
                let handle = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    let up = pump(ir, ow, state.clone(), true);
                    let down = pump(or, iw, state.clone(), false);
                    let _ = tokio::join!(up, down);
                });
                let mut connections = accept_state.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                connections.push(handle);
            }
        });
        Ok(Self {
            addr,
            state,
            acceptor,
        })
    }

    /// Cuts the link: every open connection is dropped, new ones refused.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for c in self.state.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// One-way delay added to every byte in both directions (RTT = 2x).
    pub fn set_delay(&self, one_way: Duration) {
        self.state
            .delay_us
            .store(one_way.as_micros() as u64, Ordering::SeqCst);
    }

    /// Bytes forwarded (client → target, target → client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.state.bytes_to_target.load(Ordering::Relaxed),
            self.state.bytes_from_target.load(Ordering::Relaxed),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    upstream: bool,
) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_QUEUE_CHUNKS_MAX);
    let counter_state = state.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Bytes still queued when the link is cut are lost with it.
            if counter_state.cut.load(Ordering::SeqCst) || to.write_all(&chunk).await.is_err() {
                return;
            }
            let counter = if upstream {
                &counter_state.bytes_to_target
            } else {
                &counter_state.bytes_from_target
            };
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let due = tokio::time::Instant::now()
            + Duration::from_micros(state.delay_us.load(Ordering::Relaxed));
        if tx.send((due, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
