//! Read repair: after a get, replicas that answered with a stale state receive the join
//! of every state the coordinator saw.
//!
//! The coordinator answers the client after R replies; [`gather_and_repair`] keeps
//! collecting the rest until each replica answered or timed out, then repairs in the
//! background, so repair never adds to the client's latency.

use std::sync::Arc;

use bytes::Bytes;
use dynamo_core::codec::encode_set;
use dynamo_core::{Member, SiblingSet};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::network::{PeerError, WriteEntry};
use crate::node::Node;
use crate::storage::StorageError;
use crate::store::decode_stored;

/// The replicas whose state differs from the join of all states (pure).
pub fn stale<'a>(replies: &'a [(String, SiblingSet)], merged: &SiblingSet) -> Vec<&'a str> {
    replies
        .iter()
        .filter(|(_, s)| s != merged)
        .map(|(id, _)| id.as_str())
        .collect()
}

/// Decodes a replica's state as read (the stored encoding; empty when it holds nothing).
pub fn decode_state(raw: &[u8]) -> Result<SiblingSet, StorageError> {
    decode_stored((!raw.is_empty()).then_some(raw))
}

/// What reading one replica for repair only costs the background budget, bytes, its
/// repair included: a fixed cost, since its price is the call and the repair write it
/// mostly brings (a
/// new replica lacks most keys until its partition arrives), not its bytes. At the
/// floor of a 64 MiB/s ceiling (256 KiB/s) about 64 such reads a second per node. When
/// every read consulted the new replicas, a change of members added about one call and
/// one write per read on the moving partitions from its first second, which held the
/// clients' p99 at hundreds of milliseconds on a loaded two-core machine.
pub const REPAIR_ONLY_READ_COST: u64 = 4096;

/// The other replicas a read asks.
pub struct Replicas {
    /// Those whose answers count towards R (the preference list of the map reads use).
    pub counted: Vec<Member>,
    /// Those read for repair only: while members change, the new preference list's
    /// members that are not in the old one.
    pub repair_only: Vec<Member>,
    /// The key's partition, and the version of the map state the read was made under
    /// (for [`crate::arriving`]).
    pub partition: u32,
    pub version: u64,
}

/// Reads `key` from the other replicas and passes each counted answer to the coordinator
/// on `replies`: `None` when it is byte-for-byte this node's state `local` (nothing to
/// decode or merge, the common case), else the replica's state. Then repairs every
/// replica (this node included, and those read for repair only) that answered stale.
pub async fn gather_and_repair(
    node: Arc<Node>,
    key: Bytes,
    local: Bytes,
    replicas: Replicas,
    replies: mpsc::UnboundedSender<Option<SiblingSet>>,
) {
    let (partition, version) = (replicas.partition, replicas.version);
    // Their reads were charged to the budget up front, repair included.
    let paid: Vec<String> = replicas.repair_only.iter().map(|m| m.id.clone()).collect();
    let asked = replicas
        .counted
        .into_iter()
        .map(|m| (m, true))
        .chain(replicas.repair_only.into_iter().map(|m| (m, false)));
    let mut inflight: FuturesUnordered<_> = asked
        .map(|(m, counted)| {
            let node = node.clone();
            let key = key.clone();
            async move {
                let r = node.transport.read(&m, key, node.timeout()).await;
                (m, counted, r)
            }
        })
        .collect();
    // Replicas whose state is identical to this node's, and those whose state differs.
    let mut same = vec![node.id().to_owned()];
    let mut differing = Vec::new();
    while let Some((m, counted, result)) = inflight.next().await {
        if !counted && result.as_ref().is_ok_and(|raw| raw.is_empty()) {
            // A new replica without the key is most likely still receiving the
            // partition: the transfer brings the key, a repair would do its work key by
            // key (see `arriving`).
            let now = tokio::time::Instant::now();
            node.arriving.note(&m.id, partition, version, now);
            node.metrics.read_repairs_arriving.inc();
            continue;
        }
        let state = result.and_then(|raw| {
            if raw == local {
                return Ok(None);
            }
            decode_state(&raw)
                .map(Some)
                .map_err(|e| PeerError::Corrupt(e.to_string()))
        });
        match state {
            Ok(state) => {
                if counted {
                    let _ = replies.send(state.clone());
                }
                match state {
                    None => same.push(m.id.clone()),
                    Some(set) => differing.push((m.id.clone(), set)),
                }
            }
            Err(e) => {
                tracing::debug!(peer = %m.id, error = %e, "replica read failed");
            }
        }
    }
    drop(replies);
    if differing.is_empty() {
        return; // every replica that answered holds exactly what this node holds
    }
    let local = match decode_state(&local) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(error = %e, "local state unreadable; no read repair");
            return;
        }
    };
    let states: Vec<(String, SiblingSet)> = same
        .into_iter()
        .map(|id| (id, local.clone()))
        .chain(differing)
        .collect();
    let merged = states
        .iter()
        .fold(SiblingSet::new(), |acc, (_, s)| acc.join(s));
    let mut encoded = None;
    for id in stale(&states, &merged) {
        node.metrics.read_repairs.inc();
        // Repair is background work: it shares the budget that yields to clients. Over
        // budget it is skipped rather than queued (anti-entropy repairs the key later):
        // waiting repairs would pile up with every read of a stale replica.
        if !paid.iter().any(|p| p == id)
            && !node
                .budget
                .try_acquire((key.len() + merged.value_bytes()) as u64)
        {
            node.metrics.read_repairs_skipped.inc();
            continue;
        }
        if id == node.id() {
            if let Err(e) = node.store.join(key.clone(), merged.clone()).await {
                tracing::warn!(error = %e, "local read repair failed");
            }
        } else if let Some(m) = node.member(id) {
            let set = encoded.get_or_insert_with(|| Bytes::from(encode_set(&merged)));
            let entry = WriteEntry {
                key: key.clone(),
                set: set.clone(),
                hint_for: None,
                sync: false,
            };
            if let Err(e) = node.transport.write(&m, vec![entry], node.timeout()).await {
                tracing::debug!(peer = %id, error = %e, "read repair failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::{Actor, CausalContext};

    #[test]
    fn only_replicas_behind_the_join_are_stale() {
        let mut fresh = SiblingSet::new();
        fresh
            .update(
                &CausalContext::new(),
                &Actor::new("a", 1),
                Some(Bytes::from("v")),
            )
            .unwrap();
        let replies = vec![
            ("a".to_owned(), fresh.clone()),
            ("b".to_owned(), SiblingSet::new()),
        ];
        let merged = replies
            .iter()
            .fold(SiblingSet::new(), |acc, (_, s)| acc.join(s));
        assert_eq!(stale(&replies, &merged), ["b"]);
    }
}
