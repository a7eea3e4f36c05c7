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
}
