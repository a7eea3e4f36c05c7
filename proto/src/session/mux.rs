//! The client side of a session: callers' requests multiplexed over one stream.
//!
//! A [`Mux`] queues requests to a driver task that owns the stream and hands each
//! response to the caller waiting for its id. When the stream cannot be opened or breaks,
//! the mux closes and every caller still waiting gets the error:
//!
//! - [`MuxError::Open`]: the stream could not be opened. If the status's source chain holds
//!   a `tonic::ConnectError`, the connection could not be made and nothing was sent.
//! - [`MuxError::Broken`]: the stream broke after it opened; requests in flight may or may
//!   not have been applied.
//!
//! A closed mux takes no more requests ([`MuxError::Closed`] gives the operation back);
//! its owner opens a new one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};

use super::{Answer, Envelope};

/// Why a request through a [`Mux`] failed.
#[derive(Debug)]
pub enum MuxError<Op> {
    /// The mux had already closed: the operation (given back) was not sent.
    Closed(Op),
    /// The stream could not be opened (see the module's notes on connect failures).
    Open(Status),
    /// The stream broke after it opened: the request may or may not have been applied.
    Broken(Status),
    /// No answer within the time allowed.
    Timeout(Duration),
    /// The server answered the request with this error.
    Failed(Status),
}

/// The failure every waiting caller gets when the stream fails.
#[derive(Clone, Debug)]
enum Failure {
    Open(Status),
    Broken(Status),
}

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

struct State<T> {
    next_id: u64,
    waiting: HashMap<u64, Reply<Result<T, Status>>>,
    closed: bool,
}

fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while holding the lock; recover the state if something did.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a caller's entry when it stops waiting (answered, timed out or dropped).
struct Waiting<'a, T> {
    state: &'a Mutex<State<T>>,
    id: u64,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        lock(self.state).waiting.remove(&self.id);
    }
}

/// One session stream, shared by any number of callers.
pub struct Mux<E: Envelope, A: Answer> {
    tx: mpsc::UnboundedSender<E>,
    state: Arc<Mutex<State<A::Ok>>>,
}

impl<E: Envelope, A: Answer> std::fmt::Debug for Mux<E, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<E: Envelope, A: Answer> Mux<E, A> {
    /// Opens a session with `open`, which starts the call (a generated client's session
    /// method) with the stream of requests. Requests may be queued at once. Must be called
    /// inside a tokio runtime.
    pub fn open<O, F>(open: O) -> Self
    where
        O: FnOnce(UnboundedReceiverStream<E>) -> F,
        F: Future<Output = Result<tonic::Response<Streaming<A>>, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State {
            next_id: 0,
            waiting: HashMap::new(),
            closed: false,
        }));
        let call = open(UnboundedReceiverStream::new(rx));
        tokio::spawn(drive(call, state.clone()));
        Self { tx, state }
    }

    /// Whether the stream has failed or ended (the mux takes no more requests).
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Sends `op` and waits at most `timeout` for its answer.
    pub async fn call(&self, op: E::Op, timeout: Duration) -> Result<A::Ok, MuxError<E::Op>> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(MuxError::Closed(op));
            }
            state.next_id += 1;
            let id = state.next_id;
            state.waiting.insert(id, reply);
            id
        };
        let _waiting = Waiting {
            state: &*self.state,
            id,
        };
        // If the driver has gone, it closed the mux and answered every waiting caller
        // (this one included) first.
        let _ = self.tx.send(E::new(id, op));
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(Ok(ok)))) => Ok(ok),
            Ok(Ok(Ok(Err(status)))) => Err(MuxError::Failed(status)),
            Ok(Ok(Err(Failure::Open(s)))) => Err(MuxError::Open(s)),
            Ok(Ok(Err(Failure::Broken(s)))) => Err(MuxError::Broken(s)),
            Ok(Err(_)) => Err(MuxError::Broken(Status::unavailable("the session ended"))),
            Err(_) => Err(MuxError::Timeout(timeout)),
        }
    }
}

/// A session that reopens itself: the first call opens a [`Mux`], and a call that finds
/// it closed opens a new one. Callers see [`MuxError::Closed`] only if a freshly opened
/// session closed again before taking their operation.
pub struct Reopening<E: Envelope, A: Answer> {
    open: Box<dyn Fn() -> Mux<E, A> + Send + Sync>,
    current: Mutex<Option<Arc<Mux<E, A>>>>,
}

impl<E: Envelope, A: Answer> std::fmt::Debug for Reopening<E, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening").finish_non_exhaustive()
    }
}

impl<E: Envelope, A: Answer> Reopening<E, A> {
    /// A session opened with `open` when first needed (see [`Mux::open`]).
    pub fn new(open: impl Fn() -> Mux<E, A> + Send + Sync + 'static) -> Self {
        Self {
            open: Box::new(open),
            current: Mutex::new(None),
        }
    }

    fn mux(&self) -> Arc<Mux<E, A>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some(m) if !m.is_closed() => m.clone(),
            _ => {
                let m = Arc::new((self.open)());
                *current = Some(m.clone());
                m
            }
        }
    }

    /// Sends `op` over the open session (opening one if needed) and waits at most
    /// `timeout` for its answer. An operation a closed session gave back goes once more,
    /// over a new session.
    pub async fn call(&self, op: E::Op, timeout: Duration) -> Result<A::Ok, MuxError<E::Op>> {
        match self.mux().call(op, timeout).await {
            Err(MuxError::Closed(op)) => self.mux().call(op, timeout).await,
            other => other,
        }
    }
}

/// Opens the stream, hands each response to its caller, and closes the mux when the
/// stream fails or ends.
async fn drive<A, F>(call: F, state: Arc<Mutex<State<A::Ok>>>)
where
    A: Answer,
    F: Future<Output = Result<tonic::Response<Streaming<A>>, Status>>,
{
    let failure = match call.await {
        Err(status) => Failure::Open(status),
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(answer)) => {
                        let (id, result) = answer.into_parts();
                        // None if its caller gave up.
                        let reply = lock(&state).waiting.remove(&id);
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Ok(None) => {
                        break Failure::Broken(Status::unavailable("the server ended the session"))
                    }
                    Err(status) => break Failure::Broken(status),
                }
            }
        }
    };
    let waiting = {
        let mut state = lock(&state);
        state.closed = true;
        std::mem::take(&mut state.waiting)
    };
    for (_, reply) in waiting {
        let _ = reply.send(Err(failure.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{session_request::Op, GetRequest, SessionRequest, SessionResponse};

    fn get() -> Op {
        Op::Get(GetRequest {
            key: b"k".to_vec(),
            r: None,
        })
    }

    #[tokio::test]
    async fn a_stream_that_cannot_open_fails_its_requests_then_refuses_more() {
        let mux: Mux<SessionRequest, SessionResponse> = Mux::open(|_requests| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(Status::unavailable("refused"))
        });
        match mux.call(get(), Duration::from_secs(5)).await {
            Err(MuxError::Open(s)) => assert_eq!(s.message(), "refused"),
            other => panic!("expected an open failure, got {other:?}"),
        }
        assert!(mux.is_closed());
        match mux.call(get(), Duration::from_secs(5)).await {
            Err(MuxError::Closed(Op::Get(g))) => assert_eq!(g.key, b"k", "given back"),
            other => panic!("expected the operation back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_caller_that_times_out_is_forgotten() {
        let mux: Mux<SessionRequest, SessionResponse> =
            Mux::open(|_requests| std::future::pending());
        match mux.call(get(), Duration::from_millis(30)).await {
            Err(MuxError::Timeout(t)) => assert_eq!(t, Duration::from_millis(30)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(lock(&mux.state).waiting.is_empty());
        assert!(!mux.is_closed(), "a timeout does not close the session");
    }

    #[tokio::test]
    async fn a_reopening_session_opens_a_new_stream_after_one_closed() {
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = opened.clone();
        let session: Reopening<SessionRequest, SessionResponse> = Reopening::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Mux::open(|_requests| async { Err(Status::unavailable("refused")) })
        });
        for _ in 0..3 {
            match session.call(get(), Duration::from_secs(5)).await {
                Err(MuxError::Open(_)) => {}
                Err(MuxError::Closed(_)) => {}
                other => panic!("expected a failure, got {other:?}"),
            }
        }
        let n = opened.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n >= 3, "each call after a close opened a new stream ({n})");
    }
}
