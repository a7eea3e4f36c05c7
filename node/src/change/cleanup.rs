//! Clean-up after a change of members: once the map in force (with no pending one) has
//! reached every member, a node drops its copies of the partitions it no longer
//! replicates, with their key-epoch records (the next write of such a key here mints a
//! new epoch, see [`crate::dots`], so no dot is ever issued twice).
//!
//! Waiting for every member means that no coordinator still reads under the old map
//! from this node when its copy goes. A key written here meanwhile (by a coordinator
//! that had not seen the finalize yet) is dropped only if unchanged since it was read;
//! a later pass takes it.

use std::sync::Arc;

use bytes::Bytes;

use super::transfer;
use crate::node::Node;
use crate::storage::keys::partition_range;
use crate::storage::Cf;
use crate::store::Change;

/// Keys dropped in one store request.
const DROP_BATCH: usize = 256;

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
        match drop_partition(node, p).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    partition = p,
                    keys = n,
                    "dropped a partition this node no longer replicates"
                )
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "could not drop a partition"),
        }
    }
}

/// Drops this node's copies of partition `p`'s keys, each only if unchanged since read.
async fn drop_partition(node: &Arc<Node>, p: u32) -> Result<u64, crate::storage::StorageError> {
    let (prefix, _) = partition_range(p);
    let mut start = prefix.clone();
    let mut dropped = 0;
    loop {
        let page = node
            .store
            .engine()
            .scan(Cf::Data, &prefix, &start, DROP_BATCH)?;
        let full = page.len() == DROP_BATCH;
        if let Some((last, _)) = page.last() {
            start = last.clone();
            start.push(0);
        }
        let changes: Vec<Change> = page
            .into_iter()
            .map(|(dk, raw)| Change::Forget {
                key: Bytes::copy_from_slice(&dk[4..]),
                if_raw: Some(Bytes::from(raw)),
            })
            .collect();
        dropped += changes.len() as u64;
        if !changes.is_empty() {
            node.store.apply_all(changes).await?;
        }
        if !full {
            return Ok(dropped);
        }
    }
}
