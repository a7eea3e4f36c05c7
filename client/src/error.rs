//! Errors of the client library.
//!
//! A failed request keeps the gRPC status code and message the node sent (for example
//! `INVALID_ARGUMENT` for an oversized value, `UNAVAILABLE` when fewer than R or W replicas
//! answered) so that applications can branch on the code and the CLI can print it as
//! `error: <CODE>: <message>`. Errors that happen before a request is sent (bad address,
//! bad context) have variants of their own.

use tonic::Code;

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A node sent it: the request was processed and failed (or was refused).
    Node,
    /// The connection could not be made: the request never left the client.
    Connect,
    /// The transport failed after connecting (connection lost, client-side timeout): the
    /// request may or may not have been applied.
    Transport,
}

/// Everything a client call can fail with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with a gRPC status, or the transport failed (then tonic reports
    /// it as a status too, usually `UNAVAILABLE`; `origin` tells which).
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC status code, e.g. `Code::InvalidArgument` or `Code::Unavailable`.
        code: Code,
        /// The message that came with it.
        message: String,
        /// Whether a node sent it or the client's transport made it.
        origin: Origin,
    },
    /// No node address was given.
    #[error("no node address given: pass at least one host:port")]
    NoAddress,
    /// A node address could not be turned into a gRPC endpoint.
    #[error("invalid node address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A context given as text is not valid URL-safe base64.
    #[error("invalid context {text:?}: {reason} (expected the URL-safe base64 text that get or put printed)")]
    InvalidContext {
        /// The text as given (truncated when long).
        text: String,
        /// What the decoder said.
        reason: String,
    },
    /// The node sent a partition map that does not validate.
    #[error("the node sent an invalid partition map: {0}")]
    InvalidMap(String),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A bearer token cannot be sent.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

impl Error {
    /// The gRPC status code, when the error came from a node or the transport.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A stable short category: the gRPC code name (`UNAVAILABLE`, ...) for statuses,
    /// otherwise a lowercase name of the variant. Used as the CLI's error prefix.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Status { code, .. } => code_name(*code),
            Error::NoAddress => "no_address",
            Error::InvalidAddress { .. } => "invalid_address",
            Error::InvalidContext { .. } => "invalid_context",
            Error::InvalidMap(_) => "invalid_map",
            Error::Tls(_) => "tls",
            Error::InvalidToken(_) => "invalid_token",
        }
    }

    /// The message without the category prefix.
    pub fn message(&self) -> String {
        match self {
            Error::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Whether the request surely never reached a node (the connection could not be
    /// made), so that sending it to another node cannot apply it twice.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Error::Status {
                origin: Origin::Connect,
                ..
            }
        )
    }

    /// Whether the transport failed (no connection, connection lost, timeout) rather than
    /// a node answering with an error: retrying an idempotent request elsewhere may help.
    pub fn is_transport_failure(&self) -> bool {
        matches!(
            self,
            Error::Status {
                origin: Origin::Connect | Origin::Transport,
                ..
            }
        )
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let mut message = status.message().to_string();
        // A status decoded from a node's answer has no source; one that tonic made from a
        // local error keeps that error as its source, with a `ConnectError` in the chain
        // when the connection could not be made. The chain's text completes the message.
        let mut origin = Origin::Node;
        let mut source = std::error::Error::source(&status);
        while let Some(err) = source {
            if err.downcast_ref::<tonic::ConnectError>().is_some() {
                origin = Origin::Connect;
            } else if origin == Origin::Node {
                origin = Origin::Transport;
            }
            let text = err.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = err.source();
        }
        Error::Status {
            code: status.code(),
            message,
            origin,
        }
    }
}

/// The canonical upper-case name of a gRPC status code (`INVALID_ARGUMENT`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_and_message() {
        let err = Error::from(tonic::Status::invalid_argument("value is 2000000 bytes"));
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        assert_eq!(err.category(), "INVALID_ARGUMENT");
        assert_eq!(err.message(), "value is 2000000 bytes");
        assert_eq!(err.to_string(), "INVALID_ARGUMENT: value is 2000000 bytes");
    }

    #[test]
    fn node_statuses_are_not_transport_failures() {
        // Even when the node's message talks about connections to its peers.
        let err = Error::from(tonic::Status::unavailable(
            "1 of 2 replicas answered (node-2: tcp connect error: connection refused)",
        ));
        assert!(matches!(
            err,
            Error::Status {
                origin: Origin::Node,
                ..
            }
        ));
        assert!(!err.is_connect_failure());
        assert!(!err.is_transport_failure());
    }

    #[test]
    fn local_errors_are_classified_by_their_source() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::ConnectError(Box::new(refused));
        let err = Error::from(tonic::Status::from_error(Box::new(connect)));
        assert_eq!(err.code(), Some(Code::Unavailable));
        assert!(err.is_connect_failure());
        assert!(err.is_transport_failure());
        assert!(err.message().contains("refused"), "{err}");

        let timeout = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let err = Error::from(timeout);
        assert_eq!(err.category(), "CANCELLED");
        assert!(!err.is_connect_failure());
        assert!(err.is_transport_failure());
    }

    #[test]
    fn non_status_errors_have_categories() {
        assert_eq!(Error::NoAddress.category(), "no_address");
        assert_eq!(Error::NoAddress.code(), None);
    }
}
