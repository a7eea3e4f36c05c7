//! Clean-up after a change of members: once the map in force (with no pending one) has
//! reached every member, a node drops its copies of the partitions it no longer
//! replicates, with their key-epoch records (the next write of such a key here mints a
//! new epoch, see [`crate::dots`], so no dot is ever issued twice).
//!
//! Waiting for every member means that no coordinator still reads under the old map
//! from this node when its copy goes. Before a partition goes, what this node holds of
//! it that the replicas lack is handed off to them ([`hand_off`]). A partition goes in one store batch of two range
//! deletes (data and epoch records; on RocksDB one point delete per key, see
//! `storage::rocks`), applied between the writer's other groups, with its Merkle tree
//! emptied; partitions go one at a time under the background budget ([`crate::budget`]). A write that lands here later can only come from a coordinator
//! that still held the pending map (one holding only the old map is refused, see
//! [`crate::maps::stale_request`]): it needed W acknowledgements among the new replicas
//! as well, so the copy here is spare, and the next pass drops it.

use std::sync::Arc;

use dynamo_core::{PartitionId, PartitionMap};

use super::transfer;
use crate::antientropy::exchange;
use crate::node::Node;

/// Drops what this node no longer replicates, if the time has come.
pub async fn step(node: &Arc<Node>) {
    let live = node.live();
    let state = &live.state;
    let Some(current) = state.current.as_ref().filter(|_| state.pending.is_none()) else {
        return;
    };
    if let Err(e) = transfer::forget_others(&**node.store.engine(), None) {
        tracing::warn!(error = %e, "could not forget finished moves");
    }
    let held = |p| node.store.trees().root(p) != Some(0);
    let leaving: Vec<u32> = (0..current.partitions)
        .filter(|&p| !current.is_replica(p, node.id()) && held(p))
        .collect();
    node.metrics.partitions_to_drop.set(leaving.len() as i64);
    if leaving.is_empty() || !super::lagging(node, state).is_empty() {
        return;
    }
    // Dropping a partition deletes each of its keys: paced by the background budget, at
    // about one partition's share of the store each, so that a node dropping a third of
    // its data after a change does not hold its writer for seconds.
    let share = node.store.engine().size_bytes()
        / (0..current.partitions).filter(|&p| held(p)).count().max(1) as u64;
    for p in leaving {
        if node.live().state.version != state.version {
            return;
        }
        node.budget.acquire(share).await;
        if !hand_off(node, current, p).await {
            continue;
        }
        match node.store.drop_partition(p).await {
            Ok(()) => {
                node.metrics.partitions_to_drop.dec();
                tracing::info!(
                    partition = p,
                    "dropped a partition this node no longer replicates"
                )
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "could not drop a partition"),
        }
    }
}

/// Sends every replica of `p` that is up what this node holds of `p` and the replica
/// lacks, synced there, before the copy here goes. A node that was down through a whole
/// change comes back holding the old map, and until gossip brings it the new one it
/// coordinates writes as an old replica; where its peers refuse them (see
/// [`crate::maps::refused`]) its own copy may be all that holds an acknowledged write
/// (W=1). Identical copies cost one root exchange. Whether every replica up took it, and
/// at least one did.
async fn hand_off(node: &Arc<Node>, current: &PartitionMap, p: PartitionId) -> bool {
    let mut took = 0;
    for m in current.preference_list(p) {
        if m.id == node.id() || node.health.is_down(&m.id) {
            continue;
        }
        let report = exchange::hand_off(node, m, &[p]).await;
        if !report.errors.is_empty() {
            tracing::warn!(partition = p, peer = %m.id, errors = ?report.errors, "could not hand a partition off before dropping it; will retry");
            return false;
        }
        if report.pushed > 0 {
            tracing::info!(partition = p, peer = %m.id, keys = report.pushed, "handed keys off before dropping a partition");
        }
        took += 1;
    }
    took > 0
}
