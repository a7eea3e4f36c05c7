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

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node (or the transport, for connection failures) answered with a gRPC status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC status code, e.g. `Code::InvalidArgument` or `Code::Unavailable`.
        code: Code,
        /// The message that came with it.
        message: String,
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
        match self {
            // tonic maps connector failures to UNAVAILABLE with the connector's message
            // ("tcp connect error", "error trying to connect", "connection refused").
            Error::Status {
                code: Code::Unavailable,
                message,
            } => {
                let m = message.to_ascii_lowercase();
                m.contains("connect") || m.contains("connection refused")
            }
            _ => false,
        }
    }

    /// Whether the transport failed (connection lost, timeout) rather than the node
    /// answering with an error: retrying an idempotent request elsewhere may help.
    pub fn is_transport_failure(&self) -> bool {
        match self {
            Error::Status { code, message } => match code {
                Code::Unavailable => self.is_connect_failure() || message.contains("transport"),
                Code::Cancelled => message.contains("Timeout expired"),
                Code::Unknown => message.contains("transport") || message.contains("h2 protocol"),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let mut message = status.message().to_string();
        // Transport errors carry their cause in the source chain, not the message.
        let mut source = std::error::Error::source(&status);
        while let Some(err) = source {
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
    fn quorum_failure_is_not_a_connect_failure() {
        let err = Error::from(tonic::Status::unavailable("1 of 2 replicas answered"));
        assert!(!err.is_connect_failure());
        assert!(!err.is_transport_failure());
        let err = Error::from(tonic::Status::unavailable("tcp connect error"));
        assert!(err.is_connect_failure());
        assert!(err.is_transport_failure());
    }

    #[test]
    fn non_status_errors_have_categories() {
        assert_eq!(Error::NoAddress.category(), "no_address");
        assert_eq!(Error::NoAddress.code(), None);
    }
}
