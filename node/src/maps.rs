//! The live partition maps this node holds (the map in force and a pending one, see
//! [`dynamo_core::map_state`]), persisted in its metadata so that a restart resumes a
//! change where it was, and installed only when newer (see [`Node::install`]).

use std::sync::Arc;

use dynamo_core::map_state::MapState;
use dynamo_core::PartitionMap;

use crate::storage::{Batch, Cf, Engine, StorageError};

const MAP_STATE: &[u8] = b"map_state";

/// The map state stored in `engine`, if any.
pub fn load(engine: &dyn Engine) -> Result<Option<MapState>, StorageError> {
    let Some(raw) = engine.get(Cf::Meta, MAP_STATE)? else {
        return Ok(None);
    };
    let state: MapState = serde_json::from_slice(&raw)
        .map_err(|e| StorageError::Corrupt(format!("stored map state: {e}")))?;
    state
        .rebuild()
        .map(Some)
        .map_err(|e| StorageError::Corrupt(format!("stored map state: {e}")))
}

/// Stores `state`, synced.
pub fn save(engine: &dyn Engine, state: &MapState) -> Result<(), StorageError> {
    let mut b = Batch::default();
    b.put(
        Cf::Meta,
        MAP_STATE.to_vec(),
        serde_json::to_vec(state).expect("a map state serializes"),
    );
    engine.write(&b, true)
}

/// One snapshot of the live maps: read it once per request, so that one request sees
/// one state.
#[derive(Debug, Default)]
pub struct Live {
    pub state: MapState,
    /// The map reads and routing use ([`MapState::reads`]), shared.
    pub reads: Option<Arc<PartitionMap>>,
}

impl Live {
    pub fn new(state: MapState) -> Self {
        let reads = state.reads().cloned().map(Arc::new);
        Self { state, reads }
    }
}

/// Why a peer's request made under map epoch `sender_epoch` (the newest it holds; 0:
/// not said) must be refused by a node holding `held`: the node's map in force is newer,
/// so the sender's preference lists are finalized away.
pub fn stale_request(held: &MapState, sender_epoch: u64) -> Option<String> {
    let current = held.current.as_ref()?.epoch;
    (sender_epoch != 0 && sender_epoch < current).then(|| {
        format!(
            "request made under partition map epoch {sender_epoch}, but epoch {current} is in \
             force here; the sender learns it by gossip"
        )
    })
}

/// Why a peer's write of `key` made under map epoch `sender_epoch` (the newest it holds;
/// 0: not said) must be refused by node `me` holding `held`: a change is pending that
/// the sender does not know of, and `me` is a replica of the key's partition that the
/// pending map drops. A sender that missed the commit (it was down or cut off while it
/// spread) writes to the old preference list only; with its writes refused where they
/// would leave with the partition, the W acknowledgements it needs come from replicas
/// that stay, so the write is on W replicas of the pending map too.
pub fn stale_write(held: &MapState, sender_epoch: u64, me: &str, key: &[u8]) -> Option<String> {
    let (current, pending) = (held.current.as_ref()?, held.pending.as_ref()?);
    if sender_epoch == 0 || sender_epoch >= pending.epoch {
        return None;
    }
    let p = current.partition_of(key);
    (current.is_replica(p, me) && !pending.is_replica(p, me)).then(|| {
        format!(
            "write made under partition map epoch {sender_epoch}, but epoch {} is pending and \
             moves partition {p} away from this node; the sender learns it by gossip",
            pending.epoch
        )
    })
}

/// Why node `me` holding `held` refuses a peer's replica call made under map epoch
/// `sender_epoch`: a read or write under a map finalized away ([`stale_request`]), or a
/// write of one of `written` (the keys of its entries that are not hints) that would
/// leave with a partition the sender does not know is moving ([`stale_write`]). Every
/// transport applies it, the in-process one included.
pub fn refused<'a>(
    held: &MapState,
    sender_epoch: u64,
    me: &str,
    written: impl IntoIterator<Item = &'a [u8]>,
) -> Option<String> {
    stale_request(held, sender_epoch).or_else(|| {
        written
            .into_iter()
            .find_map(|key| stale_write(held, sender_epoch, me, key))
    })
}

/// Why a map state was not installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the cluster's map has {theirs} partitions, but this node's store has {ours}; \
         start it with --partitions {theirs}"
    )]
    Partitions { ours: u32, theirs: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;
    use dynamo_core::{planner, Member};

    #[test]
    fn a_saved_state_loads_back_equal() {
        let engine = MemoryEngine::new();
        assert_eq!(load(&engine).unwrap(), None);
        let members: Vec<Member> = (1..=3)
            .map(|i| Member::new(format!("n{i}"), format!("h:{i}")))
            .collect();
        let old = planner::plan(None, &members, 32, 3).unwrap();
        let new = planner::plan(Some(&old), &members[..2], 32, 2).unwrap();
        let state = MapState::in_force(old).commit(new).unwrap().unwrap();
        save(&engine, &state).unwrap();
        assert_eq!(load(&engine).unwrap(), Some(state.clone()));
        // In force: epoch 1, pending 2. Senders that know epoch 1 or newer are served.
        assert_eq!(stale_request(&state, 1), None);
        assert_eq!(stale_request(&state, 2), None);
        assert_eq!(stale_request(&state, 0), None, "not said");
        let done = state.finalize(2).unwrap().unwrap();
        assert!(stale_request(&done, 1)
            .unwrap()
            .contains("epoch 2 is in force"));
        assert_eq!(stale_request(&done, 2), None);
        assert_eq!(stale_request(&MapState::default(), 1), None);
    }

    #[test]
    fn a_write_from_a_sender_that_missed_the_pending_map_is_refused_where_it_would_leave() {
        let members = |ids: &[&str]| -> Vec<Member> {
            ids.iter()
                .map(|id| Member::new(*id, format!("{id}:1")))
                .collect()
        };
        let old = dynamo_core::planner::plan(None, &members(&["a", "b", "c", "d"]), 16, 3).unwrap();
        let new =
            dynamo_core::planner::plan(Some(&old), &members(&["a", "b", "c"]), 16, 3).unwrap();
        let state = MapState::in_force(old.clone())
            .commit(new.clone())
            .unwrap()
            .unwrap();
        // A key of a partition that d replicates now and not under the pending map.
        let key = (0..10_000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| old.is_replica(old.partition_of(k), "d"))
            .unwrap();
        let p = old.partition_of(&key);
        assert!(!new.is_replica(p, "d"));
        let why = stale_write(&state, old.epoch, "d", &key).expect("refused on d");
        assert!(
            why.contains(&format!("epoch {} is pending", new.epoch)),
            "{why}"
        );
        // Senders that know the pending map, or do not say, are served; so are the
        // replicas that stay, and any node once nothing is pending.
        assert_eq!(stale_write(&state, new.epoch, "d", &key), None);
        assert_eq!(stale_write(&state, 0, "d", &key), None);
        let staying = old
            .preference_list(p)
            .find(|m| new.is_replica(p, &m.id))
            .unwrap();
        assert_eq!(stale_write(&state, old.epoch, &staying.id, &key), None);
        assert_eq!(stale_write(&MapState::in_force(old), 1, "d", &key), None);
    }
}
