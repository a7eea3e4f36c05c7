//! Merkle trees for anti-entropy: one per (partition, replica), over the key-hash space.
//!
//! A partition's keys are spread over `16^depth` leaves by the bits of their key hash
//! just below the partition's own bits, so a leaf is a fixed slice of the hash space and
//! two replicas put every key in the same leaf. Every node of the tree is the XOR of the
//! [`item_hash`]es of the keys below it (a stored key's item hash covers its key and
//! its encoded sibling set). So a write updates a tree in O(depth) with no read of other
//! keys: XOR out the old item, XOR in the new one. Two replicas holding the same
//! versions have equal roots; where they differ, only the subtrees whose hashes differ
//! are descended into, so the cost of a comparison grows with the difference, not with
//! the data.
//!
//! XOR is not collision-resistant against an adversary, but versions are written by the
//! cluster, not chosen to collide: two different contents of a subtree have the same hash
//! with probability 2^-64.

use crate::hash::key_hash;

/// Children of every inner node.
pub const FANOUT: usize = 16;
const FANOUT_BITS: u32 = 4;

/// The hash of one stored key's state: its data key (partition and key) and the encoded
/// sibling set stored under it. Replicas holding the same set of a key have the same
/// item hash, since the set encoding is canonical.
pub fn item_hash(key: &[u8], set: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x6d65_726b_6c65); // "merkle"
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(set);
    h.digest()
}

/// The depth (levels below the root) of the trees of a cluster of `partitions`
/// partitions: 4,096 leaves per partition up to 512 partitions, else 256. A node then
/// keeps at most 10 MiB of trees, and a leaf holds about one key in 4,096 of its
/// partition.
pub fn depth_for(partitions: u32) -> u32 {
    if partitions <= 512 {
        3
    } else {
        2
    }
}

/// The leaf of a key with hash `key_hash` in the trees of a cluster of `partitions`
/// partitions with `depth` levels: the hash bits just below the partition's.
pub fn leaf_of_hash(partitions: u32, depth: u32, key_hash: u64) -> usize {
    let below_partition = key_hash << partitions.trailing_zeros();
    (below_partition >> (64 - FANOUT_BITS * depth)) as usize
}

/// A tree over one partition's slice of the key-hash space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Bits of the key hash that name the partition (log2 of the partition count).
    partition_bits: u32,
    depth: u32,
    /// `levels[0]` is the root alone, `levels[depth]` the leaves; level `l` has `16^l`
    /// nodes, and node `i` of level `l` has children `16i..16i+16` of level `l+1`.
    levels: Vec<Vec<u64>>,
}

impl Tree {
    /// An empty tree (every hash 0) for a cluster of `partitions` partitions (a power of
    /// two) with `depth` levels below the root (at most 4).
    pub fn new(partitions: u32, depth: u32) -> Self {
        assert!(partitions.is_power_of_two(), "{partitions} partitions");
        assert!((1..=4).contains(&depth), "depth {depth}");
        Self {
            partition_bits: partitions.trailing_zeros(),
            depth,
            levels: (0..=depth)
                .map(|l| vec![0; 1 << (FANOUT_BITS * l)])
                .collect(),
        }
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Makes every hash 0 again (the tree of an empty partition).
    pub fn clear(&mut self) {
        self.levels.iter_mut().for_each(|level| level.fill(0));
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.levels[self.depth as usize].len()
    }

    pub fn root(&self) -> u64 {
        self.levels[0][0]
    }

    /// The leaf of a key with hash `key_hash`: the hash bits just below the partition's.
    pub fn leaf_of_hash(&self, key_hash: u64) -> usize {
        leaf_of_hash(1 << self.partition_bits, self.depth, key_hash)
    }

    /// The leaf of `key`.
    pub fn leaf_of(&self, key: &[u8]) -> usize {
        self.leaf_of_hash(key_hash(key))
    }

    /// XORs `item` into the leaf of a key with hash `key_hash` and into every node above
    /// it: adds the item if it was not in, removes it if it was.
    pub fn toggle(&mut self, key_hash: u64, item: u64) {
        let mut i = self.leaf_of_hash(key_hash);
        for level in self.levels.iter_mut().rev() {
            level[i] ^= item;
            i /= FANOUT;
        }
    }

    /// The hash of node `index` of `level` (0 is the root's level), if there is one.
    pub fn node(&self, level: u32, index: usize) -> Option<u64> {
        self.levels.get(level as usize)?.get(index).copied()
    }

    /// The hashes of the children of node `index` of `level`, if it has any.
    pub fn children(&self, level: u32, index: usize) -> Option<&[u64]> {
        if level >= self.depth {
            return None;
        }
        let below = &self.levels[level as usize + 1];
        below.get(index * FANOUT..(index + 1) * FANOUT)
    }

    /// Which of the children of node `index` of `level` differ from `theirs` (the other
    /// replica's hashes of the same children), as node indexes of level `level + 1`.
    pub fn differing_children(&self, level: u32, index: usize, theirs: &[u64]) -> Vec<usize> {
        let Some(mine) = self.children(level, index) else {
            return Vec::new();
        };
        mine.iter()
            .zip(theirs)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(c, _)| index * FANOUT + c)
            .collect()
    }

    /// The leaves whose hashes differ from `other`'s, found by descending only into
    /// differing subtrees (what two replicas do over the network, here in one place).
    pub fn differing_leaves(&self, other: &Tree) -> Vec<usize> {
        assert_eq!(
            (self.partition_bits, self.depth),
            (other.partition_bits, other.depth),
            "trees of different shapes"
        );
        let mut frontier = if self.root() == other.root() {
            Vec::new()
        } else {
            vec![0]
        };
        for level in 0..self.depth {
            frontier = frontier
                .into_iter()
                .flat_map(|i| {
                    let theirs = other.children(level, i).expect("same shape");
                    self.differing_children(level, i, theirs)
                })
                .collect();
        }
        frontier
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::ring::partition_of;

    const Q: u32 = 16;

    /// A tree built from scratch out of a partition's `(key, set bytes)`.
    fn built(p: u32, data: &BTreeMap<Vec<u8>, Vec<u8>>, depth: u32) -> Tree {
        let mut t = Tree::new(Q, depth);
        for (k, v) in data.iter().filter(|(k, _)| partition_of(k, Q) == p) {
            t.toggle(key_hash(k), item_hash(k, v));
        }
        t
    }

    #[test]
    fn leaves_slice_the_partition_hash_space_in_order() {
        let t = Tree::new(Q, 2);
        assert_eq!(t.leaves(), 256);
        // The first and last hash of partition 3 go to the first and last leaf.
        let first = 3u64 << 60;
        let last = (4u64 << 60) - 1;
        assert_eq!((t.leaf_of_hash(first), t.leaf_of_hash(last)), (0, 255));
        assert_eq!(t.leaf_of_hash(first | (1u64 << 52)), 1);
    }

    #[test]
    fn identical_contents_have_equal_roots_and_no_differing_leaves() {
        let data: BTreeMap<Vec<u8>, Vec<u8>> = (0..500u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; 3]))
            .collect();
        let (a, b) = (built(1, &data, 3), built(1, &data, 3));
        assert_eq!(a.root(), b.root());
        assert_ne!(a.root(), 0);
        assert!(a.differing_leaves(&b).is_empty());
    }

    fn ops() -> impl Strategy<Value = Vec<(u16, Option<u8>)>> {
        // (key, new set bytes or a drop of the key), over few keys so they collide.
        proptest::collection::vec((0u16..300, proptest::option::of(any::<u8>())), 0..400)
    }

    proptest! {
        /// A tree kept up to date write by write equals one rebuilt from the final data.
        #[test]
        fn incremental_equals_rebuilt(ops in ops(), depth in 1u32..4) {
            let mut data: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut trees: Vec<Tree> = (0..Q).map(|_| Tree::new(Q, depth)).collect();
            for (k, v) in ops {
                let key = format!("key-{k}").into_bytes();
                let tree = &mut trees[partition_of(&key, Q) as usize];
                if let Some(old) = data.get(&key) {
                    tree.toggle(key_hash(&key), item_hash(&key, old));
                }
                match v {
                    Some(v) => {
                        let set = vec![v; 1 + v as usize % 5];
                        tree.toggle(key_hash(&key), item_hash(&key, &set));
                        data.insert(key, set);
                    }
                    None => {
                        data.remove(&key);
                    }
                }
            }
            for p in 0..Q {
                prop_assert_eq!(&trees[p as usize], &built(p, &data, depth));
            }
        }

        /// Two replicas' trees differ in exactly the leaves of the keys whose stored
        /// state differs (present on one side only, or with different sets).
        #[test]
        fn diff_names_exactly_the_differing_keys_leaves(
            common in proptest::collection::btree_map(0u16..2000, any::<u8>(), 0..300),
            changes in proptest::collection::btree_map(0u16..2000, (any::<bool>(), proptest::option::of(any::<u8>())), 0..40),
            depth in 1u32..4,
        ) {
            let key = |k: u16| format!("key-{k}").into_bytes();
            let a: BTreeMap<Vec<u8>, Vec<u8>> =
                common.iter().map(|(&k, &v)| (key(k), vec![v])).collect();
            let mut b = a.clone();
            // Each change alters replica b's copy of a key: a new set, or the key gone.
            for (&k, &(_, v)) in &changes {
                match v {
                    Some(v) => { b.insert(key(k), vec![v, 1]); }
                    None => { b.remove(&key(k)); }
                }
            }
            let differing: Vec<&Vec<u8>> = a.keys().chain(b.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .collect();
            for p in 0..Q {
                let (ta, tb) = (built(p, &a, depth), built(p, &b, depth));
                let want: BTreeSet<usize> = differing.iter()
                    .filter(|k| partition_of(k, Q) == p)
                    .map(|k| ta.leaf_of(k))
                    .collect();
                let got: BTreeSet<usize> = ta.differing_leaves(&tb).into_iter().collect();
                // Several changes in one leaf could cancel out only with probability
                // 2^-64 per leaf.
                prop_assert_eq!(&got, &want, "partition {}", p);
                prop_assert_eq!(ta.root() == tb.root(), want.is_empty());
            }
        }
    }
}
