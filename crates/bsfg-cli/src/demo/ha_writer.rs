//! The HA demo's producer: one client given both nodes' URLs appends one
//! fact at a time, in the background, and records every acknowledgement
//! (what was sent, the offset, when). The client moves between the nodes
//! by itself; an append it still returns refused (both nodes refused for
//! a while) is retried with the same message id, as a producer does.

use super::envelope_for;
use super::ha_zone::ZONE;
use bsfg::client::BsfgClient;
use bsfg_proto::bsfg::v1::{Envelope, Fact};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The wait before retrying an append the client returned refused.
const RETRY_DELAY: Duration = Duration::from_millis(50);
/// How long the append in progress may take to be acknowledged once the
/// producer is told to stop.
const STOP_WAIT_MAX: Duration = Duration::from_secs(30);

/// One acknowledged append.
pub(super) struct Ack {
    pub(super) envelope: Envelope,
    pub(super) fact: Fact,
    pub(super) offset: u64,
    pub(super) at: Instant,
}

/// Everything acknowledged so far, in acknowledgement order.
#[derive(Default)]
pub(super) struct Acked {
    pub(super) acks: Vec<Ack>,
    /// Appends the client returned refused (then retried).
    pub(super) refusals: usize,
}

/// The running producer.
pub(super) struct Writer {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts appending through `client`; message ids start with `prefix`.
    pub(super) fn start(client: BsfgClient, prefix: String) -> Self {
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_until(client, prefix, acked.clone(), stop.clone()));
        Self { acked, stop, task }
    }

    /// Facts acknowledged so far.
    pub(super) fn count(&self) -> usize {
        self.lock().acks.len()
    }

    /// When the `n`-th acknowledgement (from 0) came, if it has.
    pub(super) fn ack_at(&self, n: usize) -> Option<Instant> {
        self.lock().acks.get(n).map(|a| a.at)
    }

    /// The longest time between two acknowledgements from the `from`-th on.
    pub(super) fn longest_pause_since(&self, from: usize) -> Duration {
        let acked = self.lock();
        acked.acks[from.min(acked.acks.len())..]
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default()
    }

    /// Waits until the `n`-th acknowledgement (from 0) comes, at most
    /// `within`; when it came.
    pub(super) async fn wait_for_ack(&self, n: usize, within: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = self.ack_at(n) {
                return Ok(at);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no acknowledgement within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops once the append in progress is acknowledged (at most
    /// `STOP_WAIT_MAX`); everything acknowledged.
    pub(super) async fn stop(self) -> anyhow::Result<Acked> {
        let Writer { acked, stop, task } = self;
        stop.store(true, Ordering::Release);
        tokio::time::timeout(STOP_WAIT_MAX, task)
            .await
            .map_err(|_| anyhow::anyhow!("the last append was not acknowledged"))??;
        let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::take(&mut *acked))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Acked> {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn write_until(
    client: BsfgClient,
    prefix: String,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    let lock = || acked.lock().unwrap_or_else(|e| e.into_inner());
    for n in 0.. {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let envelope = envelope_for(&format!("{prefix}-{n}"), ZONE, ZONE);
        let fact = fact_number(n);
        let offset = loop {
            match client.append(envelope.clone(), fact.clone()).await {
                Ok(r) => break r.offset,
                Err(_) => {
                    lock().refusals += 1;
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        };
        lock().acks.push(Ack {
            envelope,
            fact,
            offset,
            at: Instant::now(),
        });
    }
}

/// Fact `n`: a batch step, its object already in canonical JSON (sorted
/// keys, no spaces), so what is stored is byte for byte what was sent.
fn fact_number(n: u64) -> Fact {
    super::fact_of(
        &format!("batch:PlantA/B{n}"),
        "step_completed",
        &format!(r#"{{"n":{n},"operator":"op-17","step":"granulation"}}"#),
    )
}
