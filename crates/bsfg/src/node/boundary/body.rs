//! A request body with a deadline and a size bound, which records why it
//! failed so the gate can answer with a precise code.
//!
//! Why: hyper and the RPC layer read a request body for as long as the
//! client keeps the stream open. A body that never completes held its
//! buffers (and the node's memory) until the connection died; with the
//! bound and the deadline, a late or oversized body fails, its memory is
//! freed, and the caller is told which limit it hit.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Which limit a body hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// More bytes than the method accepts.
    TooLarge { limit_bytes: usize },
    /// Not complete in time (unary), or no data for too long (streams).
    Late { timeout: Duration, streaming: bool },
}

/// Shared between a guarded body and the gate that made it.
pub type FaultCell = Arc<OnceLock<BodyFault>>;

/// How the body is bounded.
#[derive(Debug, Clone, Copy)]
pub struct BodyBounds {
    /// Most bytes read in total (None for streams, bounded per message by
    /// the RPC layer instead).
    pub limit_bytes: Option<usize>,
    /// Unary: the whole body within this time. Streams: each frame within
    /// this time of the previous one.
    pub timeout: Duration,
    pub streaming: bool,
}

/// Why a guarded body failed: a bound, or the transport under it (a reset
/// stream, a broken connection).
#[derive(Debug)]
pub enum BodyError {
    Bound(BodyFault),
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Bound(BodyFault::TooLarge { limit_bytes }) => {
                write!(f, "request body larger than {limit_bytes} bytes")
            }
            BodyError::Bound(BodyFault::Late { timeout, .. }) => {
                write!(f, "request body not received within {timeout:?}")
            }
            BodyError::Transport(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

pub struct GuardedBody<B> {
    inner: B,
    bounds: BodyBounds,
    read_bytes: usize,
    timer: Pin<Box<Sleep>>,
    fault: FaultCell,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, bounds: BodyBounds, fault: FaultCell) -> Self {
        let timer = Box::pin(tokio::time::sleep(bounds.timeout));
        Self {
            inner,
            bounds,
            read_bytes: 0,
            timer,
            fault,
        }
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let _ = self.fault.set(fault);
        Poll::Ready(Some(Err(BodyError::Bound(fault))))
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timer.as_mut().poll(cx).is_ready() {
            let late = BodyFault::Late {
                timeout: this.bounds.timeout,
                streaming: this.bounds.streaming,
            };
            return this.fail(late);
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(BodyError::Transport(Box::new(e)))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            this.read_bytes += data.len();
            if let Some(limit_bytes) = this.bounds.limit_bytes
                && this.read_bytes > limit_bytes
            {
                return this.fail(BodyFault::TooLarge { limit_bytes });
            }
        }
        if this.bounds.streaming {
            this.timer
                .as_mut()
                .reset(Instant::now() + this.bounds.timeout);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full, StreamBody};

    fn bounds(limit_bytes: Option<usize>, timeout_ms: u64, streaming: bool) -> BodyBounds {
        BodyBounds {
            limit_bytes,
            timeout: Duration::from_millis(timeout_ms),
            streaming,
        }
    }

    #[tokio::test]
    async fn a_body_within_its_bounds_passes_whole() {
        let fault = FaultCell::default();
        let body = GuardedBody::new(
            Full::new(Bytes::from_static(b"hello")),
            bounds(Some(5), 1000, false),
            fault.clone(),
        );
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(fault.get(), None);
    }

    #[tokio::test]
    async fn a_body_over_its_limit_fails_and_says_so() {
        let fault = FaultCell::default();
        let body = GuardedBody::new(
            Full::new(Bytes::from_static(b"hello!")),
            bounds(Some(5), 1000, false),
            fault.clone(),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(fault.get(), Some(&BodyFault::TooLarge { limit_bytes: 5 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_completes_fails_at_its_deadline() {
        let fault = FaultCell::default();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = GuardedBody::new(
            StreamBody::new(Box::pin(stream)),
            bounds(None, 30_000, false),
            fault.clone(),
        );
        let started = Instant::now();
        assert!(body.collect().await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(
            fault.get(),
            Some(&BodyFault::Late {
                timeout: Duration::from_secs(30),
                streaming: false
            })
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_sending_outlives_the_idle_timeout() {
        let fault = FaultCell::default();
        let frames = futures::stream::unfold(0, |n| async move {
            if n == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"chunk"))),
                n + 1,
            ))
        });
        let body = GuardedBody::new(
            StreamBody::new(Box::pin(frames)),
            bounds(None, 30_000, true),
            fault.clone(),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 25, "100 s of data, never 30 s idle");
        assert_eq!(fault.get(), None);
    }
}
