//! The cluster's admin side, as the orchestration core sees it: members, the live
//! partition-map versions, commit, move progress, drained?, finalize, abort.
//!
//! A map change makes two versions live at once (the current one and the pending one);
//! writes need quorums in both while new replicas stream their partitions in. When every
//! move is done and every node has synced the pending version, `finalize` retires the old
//! one. `abort` drops a pending version, which is always safe: the old version stayed live
//! and complete the whole time.
//!
//! Implementations: [`nodes::NodeAdmin`], over the nodes' gRPC Admin API (what the
//! operator runs with); [`memory::MemoryAdmin`], an in-memory model of the nodes that
//! really tracks which node holds which partition (what the orchestration core is tested
//! against); [`fake_nodes`] serves that model over real gRPC to test `NodeAdmin`.

pub mod certs;
pub mod fake_nodes;
pub mod memory;
pub mod nodes;

use std::collections::BTreeSet;
use std::future::Future;

pub use dynamo_core::map_state::MapState;
use dynamo_core::ring::{MapError, Member, NodeId, PartitionMap};

/// Why an admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The admin side could not be reached; retry later.
    #[error("cluster admin unavailable: {0}")]
    Unavailable(String),
    /// A commit, finalize or abort names an epoch that is not the one expected.
    #[error("map epoch conflict: {0}")]
    EpochConflict(String),
    /// The planner rejected the inputs.
    #[error("cannot plan the partition map: {0}")]
    Plan(#[from] MapError),
}

impl AdminError {
    /// Stable short category, for condition reasons and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "AdminUnavailable",
            Self::EpochConflict(_) => "EpochConflict",
            Self::Plan(_) => "PlanFailed",
        }
    }
}

/// Progress of a pending map change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveProgress {
    /// Partition replicas the pending map places on a node that does not hold them yet.
    pub pending: u32,
    /// Partition replicas already moved for this change.
    pub done: u32,
    /// Nodes that acknowledged and synced the pending map.
    pub synced: BTreeSet<NodeId>,
}

/// The cluster's admin side.
pub trait ClusterAdmin: Send + Sync {
    /// Ids of the nodes that are up and reachable through the admin side.
    fn members(&self) -> impl Future<Output = Result<BTreeSet<NodeId>, AdminError>> + Send;
    /// The live map versions.
    fn maps(&self) -> impl Future<Output = Result<MapState, AdminError>> + Send;
    /// Plans the next map for `members` from `current` (the Strategy 3 planner: balanced,
    /// fewest moves, deterministic, so re-planning after a restart gives the same map).
    fn plan(
        &self,
        current: Option<&PartitionMap>,
        members: &[Member],
        partitions: u32,
        replication: u32,
    ) -> Result<PartitionMap, AdminError> {
        Ok(dynamo_core::planner::plan(
            current,
            members,
            partitions,
            replication,
        )?)
    }
    /// Makes `map` the pending version. Idempotent for the pending epoch.
    fn commit(&self, map: &PartitionMap) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Move progress of the pending version `epoch`.
    fn progress(&self, epoch: u64)
        -> impl Future<Output = Result<MoveProgress, AdminError>> + Send;
    /// Whether `node` holds nothing that the other nodes of the pending map lack: its
    /// outgoing moves are done and the hints it holds are delivered.
    fn drained(&self, node: &str) -> impl Future<Output = Result<bool, AdminError>> + Send;
    /// Retires the old version once `epoch` is synced everywhere. Idempotent.
    fn finalize(&self, epoch: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Drops the pending version `epoch`, keeping the current one. Idempotent.
    fn abort(&self, epoch: u64) -> impl Future<Output = Result<(), AdminError>> + Send;
}
