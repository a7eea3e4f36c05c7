//! Node identity and incarnation, kept in the metadata column family.
//!
//! The incarnation is part of every actor id this node writes with. It is a fresh random
//! number whenever the node starts with an empty (or lost) data directory, and also after
//! an unclean shutdown: writes that were acknowledged by peers but not yet synced here may
//! be gone, and reusing their counters would let old versions silently dominate new ones
//! (Riak's KV679 data loss). A clean shutdown leaves a marker that lets the next start keep
//! the incarnation.

use crate::storage::{Batch, Cf, Engine, StorageError};

const NODE_ID: &[u8] = b"node_id";
const CLUSTER_ID: &[u8] = b"cluster_id";
const INCARNATION: &[u8] = b"incarnation";
const CLEAN_SHUTDOWN: &[u8] = b"clean_shutdown";
/// The first key epoch not minted yet (see [`crate::dots`]), kept by a clean stop.
const NEXT_EPOCH: &[u8] = b"next_epoch";

/// Why this data directory cannot be used by this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "data directory belongs to node {stored:?}, not {configured:?}; point --data-dir elsewhere"
    )]
    OtherNode { stored: String, configured: String },
    #[error("data directory belongs to cluster {stored:?}, not {configured:?}")]
    OtherCluster { stored: String, configured: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Who this node is, for this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub incarnation: u64,
    /// Whether the incarnation is new in this run (fresh data directory or unclean stop).
    pub new_incarnation: bool,
    /// The first key epoch of the incarnation not minted yet (1 for a new incarnation).
    pub next_epoch: u64,
}

fn get_string(engine: &dyn Engine, key: &[u8]) -> Result<Option<String>, StorageError> {
    Ok(engine
        .get(Cf::Meta, key)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Loads or creates the identity, and clears the clean-shutdown marker for this run.
pub fn open(
    engine: &dyn Engine,
    node_id: &str,
    cluster_id: &str,
) -> Result<Identity, IdentityError> {
    if let Some(stored) = get_string(engine, NODE_ID)? {
        if stored != node_id {
            return Err(IdentityError::OtherNode {
                stored,
                configured: node_id.into(),
            });
        }
    }
    if let Some(stored) = get_string(engine, CLUSTER_ID)? {
        if stored != cluster_id {
            return Err(IdentityError::OtherCluster {
                stored,
                configured: cluster_id.into(),
            });
        }
    }
    let stored_inc = engine
        .get(Cf::Meta, INCARNATION)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    let clean = engine.get(Cf::Meta, CLEAN_SHUTDOWN)?.is_some();
    let (incarnation, new_incarnation) = match stored_inc {
        Some(inc) if clean => (inc, false),
        Some(inc) => (fresh_incarnation(inc), true),
        None if crate::determinism::sabotaged(crate::determinism::Sabotage::ReusedDots) => {
            (1, true)
        }
        None => (fresh_incarnation(0), true),
    };
    // A kept incarnation goes on minting where its clean stop left off. (A store from
    // before epochs has none stored, and minted none.)
    let next_epoch = match new_incarnation {
        true => 1,
        false => engine
            .get(Cf::Meta, NEXT_EPOCH)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(1, u64::from_be_bytes)
            .max(1),
    };
    let mut b = Batch::default();
    b.put(Cf::Meta, NODE_ID.to_vec(), node_id.as_bytes().to_vec());
    b.put(
        Cf::Meta,
        CLUSTER_ID.to_vec(),
        cluster_id.as_bytes().to_vec(),
    );
    b.put(
        Cf::Meta,
        INCARNATION.to_vec(),
        incarnation.to_be_bytes().to_vec(),
    );
    b.delete(Cf::Meta, CLEAN_SHUTDOWN.to_vec());
    engine.write(&b, true)?;
    Ok(Identity {
        node_id: node_id.into(),
        incarnation,
        new_incarnation,
        next_epoch,
    })
}

/// Records a clean shutdown: everything is synced and the incarnation may be kept, with
/// `next_epoch` the first key epoch it has not minted (no write can mint one any more).
pub fn mark_clean_shutdown(engine: &dyn Engine, next_epoch: u64) -> Result<(), StorageError> {
    engine.sync()?;
    let mut b = Batch::default();
    b.put(
        Cf::Meta,
        NEXT_EPOCH.to_vec(),
        next_epoch.to_be_bytes().to_vec(),
    );
    b.put(Cf::Meta, CLEAN_SHUTDOWN.to_vec(), vec![1]);
    engine.write(&b, true)
}

/// A random incarnation different from `previous` and from 0.
fn fresh_incarnation(previous: u64) -> u64 {
    loop {
        let inc: u64 = crate::determinism::random_u64() >> 1;
        if inc != 0 && inc != previous {
            return inc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;

    #[test]
    fn clean_restart_keeps_incarnation_unclean_changes_it() {
        let e = MemoryEngine::new();
        let first = open(&e, "n1", "c").unwrap();
        assert!(first.new_incarnation);
        assert_eq!(first.next_epoch, 1);
        mark_clean_shutdown(&e, 42).unwrap();
        let second = open(&e, "n1", "c").unwrap();
        assert_eq!(second.incarnation, first.incarnation);
        assert!(!second.new_incarnation);
        assert_eq!(
            second.next_epoch, 42,
            "epochs go on where the stop left off"
        );
        // No marker this time: a crash.
        let third = open(&e, "n1", "c").unwrap();
        assert_ne!(third.incarnation, second.incarnation);
        assert_eq!(
            third.next_epoch, 1,
            "a new incarnation starts its epochs afresh"
        );
    }

    #[test]
    fn wiped_directory_gets_new_incarnation() {
        let a = open(&MemoryEngine::new(), "n1", "c").unwrap();
        let b = open(&MemoryEngine::new(), "n1", "c").unwrap();
        assert_ne!(a.incarnation, b.incarnation);
    }

    #[test]
    fn refuses_another_nodes_directory() {
        let e = MemoryEngine::new();
        open(&e, "n1", "c").unwrap();
        assert!(matches!(
            open(&e, "n2", "c"),
            Err(IdentityError::OtherNode { .. })
        ));
        assert!(matches!(
            open(&e, "n1", "d"),
            Err(IdentityError::OtherCluster { .. })
        ));
    }
}
