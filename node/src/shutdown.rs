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
//!
//! The order: the servers stop taking requests (the caller, [`crate::server`]), the
//! background tasks stop, the store closes, and only if all of that finished within the
//! grace, and no write or sync ever failed, the marker is written. Giving up is always
//! safe: the next start then takes a new incarnation.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::identity;
use crate::node::Node;
use crate::storage::StorageError;

/// The tasks a node runs besides serving requests.
#[derive(Default)]
pub struct Background {
    /// Hinted handoff and peer probing ([`crate::handoff::run`]): aborted (a round cut
    /// short leaves its hints in place).
    pub handoff: Option<JoinHandle<()>>,
    /// The periodic WAL sync of the `periodic` fsync policy: ends by itself once the node
    /// is stopping ([`Node::stopping`]), after any sync under way, which an abort would
    /// leave running on a blocking thread.
    pub sync: Option<JoinHandle<()>>,
    /// Background anti-entropy ([`crate::antientropy::run`]): aborted (what a sweep
    /// joined so far is kept; the rest waits for the next start).
    pub anti_entropy: Option<JoinHandle<()>>,
    /// Tombstone purging and fallback clean-up ([`crate::antientropy::purge::run`]):
    /// aborted (each drop is conditional and atomic; a pass cut short is redone).
    pub purge: Option<JoinHandle<()>>,
    /// Transfers and clean-up of a change of members ([`crate::change::run`]): aborted
    /// (a transfer's progress is persisted chunk by chunk and resumes at the next start).
    pub change: Option<JoinHandle<()>>,
}

impl Background {
    /// Stops every task by `deadline` (aborting the ones still running then). Whether
    /// all of them ended in time.
    async fn stop(self, deadline: tokio::time::Instant) -> bool {
        for task in [&self.handoff, &self.anti_entropy, &self.purge, &self.change]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        let mut ended = true;
        for mut task in [
            self.handoff,
            self.sync,
            self.anti_entropy,
            self.purge,
            self.change,
        ]
        .into_iter()
        .flatten()
        {
            // A task that panicked or was aborted has ended too.
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                ended = false;
            }
        }
        ended
    }
}

/// Why a stop was not clean: the next start takes a new incarnation.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(
        "the stop's deadline passed with a background task or the store's writer still \
         running: versions this node handed out may be missing from its disk"
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

/// Stops `node`'s background tasks and closes its store (refusing later writes, letting
/// the writer apply and the syncer sync the ones it accepted, and joining both), all by
/// `deadline`; then records a clean shutdown. If anything was still running at the
/// deadline, or a write had failed, it records nothing.
///
/// The servers must have stopped first: a request still coming in after the close is
/// refused (its write fails before anything is replicated), so it cannot lose a dot, but
/// it fails.
pub async fn finish(
    node: &Arc<Node>,
    background: Background,
    deadline: Instant,
) -> Result<(), StopError> {
    let deadline = tokio::time::Instant::from_std(deadline);
    // Idempotent; the periodic sync watches it.
    node.stop_sessions();
    let tasks_ended = background.stop(deadline).await;
    // Closed even if a task is stuck: whatever the store accepted still gets applied.
    let store_closed = node.store.close(deadline).await;
    if node.store.is_poisoned() {
        return Err(StopError::Poisoned);
    }
    if !(tasks_ended && store_closed) {
        return Err(StopError::Deadline);
    }
    let engine = node.store.engine().clone();
    // Read after the close: an epoch minted since cannot be in any write.
    let next_epoch = node.epochs.next();
    crate::determinism::blocking(move || identity::mark_clean_shutdown(&*engine, next_epoch))
        .await
        .map_err(|_| StorageError::Engine("marking the clean shutdown panicked".into()))??;
    Ok(())
}
