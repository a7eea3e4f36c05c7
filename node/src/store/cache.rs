//! The sets written or read last, shared by the writer thread and every reader, so that
//! most reads and read-modify-writes of a busy key skip the engine.
//!
//! When this cache was added, a RocksDB point read of a key the memtable held was a
//! skiplist search over the memtable, nearly every step a cache miss: measured at half of
//! peak load it was the largest single cost of a get on a node (2.8 µs of the 28 µs a
//! node spent per get, 17% of its CPU inside `DB::Get`). The data memtable is hashed now
//! (see `storage::rocks`), but a read through RocksDB still costs a bloom check, a probe
//! and a copy across its API. A hit here is one hash lookup under an uncontended lock.
//!
//! # Never stale
//!
//! The writer thread is the only one that changes stored sets. After each batch is in the
//! engine, and before any of its writes is answered, it records the new sets here
//! ([`SetCache::written`]), so a read that follows an acknowledged write always sees it.
//!
//! A reader that misses fills the entry from the engine ([`SetCache::fill`]), but only if
//! no write touched the key's shard between its miss and the fill: each shard counts its
//! writes, the miss carries the count, and a fill whose count is out of date is dropped.
//! Otherwise a slow reader could put back a set older than one the writer just recorded.
//!
//! Bounded like [`Recent`]: two generations per shard, within twice the byte budget.

use bytes::Bytes;
use parking_lot::Mutex;

use super::recent::Recent;
use crate::storage::{Batch, Cf, Op};

/// Shards, each with its own lock (a power of two).
const SHARDS: usize = 16;
/// Largest set a reader's fill keeps (the writer's own writes are always kept).
const MAX_FILL_BYTES: usize = 64 << 10;

struct Shard {
    sets: Recent,
    /// Writes recorded in this shard, for [`Miss`].
    writes: u64,
    /// Lookups that found a set, and that did not (counted under the lock already held).
    hits: u64,
    misses: u64,
}

/// Lookups since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A key not held; what [`SetCache::fill`] needs to know whether it may add it.
#[derive(Debug)]
pub(super) struct Miss {
    shard: usize,
    writes: u64,
}

/// Recently used sets by data key (partition-prefixed), in the stored encoding.
pub(super) struct SetCache {
    shards: Box<[Mutex<Shard>]>,
}

impl SetCache {
    /// An empty cache holding at most about `2 * budget` bytes.
    pub fn new(budget: usize) -> Self {
        let per_shard = (budget / SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    sets: Recent::new(per_shard),
                    writes: 0,
                    hits: 0,
                    misses: 0,
                })
            })
            .collect();
        Self { shards }
    }

    /// The shard of a data key: by its partition (the key's hash), mixed so that a node
    /// owning a few partitions still spreads over the shards.
    pub(super) fn shard_of(dk: &[u8]) -> usize {
        let p = dk
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        (p.wrapping_mul(0x9E37_79B9) >> 28) as usize % SHARDS
    }

    /// The stored encoding of `dk`'s set, or what a later [`SetCache::fill`] needs.
    pub fn get(&self, dk: &[u8]) -> Result<Bytes, Miss> {
        let shard = Self::shard_of(dk);
        let mut s = self.shards[shard].lock();
        match s.sets.get(dk).cloned() {
            Some(set) => {
                s.hits += 1;
                Ok(set)
            }
            None => {
                s.misses += 1;
                Err(Miss {
                    shard,
                    writes: s.writes,
                })
            }
        }
    }

    /// Hits and misses so far, over all shards.
    pub fn stats(&self) -> CacheStats {
        self.shards
            .iter()
            .fold(CacheStats::default(), |acc, shard| {
                let s = shard.lock();
                CacheStats {
                    hits: acc.hits + s.hits,
                    misses: acc.misses + s.misses,
                }
            })
    }

    /// Adds `set`, read from the engine after `miss`, unless a write reached the shard
    /// since (the engine may then hold something newer than `set`).
    pub fn fill(&self, dk: &[u8], miss: Miss, set: &Bytes) {
        if set.len() > MAX_FILL_BYTES {
            return;
        }
        let mut s = self.shards[miss.shard].lock();
        if s.writes == miss.writes {
            s.sets.put(dk.to_vec(), set.clone());
        }
    }

    /// Takes in the data writes of a batch the engine has just written.
    pub fn written(&self, batch: Batch) {
        for op in batch.ops {
            match op {
                Op::Put(Cf::Data, k, v) => {
                    let mut s = self.shards[Self::shard_of(&k)].lock();
                    s.writes += 1;
                    s.sets.put(k, Bytes::from(v));
                }
                Op::Delete(Cf::Data, k) => {
                    let mut s = self.shards[Self::shard_of(&k)].lock();
                    s.writes += 1;
                    s.sets.remove(&k);
                }
                Op::DeleteRange(Cf::Data, ..) => self.clear(),
                _ => {}
            }
        }
    }

    /// Forgets everything (after a range delete, or a failed write whose effect on the
    /// engine is unknown); fills already under way are dropped.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            s.writes += 1;
            s.sets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dk(p: u32, key: &str) -> Vec<u8> {
        crate::storage::keys::data_key(p, key.as_bytes())
    }

    fn put(cache: &SetCache, key: &[u8], set: &str) {
        let mut b = Batch::default();
        b.put(Cf::Data, key.to_vec(), set.as_bytes().to_vec());
        cache.written(b);
    }

    #[test]
    fn writes_are_seen_and_deletes_forget() {
        let c = SetCache::new(1 << 20);
        let (a, b) = (dk(1, "a"), dk(2, "b"));
        put(&c, &a, "1");
        put(&c, &b, "2");
        put(&c, &a, "3");
        assert_eq!(c.get(&a).unwrap(), "3");
        assert_eq!(c.get(&b).unwrap(), "2");

        let mut batch = Batch::default();
        batch.delete(Cf::Data, a.clone());
        // Writes to other column families are not sets.
        batch.put(Cf::Hints, b.clone(), b"hint".to_vec());
        c.written(batch);
        assert!(c.get(&a).is_err());
        assert_eq!(c.get(&b).unwrap(), "2");

        let mut batch = Batch::default();
        batch.delete_range(Cf::Data, dk(0, ""), dk(9, ""));
        c.written(batch);
        assert!(c.get(&b).is_err(), "a range delete forgets everything");
    }

    #[test]
    fn a_fill_after_a_miss_is_kept() {
        let c = SetCache::new(1 << 20);
        let k = dk(7, "k");
        let miss = c.get(&k).unwrap_err();
        c.fill(&k, miss, &Bytes::from("from the engine"));
        assert_eq!(c.get(&k).unwrap(), "from the engine");
        assert_eq!(c.stats(), CacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn a_fill_overtaken_by_a_write_is_dropped() {
        let c = SetCache::new(1 << 20);
        let k = dk(7, "k");
        // A reader misses and reads the engine's old set; meanwhile the writer writes.
        let miss = c.get(&k).unwrap_err();
        put(&c, &k, "new");
        c.fill(&k, miss, &Bytes::from("old"));
        assert_eq!(
            c.get(&k).unwrap(),
            "new",
            "the older set must not come back"
        );

        // Also when the write was a delete: the engine no longer has the old set.
        let gone = dk(7, "gone");
        let miss = c.get(&gone).unwrap_err();
        let mut batch = Batch::default();
        batch.delete(Cf::Data, gone.clone());
        c.written(batch);
        c.fill(&gone, miss, &Bytes::from("old"));
        assert!(c.get(&gone).is_err());

        // And after a clear.
        let miss = c.get(&gone).unwrap_err();
        c.clear();
        c.fill(&gone, miss, &Bytes::from("old"));
        assert!(c.get(&gone).is_err());
    }

    #[test]
    fn large_sets_are_not_filled_by_readers() {
        let c = SetCache::new(16 << 20);
        let k = dk(1, "big");
        let miss = c.get(&k).unwrap_err();
        c.fill(&k, miss, &Bytes::from(vec![0u8; MAX_FILL_BYTES + 1]));
        assert!(c.get(&k).is_err());
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let used: std::collections::HashSet<_> =
            (0..256).map(|p| SetCache::shard_of(&dk(p, "k"))).collect();
        assert_eq!(used.len(), SHARDS);
        // A node owning few partitions still uses several shards.
        let few: std::collections::HashSet<_> = (0..8)
            .map(|i| SetCache::shard_of(&dk(i * 37, "k")))
            .collect();
        assert!(few.len() >= 5, "{few:?}");
    }
}
