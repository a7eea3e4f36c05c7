//! Sessions: many requests multiplexed over one long-lived bidirectional gRPC stream,
//! each request and response one message tagged with an id (`Kv.Session` for clients,
//! `Replica.Session` between nodes).
//!
//! A unary call is a whole HTTP/2 stream: headers both ways, trailers, a stream opened
//! and closed on each side. For small requests that framing costs more CPU than the work
//! itself; a session message costs one DATA frame each way.
//!
//! - [`serve`] is the server side: it runs each request through a handler on its own
//!   task and sends each response as soon as it is ready (see [`serve::serve`]).
//! - [`Mux`] is the client side: callers queue requests and wait for the response with
//!   their id; when the stream cannot be opened or breaks, every caller still waiting
//!   gets the error (see [`mux`]).
//!
//! [`Envelope`] and [`Answer`] describe a session's request and response messages, so
//! that both sides serve any session of this API.

pub mod mux;
pub mod serve;

pub use mux::{Mux, MuxError, Reopening};
pub use serve::{serve, serve_on, serve_until, ResponseStream, MAX_IN_FLIGHT};

use tonic::{Code, Status};

use crate::v1::{
    replica_session_request, replica_session_response, session_request, session_response,
    ReplicaSessionRequest, ReplicaSessionResponse, RequestError, SessionRequest, SessionResponse,
};

/// A request message of a session: an id and an operation.
pub trait Envelope: Send + 'static {
    type Op: Send + 'static;
    fn new(id: u64, op: Self::Op) -> Self;
    fn into_parts(self) -> (u64, Option<Self::Op>);
}

/// A response message of a session: the request's id and its outcome.
pub trait Answer: Send + 'static {
    type Ok: Send + 'static;
    fn new(id: u64, result: Result<Self::Ok, Status>) -> Self;
    fn into_parts(self) -> (u64, Result<Self::Ok, Status>);
}

fn wire_error(s: Status) -> RequestError {
    RequestError {
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}

fn from_wire(e: RequestError) -> Status {
    Status::new(Code::from_i32(e.code), e.message)
}

fn missing(id: u64) -> Status {
    Status::internal(format!("answer to request {id} has no result"))
}

impl Envelope for SessionRequest {
    type Op = session_request::Op;
    fn new(id: u64, op: Self::Op) -> Self {
        Self { id, op: Some(op) }
    }
    fn into_parts(self) -> (u64, Option<Self::Op>) {
        (self.id, self.op)
    }
}

impl Answer for SessionResponse {
    type Ok = session_response::Result;
    fn new(id: u64, result: Result<Self::Ok, Status>) -> Self {
        let result = result.unwrap_or_else(|s| session_response::Result::Error(wire_error(s)));
        Self {
            id,
            result: Some(result),
        }
    }
    fn into_parts(self) -> (u64, Result<Self::Ok, Status>) {
        let result = match self.result {
            Some(session_response::Result::Error(e)) => Err(from_wire(e)),
            Some(ok) => Ok(ok),
            None => Err(missing(self.id)),
        };
        (self.id, result)
    }
}

impl Envelope for ReplicaSessionRequest {
    type Op = replica_session_request::Op;
    fn new(id: u64, op: Self::Op) -> Self {
        Self { id, op: Some(op) }
    }
    fn into_parts(self) -> (u64, Option<Self::Op>) {
        (self.id, self.op)
    }
}

impl Answer for ReplicaSessionResponse {
    type Ok = replica_session_response::Result;
    fn new(id: u64, result: Result<Self::Ok, Status>) -> Self {
        let result =
            result.unwrap_or_else(|s| replica_session_response::Result::Error(wire_error(s)));
        Self {
            id,
            result: Some(result),
        }
    }
    fn into_parts(self) -> (u64, Result<Self::Ok, Status>) {
        let result = match self.result {
            Some(replica_session_response::Result::Error(e)) => Err(from_wire(e)),
            Some(ok) => Ok(ok),
            None => Err(missing(self.id)),
        };
        (self.id, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::PutResponse;

    #[test]
    fn an_error_survives_the_wire_form() {
        let resp = SessionResponse::new(9, Err(Status::unavailable("1 of 2 replicas")));
        let (id, result) = resp.into_parts();
        assert_eq!(id, 9);
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "1 of 2 replicas");

        let ok = SessionResponse::new(3, Ok(session_response::Result::Put(PutResponse::default())));
        assert!(matches!(
            ok.into_parts(),
            (3, Ok(session_response::Result::Put(_)))
        ));
        let empty = ReplicaSessionResponse {
            id: 4,
            result: None,
        };
        assert_eq!(empty.into_parts().1.unwrap_err().code(), Code::Internal);
    }
}
