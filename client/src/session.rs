//! Gets, puts and deletes to one node multiplexed over one `Kv.Session` stream.
//!
//! A unary gRPC call is a whole HTTP/2 stream: headers both ways, trailers, a stream
//! opened and closed on each side. A session carries each request and response as one
//! message of a long-lived bidirectional stream, tagged with an id, which costs both the
//! client and the node much less per small request (see `Kv.Session` in `kv.proto`).
//!
//! A [`Session`] queues requests to a driver task that owns the stream and hands each
//! response to the caller waiting for its id. When the stream cannot be opened or breaks,
//! the session closes and every caller still waiting gets the error:
//!
//! - if the stream could not be opened because the connection could not be made, nothing
//!   was sent and the error says so (`Origin::Connect`), so writes may fail over;
//! - once the stream was open, a request in flight may have been applied: the error is a
//!   transport failure (`Origin::Transport`).
//!
//! A closed session takes no more requests ([`CallError::Closed`]); its owner opens a new
//! one (see `pool::NodeConn`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dynamo_proto::v1::kv_client::KvClient;
use dynamo_proto::v1::{session_request, session_response, SessionRequest, SessionResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

use crate::error::{Error, Origin};

type Answer = Result<session_response::Result, Error>;

/// Why a request through a session failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The session had already closed: the request (given back) was not sent. Open a
    /// new session.
    Closed(session_request::Op),
    /// The request failed: the node's error, or a transport failure (then the request
    /// may or may not have been applied, unless the error is a connect failure).
    Failed(Error),
}

/// One `Kv.Session` stream to a node.
#[derive(Debug)]
pub(crate) struct Session {
    tx: mpsc::UnboundedSender<SessionRequest>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    closed: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while holding the lock; recover the state if something did.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes a caller's entry when it stops waiting (answered, timed out or dropped).
struct Waiting<'a> {
    state: &'a Mutex<State>,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.state).waiting.remove(&self.id);
    }
}

impl Session {
    /// Opens a session over `channel`; requests may be queued at once. Must be called
    /// inside a tokio runtime.
    pub fn open(channel: Channel, max_message_bytes: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(State::default()));
        let client = KvClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        tokio::spawn(drive(client, rx, state.clone()));
        Self { tx, state }
    }

    /// Whether the session has closed (it takes no more requests).
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Sends `op` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        op: session_request::Op,
        timeout: Duration,
    ) -> Result<session_response::Result, CallError> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(CallError::Closed(op));
            }
            state.next_id += 1;
            let id = state.next_id;
            state.waiting.insert(id, reply);
            id
        };
        let _waiting = Waiting {
            state: &self.state,
            id,
        };
        // If the driver has gone, it closed the session and answered every waiting
        // caller (this one included) first.
        let _ = self.tx.send(SessionRequest { id, op: Some(op) });
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer.map_err(CallError::Failed),
            Ok(Err(_)) => Err(CallError::Failed(broken("the session ended"))),
            Err(_) => Err(CallError::Failed(Error::Status {
                code: Code::Cancelled,
                message: format!("Timeout expired: no answer within {timeout:?}"),
                origin: Origin::Transport,
            })),
        }
    }
}

/// A failure of an open session: requests in flight may have been applied.
fn broken(message: &str) -> Error {
    Error::Status {
        code: Code::Unavailable,
        message: message.to_owned(),
        origin: Origin::Transport,
    }
}

/// Opens the stream, hands each response to its caller, and closes the session when the
/// stream fails or ends.
async fn drive(
    mut client: KvClient<Channel>,
    rx: mpsc::UnboundedReceiver<SessionRequest>,
    state: Arc<Mutex<State>>,
) {
    let error = match client.session(UnboundedReceiverStream::new(rx)).await {
        // Nothing was answered; a connect failure means nothing was sent either.
        Err(status) => Error::from(status),
        Ok(resp) => {
            let mut inbound = resp.into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(resp)) => answer(&state, resp),
                    Ok(None) => break broken("the node ended the session"),
                    Err(status) => {
                        break match Error::from(status) {
                            Error::Status { code, message, .. } => Error::Status {
                                code,
                                message: format!("session broken: {message}"),
                                origin: Origin::Transport,
                            },
                            other => other,
                        }
                    }
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
        let _ = reply.send(Err(error.clone()));
    }
}

/// Hands a response to the caller waiting for its id (none if it gave up).
fn answer(state: &Mutex<State>, resp: SessionResponse) {
    let Some(reply) = lock(state).waiting.remove(&resp.id) else {
        return;
    };
    let answer = match resp.result {
        Some(session_response::Result::Error(e)) => Err(Error::Status {
            code: Code::from_i32(e.code),
            message: e.message,
            origin: Origin::Node,
        }),
        Some(result) => Ok(result),
        None => Err(Error::Status {
            code: Code::Internal,
            message: format!("the node answered request {} without a result", resp.id),
            origin: Origin::Node,
        }),
    };
    let _ = reply.send(answer);
}
