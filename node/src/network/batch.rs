//! Natural batching of calls to one peer.
//!
//! Every replica read and write of a put or get is a small call to a peer. Sent one RPC
//! each, their HTTP/2 framing, header coding and task wake-ups cost more CPU than the
//! storage work itself. A [`Batcher`] queues the calls for one peer and sends what has
//! queued as one RPC (for [`super::GrpcTransport`], one message of the peer's
//! `Replica.Session` stream), with at most `max_inflight` RPCs outstanding:
//!
//! - with nothing in flight, a call goes out at once: no timer, no added latency at
//!   concurrency 1;
//! - while RPCs are in flight, calls queue up and the next RPC carries all of them, so
//!   the batch size follows the load.
//!
//! Each caller keeps its own deadline (it stops waiting when it passes); the RPC carrying a
//! batch gets the latest deadline of the calls in it. A failed RPC fails every call in it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::PeerError;

/// How a [`Batcher`] groups calls.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most calls in one RPC.
    pub max_items: usize,
    /// Most bytes (as the callers size them) in one RPC; a single larger call still goes.
    pub max_bytes: usize,
    /// Most RPCs outstanding to the peer at once.
    pub max_inflight: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_items: 256,
            max_bytes: crate::config::PEER_BATCH_BYTES,
            max_inflight: 2,
        }
    }
}

struct Job<I, O> {
    item: I,
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<O, PeerError>>,
}

/// Queues calls of one kind to one peer and sends them in batches.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Job<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batching task. `call` sends one batch and must answer with one output
    /// per input, in order. Must be called inside a tokio runtime; the task ends when the
    /// batcher is dropped.
    pub fn spawn<F, Fut>(limits: BatchLimits, call: F) -> Self
    where
        F: Fn(Vec<I>, Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, PeerError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(limits, rx, call));
        Self { tx }
    }

    /// Sends `item` (of about `bytes` bytes) with the next batch and waits for its answer,
    /// for at most `timeout`.
    pub async fn call(&self, item: I, bytes: usize, timeout: Duration) -> Result<O, PeerError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        let job = Job {
            item,
            bytes,
            deadline,
            reply,
        };
        if self.tx.send(job).is_err() {
            return Err(PeerError::Status(tonic::Status::unavailable(
                "peer connection is shutting down",
            )));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(PeerError::Status(tonic::Status::internal(
                "batch was dropped without an answer",
            ))),
            Err(_) => Err(PeerError::Timeout(timeout)),
        }
    }
}

async fn run<I, O, F, Fut>(limits: BatchLimits, mut rx: mpsc::UnboundedReceiver<Job<I, O>>, call: F)
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Vec<I>, Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, PeerError>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    let mut carried: Option<Job<I, O>> = None;
    loop {
        // Wait for a free slot first: what queues meanwhile goes out together.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut jobs = vec![first];
        while jobs.len() < limits.max_items {
            match rx.try_recv() {
                Ok(job) if bytes + job.bytes > limits.max_bytes => {
                    carried = Some(job);
                    break;
                }
                Ok(job) => {
                    bytes += job.bytes;
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up need no answer.
        jobs.retain(|j| !j.reply.is_closed());
        let Some(deadline) = jobs.iter().map(|j| j.deadline).max() else {
            continue;
        };
        let (items, replies): (Vec<I>, Vec<_>) =
            jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
        let sent = call(items, deadline.saturating_duration_since(Instant::now()));
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tokio::time::timeout_at(deadline, sent).await {
                Ok(r) => r,
                Err(_) => Err(PeerError::Timeout(Duration::ZERO)),
            };
            match result {
                Ok(outs) if outs.len() == replies.len() => {
                    for (reply, out) in replies.into_iter().zip(outs) {
                        let _ = reply.send(Ok(out));
                    }
                }
                Ok(outs) => {
                    let e = PeerError::Corrupt(format!(
                        "peer answered {} of {} calls in a batch",
                        outs.len(),
                        replies.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A peer that records batch sizes and answers each item doubled after `delay`.
    fn doubling(
        limits: BatchLimits,
        delay: Duration,
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> Arc<Batcher<u32, u32>> {
        Arc::new(Batcher::spawn(limits, move |items: Vec<u32>, _| {
            sizes.lock().push(items.len());
            async move {
                tokio::time::sleep(delay).await;
                Ok(items.into_iter().map(|i| i * 2).collect())
            }
        }))
    }

    #[tokio::test]
    async fn a_lone_call_goes_out_alone_and_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let b = doubling(BatchLimits::default(), Duration::ZERO, sizes.clone());
        assert_eq!(b.call(21, 1, Duration::from_secs(1)).await.unwrap(), 42);
        assert_eq!(*sizes.lock(), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_queued_behind_inflight_rpcs_share_one() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = BatchLimits {
            max_inflight: 1,
            ..BatchLimits::default()
        };
        let b = doubling(limits, Duration::from_millis(10), sizes.clone());
        let calls: Vec<_> = (0..50u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i, 1, Duration::from_secs(1)).await) })
            })
            .collect();
        for c in calls {
            let (i, r) = c.await.unwrap();
            assert_eq!(r.unwrap(), i * 2, "every caller gets its own answer");
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(
            sizes.len() < 50,
            "calls made while an RPC was in flight were batched: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_on_items_and_bytes_split_batches() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = BatchLimits {
            max_items: 4,
            max_bytes: 10,
            max_inflight: 1,
        };
        let b = doubling(limits, Duration::from_millis(10), sizes.clone());
        // Occupy the only slot so that everything after queues.
        let blocker = {
            let b = b.clone();
            tokio::spawn(async move { b.call(0, 1, Duration::from_secs(1)).await })
        };
        while sizes.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let calls: Vec<_> = (1..=6u32)
            .map(|i| {
                let b = b.clone();
                // Items of 3 bytes: at most 3 fit in 10 bytes.
                tokio::spawn(async move { b.call(i, 3, Duration::from_secs(1)).await })
            })
            .collect();
        blocker.await.unwrap().unwrap();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().clone();
        assert_eq!(sizes, vec![1, 3, 3], "bytes bound each batch");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_rpc_fails_every_call_in_it_and_a_slow_one_times_out() {
        let b: Arc<Batcher<u32, u32>> = Arc::new(Batcher::spawn(
            BatchLimits::default(),
            |_items: Vec<u32>, _| async {
                Err(PeerError::Status(tonic::Status::unavailable("down")))
            },
        ));
        let err = b.call(1, 1, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, PeerError::Status(_)), "{err:?}");

        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let slow: Batcher<u32, u32> = Batcher::spawn(BatchLimits::default(), move |items, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(items)
            }
        });
        let started = Instant::now();
        let err = slow
            .call(1, 1, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_answer_is_an_error_not_a_misdelivery() {
        let b: Batcher<u32, u32> =
            Batcher::spawn(BatchLimits::default(), |_items: Vec<u32>, _| async {
                Ok(vec![])
            });
        let err = b.call(1, 1, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, PeerError::Corrupt(_)), "{err:?}");
    }
}
