//! The end of a node's run: stopping its background tasks, draining its store and
//! recording a clean shutdown.
//!
//! The clean-shutdown marker (see [`crate::identity`]) lets the next start keep this
//! node's incarnation, so its actor's counters go on from what its disk holds. It is
//! written only once every background task has stopped and the store has applied and
//! made durable every write it accepted: a version whose dot this node already sent to
//! other replicas may still be queued in its store, and if that write never lands, the
//! next start must take a new incarnation, or the node would make that dot again for
//! other bytes (Riak's KV679).

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::identity;
use crate::node::Node;
use crate::storage::StorageError;

/// The tasks a node runs besides serving requests.
#[derive(Default)]
pub struct Background {
    /// Hinted handoff and peer probing ([`crate::handoff::run`]).
    pub handoff: Option<JoinHandle<()>>,
    /// The periodic WAL sync of the `periodic` fsync policy.
    pub sync: Option<JoinHandle<()>>,
}

/// Why a stop was not clean: the next start takes a new incarnation.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(
        "writes the store accepted were still not durable at the stop's deadline: versions \
         this node handed out may be missing from its disk"
    )]
    Deadline,
    #[error(
        "a write or sync failed earlier: versions this node handed out may be missing from \
         its disk"
    )]
    Poisoned,
    #[error("recording the clean shutdown failed: {0}")]
    Marker(#[from] StorageError),
}

/// Stops `node`'s background tasks, closes its store (refusing later writes and waiting,
/// until `deadline`, for the ones it accepted to be durable), then records a clean
/// shutdown; or, if anything was still in flight or a write had failed, records nothing.
pub async fn finish(
    node: &Arc<Node>,
    background: Background,
    deadline: Instant,
) -> Result<(), StopError> {
    let deadline = tokio::time::Instant::from_std(deadline);
    for task in [background.handoff, background.sync].into_iter().flatten() {
        task.abort();
        // Cancelled at its next await; a task stuck in a blocking call stops the stop
        // from being clean.
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            return Err(StopError::Deadline);
        }
    }
    if !node.store.close(deadline).await {
        return Err(if node.store.is_poisoned() {
            StopError::Poisoned
        } else {
            StopError::Deadline
        });
    }
    if node.store.is_poisoned() {
        return Err(StopError::Poisoned);
    }
    let engine = node.store.engine().clone();
    tokio::task::spawn_blocking(move || identity::mark_clean_shutdown(&*engine))
        .await
        .map_err(|_| StorageError::Engine("marking the clean shutdown panicked".into()))??;
    Ok(())
}
