//! Errors a coordinator returns to clients, each with a stable category that maps to a
//! gRPC status code and a metric label.

use dynamo_core::context::ContextError;
use dynamo_core::limits::LimitError;
use dynamo_core::version::VersionError;

use crate::metrics::Outcome;
use crate::storage::StorageError;

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{op}: {got} of {needed} required replicas answered within {timeout_ms} ms ({which}={needed}, N={n})")]
    Unavailable {
        op: &'static str,
        which: &'static str,
        got: usize,
        needed: usize,
        n: u32,
        timeout_ms: u64,
    },
    #[error("{0}")]
    NoCoordinator(String),
    #[error("local storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error(
        "{0} refuses writes: an earlier write or sync failed on its disk; it takes writes \
         again once restarted (with a new incarnation)"
    )]
    Poisoned(String),
    #[error(transparent)]
    Version(#[from] VersionError),
}

impl RequestError {
    /// The metric label of this error.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Limit(_) | Self::Context(_) | Self::BadRequest(_) => Outcome::InvalidArgument,
            Self::Unavailable { .. } | Self::NoCoordinator(_) | Self::Poisoned(_) => {
                Outcome::Unavailable
            }
            Self::Storage(_) | Self::Version(_) => Outcome::Internal,
        }
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        match e.outcome() {
            Outcome::InvalidArgument => tonic::Status::invalid_argument(msg),
            Outcome::Unavailable => tonic::Status::unavailable(msg),
            Outcome::Internal | Outcome::Ok => tonic::Status::internal(msg),
        }
    }
}
