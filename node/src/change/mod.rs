//! Changing the members of a running cluster: the node's side (see
//! [`dynamo_core::map_state`] for the states and the rules).
//!
//! - **Transitions** (commit, finalize, abort) are made by one node, the *claimant* (the
//!   lowest id of the map in force; while the failure detector holds it down, the next
//!   member up stands in, so a dead claimant can be removed), under a lock, persisted before they are answered,
//!   and pushed to every node at once ([`crate::gossip::push_state`]); gossip spreads
//!   them to anyone the push missed. Any node passes such a call on to the claimant
//!   (once: a call passed on is never passed on again). So two committers racing on one
//!   epoch are ordered by the claimant: one wins everywhere and the other is told.
//! - **Transfers** ([`transfer`]): once every node holds the pending map, each new
//!   replica of a partition streams it from an old one and then runs anti-entropy against
//!   the old replicas until a pass finds no difference.
//! - **Progress** ([`progress`]): each node reports its incoming moves; a node asked for
//!   the cluster's progress asks every member. Finalize waits until every move is done
//!   and every member holds the pending map.
//! - **Clean-up** ([`cleanup`]): once a finalized map has reached every member, a node
//!   drops the partitions it no longer replicates.

pub mod cleanup;
pub mod plan;
pub mod progress;
pub mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::map_state::{MapState, TransitionError};
use dynamo_core::PartitionMap;
use dynamo_proto::maps;
use dynamo_proto::v1::{AbortRequest, CommitRequest, FinalizeRequest};

use crate::network::{ChangeCall, ChangeReply, PeerError};
use crate::node::Node;

/// How long a call passed on to the claimant may take (it pushes the new state to
/// every node before it answers).
const CLAIMANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the change task looks at the state without being woken.
const PERIOD: Duration = Duration::from_millis(500);

/// Why a change call failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A compare-and-set lost: another map is pending, or the epoch is not the next one.
    #[error("map epoch conflict: {0}")]
    Conflict(String),
    /// Not yet: moves are left, or a node does not hold the pending map.
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<TransitionError> for ChangeError {
    fn from(e: TransitionError) -> Self {
        match e {
            TransitionError::NotPending(_) => Self::Conflict(e.to_string()),
            TransitionError::PartitionCount { .. } => Self::Invalid(e.to_string()),
            _ => Self::Conflict(e.to_string()),
        }
    }
}

impl From<ChangeError> for tonic::Status {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Conflict(m) => tonic::Status::aborted(format!("map epoch conflict: {m}")),
            ChangeError::NotReady(m) => tonic::Status::failed_precondition(m),
            ChangeError::Unavailable(m) => tonic::Status::unavailable(m),
            ChangeError::Invalid(m) => tonic::Status::invalid_argument(m),
            ChangeError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

impl From<PeerError> for ChangeError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Status(s) => match s.code() {
                tonic::Code::Aborted => Self::Conflict(s.message().to_owned()),
                tonic::Code::FailedPrecondition => Self::NotReady(s.message().to_owned()),
                tonic::Code::InvalidArgument => Self::Invalid(s.message().to_owned()),
                _ => Self::Unavailable(s.message().to_owned()),
            },
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// Where a move stands, on the node that receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Not every node holds the pending map yet.
    Waiting,
    Streaming,
    /// Anti-entropy against the old replicas.
    Verifying,
    Done,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Waiting => "waiting",
            Stage::Streaming => "streaming",
            Stage::Verifying => "verifying",
            Stage::Done => "done",
        }
    }
}

/// One incoming move, as this node tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveStatus {
    pub from: Option<String>,
    pub stage: Stage,
    pub keys: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

/// The incoming moves of the pending change this node knows of: `(state version,
/// partition)` to status.
pub type MoveBook = BTreeMap<(u64, u32), MoveStatus>;

/// Makes `map` the pending map: here if this node is the claimant, else on it.
pub async fn commit(
    node: &Arc<Node>,
    map: PartitionMap,
    forwarded: bool,
) -> Result<MapState, ChangeError> {
    let held = node.live().state.clone();
    let claimant = match acting_claimant(node, &held) {
        Some(c) => c,
        // The first map: its own lowest id makes it.
        None => map
            .members
            .first()
            .cloned()
            .ok_or_else(|| ChangeError::Invalid("a map without members".into()))?,
    };
    if claimant.id != node.id() {
        let call = ChangeCall::Commit(CommitRequest {
            map: Some(maps::map_to_proto(&map)),
            forwarded: true,
        });
        return pass_on(node, &claimant.addr, &claimant.id, call, forwarded).await;
    }
    let _one = node.transitions.lock().await;
    let held = node.live().state.clone();
    let Some(next) = held.commit(map)? else {
        return Ok(held);
    };
    if let Some(why) = no_majority(node, &held) {
        return Err(ChangeError::Unavailable(why));
    }
    install_and_push(node, next).await
}

/// Why this node may not commit a change as claimant: it does not believe most members
/// of the map in force alive (suspects count as gone). A claimant cut off with a
/// minority (or alone) would otherwise commit a map the majority never sees while the
/// majority's stand-in claimant commits another of the same version: gossip then settles which one wins (the lower digest), and the
/// committer of the other was told it had committed (seeds 671 and 751 of the
/// simulation). With a majority required, at most one side of a partition commits
/// (two can only while a partition is younger than failure detection takes).
fn no_majority(node: &Node, held: &MapState) -> Option<String> {
    let current = held.current.as_ref()?;
    let up = current
        .members
        .iter()
        .filter(|m| m.id == node.id() || node.health.is_up(&m.id))
        .count();
    let members = current.members.len();
    (up * 2 <= members).then(|| {
        format!(
            "{} does not believe {} of the {members} members alive: a change needs most \
             members up",
            node.id(),
            members - up
        )
    })
}

/// Puts pending `epoch` in force, once every move is done and every member holds it.
pub async fn finalize(
    node: &Arc<Node>,
    epoch: u64,
    forwarded: bool,
) -> Result<MapState, ChangeError> {
    needs_map(node)?;
    if let Some(claimant) = other_claimant(node) {
        let call = ChangeCall::Finalize(FinalizeRequest {
            epoch,
            forwarded: true,
        });
        return pass_on(node, &claimant.addr, &claimant.id, call, forwarded).await;
    }
    let _one = node.transitions.lock().await;
    let held = node.live().state.clone();
    let Some(next) = held.finalize(epoch)? else {
        return Ok(held);
    };
    let progress = progress::cluster(node).await;
    let down = |id: &str| node.health.is_down(id);
    if let Some(why) = progress::not_final(&held, &progress, &down) {
        return Err(ChangeError::NotReady(why));
    }
    install_and_push(node, next).await
}

/// Drops pending `epoch`, keeping the map in force.
pub async fn abort(node: &Arc<Node>, epoch: u64, forwarded: bool) -> Result<MapState, ChangeError> {
    needs_map(node)?;
    if let Some(claimant) = other_claimant(node) {
        let call = ChangeCall::Abort(AbortRequest {
            epoch,
            forwarded: true,
        });
        return pass_on(node, &claimant.addr, &claimant.id, call, forwarded).await;
    }
    let _one = node.transitions.lock().await;
    let held = node.live().state.clone();
    let Some(next) = held.abort(epoch) else {
        return Ok(held);
    };
    install_and_push(node, next).await
}

/// Refuses a finalize or abort on a node that holds no map (it cannot know the claimant).
fn needs_map(node: &Node) -> Result<(), ChangeError> {
    match node.live().state.reads() {
        Some(_) => Ok(()),
        None => Err(ChangeError::Unavailable(format!(
            "{} holds no partition map yet; ask a member of the cluster",
            node.id()
        ))),
    }
}

/// The claimant as this node sees it: a member its failure detector holds down (dead,
/// not merely suspect) is stood in for by the next member up.
fn acting_claimant(node: &Node, state: &MapState) -> Option<dynamo_core::Member> {
    let down = |id: &str| id != node.id() && node.health.is_down(id);
    state.acting_claimant(down).cloned()
}

/// The claimant, when it is another node.
fn other_claimant(node: &Node) -> Option<dynamo_core::Member> {
    let live = node.live();
    acting_claimant(node, &live.state).filter(|c| c.id != node.id())
}

async fn pass_on(
    node: &Node,
    addr: &str,
    id: &str,
    call: ChangeCall,
    forwarded: bool,
) -> Result<MapState, ChangeError> {
    if forwarded {
        return Err(ChangeError::Unavailable(format!(
            "{} is not the claimant by its map state (version {}), {id} is; the state is \
             still spreading, retry",
            node.id(),
            node.live().state.version
        )));
    }
    match node.transport.change(addr, call, CLAIMANT_TIMEOUT).await {
        Ok(ChangeReply::State(s)) => {
            let state = maps::state_from_proto(s)
                .map_err(|e| ChangeError::Internal(format!("claimant sent a bad state: {e}")))?;
            // Take it now rather than at the next gossip round.
            if let Err(e) = node.install(state.clone()) {
                tracing::warn!(error = %e, "could not install the claimant's map state");
            }
            Ok(state)
        }
        Ok(ChangeReply::Moves(_)) => Err(ChangeError::Internal(
            "claimant answered with another kind of answer".into(),
        )),
        Err(PeerError::Status(s)) if s.code() == tonic::Code::Unavailable => Err(
            ChangeError::Unavailable(format!("claimant {id} at {addr}: {}", s.message())),
        ),
        Err(e @ PeerError::Status(_)) => Err(e.into()),
        Err(e) => Err(ChangeError::Unavailable(format!(
            "claimant {id} at {addr}: {e}"
        ))),
    }
}

async fn install_and_push(node: &Arc<Node>, next: MapState) -> Result<MapState, ChangeError> {
    node.install(next.clone())
        .map_err(|e| ChangeError::Internal(e.to_string()))?;
    let missed = crate::gossip::push_state(node).await;
    if !missed.is_empty() {
        tracing::info!(?missed, "map state pushed; gossip takes it to the rest");
    }
    Ok(next)
}

/// Answers a change call made by another node (the admin service does the same for
/// clients).
pub async fn answer(node: &Arc<Node>, call: ChangeCall) -> Result<ChangeReply, ChangeError> {
    let state = |s: MapState| ChangeReply::State(maps::state_to_proto(&s));
    match call {
        ChangeCall::Commit(r) => {
            let map = r
                .map
                .ok_or_else(|| ChangeError::Invalid("commit without a map".into()))?;
            let map = maps::map_from_proto(map)
                .map_err(|e| ChangeError::Invalid(format!("invalid map: {e}")))?;
            commit(node, map, r.forwarded).await.map(state)
        }
        ChangeCall::Finalize(r) => finalize(node, r.epoch, r.forwarded).await.map(state),
        ChangeCall::Abort(r) => abort(node, r.epoch, r.forwarded).await.map(state),
        ChangeCall::Moves => Ok(ChangeReply::Moves(progress::local(node))),
    }
}

/// Runs transfers and clean-up whenever the map state changes (and every half second)
/// until aborted.
pub async fn run(node: Arc<Node>) {
    loop {
        let changed = node.maps_changed.notified();
        transfer::step(&node).await;
        cleanup::step(&node).await;
        tokio::select! {
            biased;
            _ = changed => {}
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// Whether every member of the live maps holds map-state `version` or newer, as gossip
/// last told this node; the ones that do not, if any. Members the failure detector holds
/// down are not waited for, so that a change can finish while a node is dead (or remove
/// it): one that comes back learns the state by gossip, and until it does, the replicas
/// that a pending map moves away refuse its writes ([`crate::maps::stale_write`]) and
/// every replica refuses its requests once that map is in force
/// ([`crate::maps::stale_request`]).
pub fn lagging(node: &Node, state: &MapState) -> Vec<String> {
    state
        .members()
        .into_iter()
        .filter(|m| m.id != node.id())
        .filter(|m| !node.health.is_down(&m.id))
        .filter(|m| {
            node.gossip
                .entry(&m.id)
                .is_none_or(|e| e.map_version < state.version)
        })
        .map(|m| m.id.clone())
        .collect()
}
