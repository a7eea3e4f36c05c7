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
//! A session that closed is reopened by the next request (`dynamo_proto::session::Reopening`).

use std::time::Duration;

use dynamo_proto::session::{Mux, MuxError, Reopening};
use dynamo_proto::v1::kv_client::KvClient;
use dynamo_proto::v1::{session_request, session_response, SessionRequest, SessionResponse};
use tonic::Code;

use crate::error::{Error, Origin};
use crate::pool::Chan;

/// The `Kv.Session` stream to a node over one channel, reopened when it closes.
#[derive(Debug)]
pub(crate) struct Session {
    inner: Reopening<SessionRequest, SessionResponse>,
}

impl Session {
    /// A session over `channel`, opened by the first request. Requests must be made
    /// inside a tokio runtime.
    pub fn new(channel: Chan, max_message_bytes: usize) -> Self {
        let client = KvClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Self {
            inner: Reopening::new(move || {
                let mut client = client.clone();
                Mux::open(move |requests| async move { client.session(requests).await })
            }),
        }
    }

    /// Sends `op` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        op: session_request::Op,
        timeout: Duration,
    ) -> Result<session_response::Result, Error> {
        self.inner.call(op, timeout).await.map_err(|e| match e {
            // Two sessions in a row closed before taking it: it was never sent.
            MuxError::Closed(_) => Error::Status {
                code: Code::Unavailable,
                message: "sessions to the node keep closing".into(),
                origin: Origin::Connect,
            },
            // Classified by its source: a connect failure means nothing was sent.
            MuxError::Open(status) => Error::from(status),
            MuxError::Broken(status) => Error::Status {
                code: status.code(),
                message: format!("session broken: {}", Error::from(status).message()),
                origin: Origin::Transport,
            },
            MuxError::Timeout(timeout) => Error::Status {
                code: Code::Cancelled,
                message: format!("Timeout expired: no answer within {timeout:?}"),
                origin: Origin::Transport,
            },
            MuxError::Failed(status) => Error::Status {
                code: status.code(),
                message: status.message().to_owned(),
                origin: Origin::Node,
            },
        })
    }
}
