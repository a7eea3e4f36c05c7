//! How far a change of members is: each node's incoming moves ([`local`]), the whole
//! cluster's ([`cluster`], asking every member), whether it may be finalized
//! ([`not_final`]) and whether a node is drained ([`drained`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::map_state::MapState;
use dynamo_proto::v1::{MoveStatus as MoveProto, MovesResponse, ProgressResponse};

use super::Stage;
use crate::network::{ChangeCall, ChangeReply};
use crate::node::Node;

/// How long a member may take to report its moves.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// This node's part of the pending change: its incoming moves and its hints.
pub fn local(node: &Node) -> MovesResponse {
    let live = node.live();
    let state = &live.state;
    let book = node.moves.lock().clone();
    let moves = state
        .moves()
        .into_iter()
        .filter(|m| m.to == node.id())
        .map(|m| {
            let status = book.get(&(state.version, m.partition));
            MoveProto {
                partition: m.partition,
                from: m.from.clone().unwrap_or_default(),
                to: m.to.clone(),
                state: status
                    .map_or(Stage::Waiting, |s| s.stage)
                    .as_str()
                    .to_owned(),
                keys: status.map_or(0, |s| s.keys),
                bytes: status.map_or(0, |s| s.bytes),
                error: status.and_then(|s| s.error.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let hints = node
        .store
        .hint_summary()
        .map(|s| s.iter().map(|(_, n, _)| *n).sum())
        .unwrap_or(0);
    MovesResponse {
        node_id: node.id().to_owned(),
        map_version: state.version,
        pending_epoch: state.pending.as_ref().map_or(0, |m| m.epoch),
        moves,
        hints_pending: hints,
        map_digest: state.digest(),
    }
}

/// Whether report `r` was made under `state` itself: its version, and its digest (two
/// states of one version can exist until gossip settles which one wins; a report without
/// a digest, from an older node, is taken by its version).
fn same_state(r: &MovesResponse, state: &MapState) -> bool {
    r.map_version == state.version && (r.map_digest == 0 || r.map_digest == state.digest())
}

/// Every member's [`local`] report (this node's own included), or why it is missing.
pub async fn reports(
    node: &Arc<Node>,
    state: &MapState,
) -> Vec<(String, Result<MovesResponse, String>)> {
    let asks = state.members().into_iter().cloned().map(|m| async move {
        if m.id == node.id() {
            return (m.id, Ok(local(node)));
        }
        let r = match node
            .transport
            .change(&m.addr, ChangeCall::Moves, ASK_TIMEOUT)
            .await
        {
            Ok(ChangeReply::Moves(r)) => Ok(r),
            Ok(ChangeReply::State(_)) => Err("answered with another kind of answer".into()),
            Err(e) => Err(e.to_string()),
        };
        (m.id, r)
    });
    futures::future::join_all(asks).await
}

/// The progress of the pending change over the whole cluster.
pub async fn cluster(node: &Arc<Node>) -> ProgressResponse {
    let state = node.live().state.clone();
    let Some(pending) = &state.pending else {
        return ProgressResponse::default();
    };
    let expected = state.moves().len() as u32;
    let mut out = ProgressResponse {
        epoch: pending.epoch,
        ..Default::default()
    };
    let mut done = 0u32;
    for (id, report) in reports(node, &state).await {
        match report {
            Ok(r) => {
                let same = same_state(&r, &state);
                if (same || r.map_version > state.version) && r.pending_epoch == pending.epoch {
                    out.synced.push(id);
                }
                // Only reports made under this very state count.
                if same {
                    for m in r.moves {
                        out.keys_moved += m.keys;
                        out.bytes_moved += m.bytes;
                        done += u32::from(m.state == Stage::Done.as_str());
                        out.moves.push(m);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(member = %id, error = %e, "no progress report");
                out.unreachable.push(id);
            }
        }
    }
    out.done = done;
    out.pending = expected.saturating_sub(done);
    out
}

/// Why `state`'s pending map may not be put in force yet, given the cluster's
/// `progress`; None when it may. Members for which `down` holds (the failure detector's
/// verdict) are not waited for: see [`super::lagging`].
pub fn not_final(
    state: &MapState,
    progress: &ProgressResponse,
    down: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let unreachable: Vec<&str> = progress
        .unreachable
        .iter()
        .map(String::as_str)
        .filter(|id| !down(id))
        .collect();
    if !unreachable.is_empty() {
        return Some(format!(
            "{} did not report; every member that is not down must hold the pending map",
            unreachable.join(", ")
        ));
    }
    let synced: BTreeSet<&str> = progress.synced.iter().map(String::as_str).collect();
    let lagging: Vec<&str> = state
        .members()
        .into_iter()
        .map(|m| m.id.as_str())
        .filter(|id| !synced.contains(id) && !down(id))
        .collect();
    if !lagging.is_empty() {
        return Some(format!(
            "{} do not hold the pending map yet",
            lagging.join(", ")
        ));
    }
    if progress.pending > 0 {
        return Some(format!(
            "{} of {} partition moves left",
            progress.pending,
            progress.pending + progress.done
        ));
    }
    None
}

/// Whether node `id` holds nothing that the newest map's nodes lack: every move away
/// from it is done (each partition it replicates under the map in force but not under
/// the pending one has reached all its new replicas) and it holds no hints. Why not,
/// when it is not.
pub async fn drained(node: &Arc<Node>, id: &str) -> Result<(), String> {
    let state = node.live().state.clone();
    if state.pending.is_none()
        && state
            .current
            .as_ref()
            .is_some_and(|m| m.member(id).is_some())
    {
        return Err(format!("{id} is a member of the map in force"));
    }
    let reports = reports(node, &state).await;
    let Some((_, own)) = reports.iter().find(|(n, _)| n == id) else {
        // Not a member of any live map any more: only its hints could be left.
        let addr = node
            .gossip
            .addr_of(id)
            .ok_or_else(|| format!("{id} is not known"))?;
        let r = node
            .transport
            .change(&addr, ChangeCall::Moves, ASK_TIMEOUT)
            .await
            .map_err(|e| format!("{id} did not answer: {e}"))?;
        return match r {
            ChangeReply::Moves(r) if r.hints_pending == 0 => Ok(()),
            ChangeReply::Moves(r) => Err(format!("{id} holds {} hints", r.hints_pending)),
            ChangeReply::State(_) => Err(format!("{id} answered with another kind of answer")),
        };
    };
    match own {
        Ok(r) if r.hints_pending > 0 => {
            return Err(format!("{id} holds {} undelivered hints", r.hints_pending))
        }
        Ok(_) => {}
        Err(e) => return Err(format!("{id} did not answer: {e}")),
    }
    // Moves of partitions it leaves: every one must be reported done by its receiver.
    let (Some(old), Some(new)) = (&state.current, &state.pending) else {
        return Ok(());
    };
    let leaving: BTreeSet<u32> = old
        .replicated_by(id)
        .filter(|&p| !new.is_replica(p, id))
        .collect();
    let done: BTreeSet<(u32, String)> = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .filter(|r| same_state(r, &state))
        .flat_map(|r| r.moves.iter())
        .filter(|m| m.state == Stage::Done.as_str())
        .map(|m| (m.partition, m.to.clone()))
        .collect();
    let left = state
        .moves()
        .into_iter()
        .filter(|m| leaving.contains(&m.partition))
        .filter(|m| !done.contains(&(m.partition, m.to.clone())))
        .count();
    match left {
        0 => Ok(()),
        n => Err(format!(
            "{n} moves of partitions {id} leaves are not done yet"
        )),
    }
}
