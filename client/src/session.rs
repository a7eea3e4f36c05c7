//! Gets, puts and deletes to one node multiplexed over one `Kv.Session` stream (see
//! `dynamo_proto::session`): one HTTP/2 DATA frame per request and response instead of a
//! whole HTTP/2 stream per call, which costs both the client and the node much less per
//! small request.
//!
//! This module opens the session and turns its failures into the client's errors:
//!
//! - the stream could not be opened because the connection could not be made: nothing
//!   was sent (`Origin::Connect`), so writes may fail over;
//! - the stream broke once open, or no answer came in time: the request may have been
//!   applied (`Origin::Transport`);
//! - the node answered with an error: `Origin::Node`, with the node's code and message.
//!
//! A closed session takes no more requests ([`CallError::Closed`] gives the operation
//! back); its owner opens a new one (see `pool::NodeConn`).

use std::time::Duration;

use dynamo_proto::session::{Mux, MuxError};
use dynamo_proto::v1::kv_client::KvClient;
use dynamo_proto::v1::{session_request, session_response, SessionRequest, SessionResponse};
use tonic::transport::Channel;
use tonic::Code;

use crate::error::{Error, Origin};

/// Why a request through a session failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The session had already closed: the request (given back) was not sent. Open a
    /// new session.
    Closed(session_request::Op),
    /// The request failed (see the module's notes for what each origin means).
    Failed(Error),
}

/// One `Kv.Session` stream to a node.
#[derive(Debug)]
pub(crate) struct Session {
    mux: Mux<SessionRequest, SessionResponse>,
}

impl Session {
    /// Opens a session over `channel`; requests may be queued at once. Must be called
    /// inside a tokio runtime.
    pub fn open(channel: Channel, max_message_bytes: usize) -> Self {
        let mut client = KvClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self {
            mux: Mux::open(move |requests| async move { client.session(requests).await }),
        }
    }

    /// Whether the session has closed (it takes no more requests).
    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    /// Sends `op` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        op: session_request::Op,
        timeout: Duration,
    ) -> Result<session_response::Result, CallError> {
        self.mux.call(op, timeout).await.map_err(|e| match e {
            MuxError::Closed(op) => CallError::Closed(op),
            // Classified by its source: a connect failure means nothing was sent.
            MuxError::Open(status) => CallError::Failed(Error::from(status)),
            MuxError::Broken(status) => CallError::Failed(Error::Status {
                code: status.code(),
                message: format!("session broken: {}", Error::from(status).message()),
                origin: Origin::Transport,
            }),
            MuxError::Timeout(timeout) => CallError::Failed(Error::Status {
                code: Code::Cancelled,
                message: format!("Timeout expired: no answer within {timeout:?}"),
                origin: Origin::Transport,
            }),
            MuxError::Failed(status) => CallError::Failed(Error::Status {
                code: status.code(),
                message: status.message().to_owned(),
                origin: Origin::Node,
            }),
        })
    }
}
