//! The store's Merkle trees (see [`dynamo_core::merkle`]): one per partition over this
//! node's copies of its keys, rebuilt from a scan when the store opens and then kept up to
//! date from every batch the writer commits.

use dynamo_core::merkle::{depth_for, item_hash, Tree};
use dynamo_core::PartitionId;
use parking_lot::Mutex;

use crate::storage::keys::partition_range;
use crate::storage::{Cf, Engine, StorageError};

/// How a committed batch changed one key: XOR `toggle` into the leaf of `key_hash`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Toggle {
    pub partition: PartitionId,
    pub key_hash: u64,
    pub toggle: u64,
}

impl Toggle {
    /// The change of the key stored under data key `dk` from `old` to `new` (either
    /// absent).
    pub fn of(dk: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Self {
        let (partition, key) = dk.split_at(4);
        let item = |set: Option<&[u8]>| set.map_or(0, |s| item_hash(dk, s));
        Self {
            partition: PartitionId::from_be_bytes(partition.try_into().expect("4 bytes")),
            key_hash: dynamo_core::hash::key_hash(key),
            toggle: item(old) ^ item(new),
        }
    }
}

/// One tree per partition.
pub struct Trees {
    trees: Vec<Mutex<Tree>>,
}

/// Entries read per step of a scan.
/// Keys read per scan: every scan of the data CF sorts its memtable first (see
/// `storage::rocks`), so a partition is listed in as few scans as fit in memory.
const SCAN_PAGE: usize = 8192;

impl Trees {
    /// Builds the trees of `partitions` partitions from what `engine` stores. Called
    /// before the writer starts, so the scan sees a state no write is changing.
    pub fn build(engine: &dyn Engine, partitions: u32) -> Result<Self, StorageError> {
        let depth = depth_for(partitions);
        let trees = (0..partitions)
            .map(|p| {
                let mut tree = Tree::new(partitions, depth);
                for_each_in_partition(engine, p, |dk, set| {
                    let t = Toggle::of(dk, None, Some(set));
                    tree.toggle(t.key_hash, t.toggle);
                })?;
                Ok(Mutex::new(tree))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(Self { trees })
    }

    /// Empty trees (every key of every partition looks different to anti-entropy).
    pub fn empty(partitions: u32) -> Self {
        let depth = depth_for(partitions);
        Self {
            trees: (0..partitions)
                .map(|_| Mutex::new(Tree::new(partitions, depth)))
                .collect(),
        }
    }

    /// Takes in the changes of a batch the engine has just written.
    pub(super) fn apply(&self, toggles: &[Toggle]) {
        for t in toggles.iter().filter(|t| t.toggle != 0) {
            if let Some(tree) = self.trees.get(t.partition as usize) {
                tree.lock().toggle(t.key_hash, t.toggle);
            }
        }
    }

    /// Empties partition `p`'s tree (the writer has dropped the partition's keys).
    pub(super) fn reset(&self, p: PartitionId) {
        if let Some(tree) = self.trees.get(p as usize) {
            tree.lock().clear();
        }
    }

    /// Partition `p`'s tree as it is now.
    pub fn tree(&self, p: PartitionId) -> Option<Tree> {
        Some(self.trees.get(p as usize)?.lock().clone())
    }

    /// Partition `p`'s root hash.
    pub fn root(&self, p: PartitionId) -> Option<u64> {
        Some(self.trees.get(p as usize)?.lock().root())
    }

    /// The hashes of the children of `nodes` of `level` in partition `p`'s tree, 16 per
    /// node in order; `None` if any does not exist.
    pub fn children(&self, p: PartitionId, level: u32, nodes: &[u32]) -> Option<Vec<u64>> {
        let tree = self.trees.get(p as usize)?.lock();
        let mut out = Vec::with_capacity(nodes.len() * dynamo_core::merkle::FANOUT);
        for &i in nodes {
            out.extend_from_slice(tree.children(level, i as usize)?);
        }
        Some(out)
    }
}

/// Calls `f` with the data key and stored set of every key of partition `p`, in order.
pub fn for_each_in_partition(
    engine: &dyn Engine,
    p: PartitionId,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), StorageError> {
    let (prefix, _) = partition_range(p);
    let mut start = prefix.clone();
    loop {
        let page = engine.scan(Cf::Data, &prefix, &start, SCAN_PAGE)?;
        for (dk, set) in &page {
            f(dk, set);
        }
        match page.last() {
            Some((last, _)) if page.len() == SCAN_PAGE => {
                start = last.clone();
                start.push(0); // the next key after `last`
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use dynamo_core::{Actor, CausalContext, SiblingSet};

    use super::*;
    use crate::storage::memory::MemoryEngine;
    use crate::store::Store;

    /// The trees the writer keeps up to date equal trees rebuilt from what it wrote, and
    /// a store reopened on the same data rebuilds them equal.
    #[tokio::test]
    async fn kept_trees_equal_rebuilt_ones() {
        let engine = Arc::new(MemoryEngine::new());
        let store = Store::new(engine.clone(), 16, false);
        let mut changes = Vec::new();
        for i in 0..600u32 {
            let key = Bytes::from(format!("k{}", i % 150));
            if i % 7 == 3 {
                store.forget(key).await.unwrap();
                continue;
            }
            let mut set = SiblingSet::new();
            let actor = Actor::new(format!("n{}", i % 3), 1);
            set.update(
                &CausalContext::new(),
                &actor,
                Some(Bytes::from(i.to_string())),
            )
            .unwrap();
            changes.push(store.merge(key, set, None, None).unwrap());
        }
        for c in changes {
            c.await.unwrap();
        }
        let rebuilt = Trees::build(&*engine, 16).unwrap();
        let mut nonempty = 0;
        for p in 0..16 {
            assert_eq!(store.trees().tree(p), rebuilt.tree(p), "partition {p}");
            nonempty += usize::from(rebuilt.root(p) != Some(0));
        }
        assert!(nonempty > 10, "the keys spread over the partitions");
    }
}
