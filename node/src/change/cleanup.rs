//! Clean-up after a change of members: once the map in force (with no pending one) has
//! reached every member, a node drops its copies of the partitions it no longer
//! replicates, with their key-epoch records (the next write of such a key here mints a
//! new epoch, see [`crate::dots`], so no dot is ever issued twice).
//!
//! Waiting for every member means that no coordinator still reads under the old map
//! from this node when its copy goes. A partition goes in one store batch of two range
//! deletes (data and epoch records; on RocksDB one point delete per key, see
//! `storage::rocks`), applied between the writer's other groups, with its Merkle tree
//! emptied. A write that lands here later can only come from a coordinator
//! that still held the pending map (one holding only the old map is refused, see
//! [`crate::maps::stale_request`]): it needed W acknowledgements among the new replicas
//! as well, so the copy here is spare, and the next pass drops it.

use std::sync::Arc;

use super::transfer;
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
    if !super::lagging(node, state).is_empty() {
        return;
    }
    for p in 0..current.partitions {
        if current.is_replica(p, node.id()) || node.store.trees().root(p) == Some(0) {
            continue;
        }
        if node.live().state.version != state.version {
            return;
        }
        match node.store.drop_partition(p).await {
            Ok(()) => tracing::info!(
                partition = p,
                "dropped a partition this node no longer replicates"
            ),
            Err(e) => tracing::warn!(partition = p, error = %e, "could not drop a partition"),
        }
    }
}
