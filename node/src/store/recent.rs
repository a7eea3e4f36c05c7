//! The sibling sets the writer wrote last, kept in memory so that the next
//! read-modify-write of a hot key skips the engine.
//!
//! Every update or join first reads the key's stored set. In RocksDB that is a memtable
//! search (a skiplist of every version written since the last flush, all of them cache
//! misses) and often a block read; measured at 64 clients, the writer spent more time in
//! that search than in anything else. The writer is the only thread that writes sets, so
//! a map it owns, updated after each successful batch, is exact: no locks, no
//! invalidation from elsewhere.
//!
//! The map is bounded by two generations: new entries go to the young one; when it holds
//! more than its byte budget it becomes the old one (the previous old one is dropped), and
//! a hit in the old one moves the entry back to the young one. Keys written again and
//! again stay; keys written once age out after two generations' worth of writes. At most
//! twice the budget is held (plus the maps' own overhead).

use std::collections::HashMap;

use crate::storage::{Batch, Cf, Op};

/// Bytes (keys plus values) of one generation.
pub(super) const GENERATION_BYTES: usize = 8 << 20;

/// Recently written sets by data key, in the stored encoding.
pub(super) struct Recent {
    young: HashMap<Vec<u8>, Vec<u8>>,
    young_bytes: usize,
    old: HashMap<Vec<u8>, Vec<u8>>,
    budget: usize,
}

impl Recent {
    /// An empty map holding at most about `2 * budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            young: HashMap::new(),
            young_bytes: 0,
            old: HashMap::new(),
            budget,
        }
    }

    /// The stored encoding of `key`'s set, if it was written recently.
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        if !self.young.contains_key(key) {
            let (k, v) = self.old.remove_entry(key)?;
            self.insert(k, v);
        }
        self.young.get(key).map(Vec::as_slice)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let (klen, vlen) = (key.len(), value.len());
        if let Some(previous) = self.young.insert(key, value) {
            self.young_bytes -= klen + previous.len();
        }
        self.young_bytes += klen + vlen;
        if self.young_bytes > self.budget {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    /// Takes in the data writes of a batch the engine has just written.
    pub fn written(&mut self, batch: Batch) {
        for op in batch.ops {
            match op {
                Op::Put(Cf::Data, k, v) => {
                    self.old.remove(&k);
                    self.insert(k, v);
                }
                Op::Delete(Cf::Data, k) => {
                    if let Some(v) = self.young.remove(&k) {
                        self.young_bytes -= k.len() + v.len();
                    }
                    self.old.remove(&k);
                }
                Op::DeleteRange(Cf::Data, ..) => self.clear(),
                _ => {}
            }
        }
    }

    /// Forgets everything (after a failed write, whose effect on the engine is unknown).
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puts(pairs: &[(&str, &str)]) -> Batch {
        let mut b = Batch::default();
        for (k, v) in pairs {
            b.put(Cf::Data, k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        b
    }

    fn held(r: &Recent) -> usize {
        r.young
            .iter()
            .chain(r.old.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    #[test]
    fn the_last_write_of_a_key_wins_and_deletes_forget() {
        let mut r = Recent::new(1 << 20);
        r.written(puts(&[("a", "1"), ("b", "2"), ("a", "3")]));
        assert_eq!(r.get(b"a"), Some(&b"3"[..]));
        assert_eq!(r.get(b"b"), Some(&b"2"[..]));
        assert_eq!(r.get(b"c"), None);

        let mut b = Batch::default();
        b.delete(Cf::Data, b"a".to_vec());
        // Writes to other column families are not sets.
        b.put(Cf::Hints, b"b".to_vec(), b"hint".to_vec());
        r.written(b);
        assert_eq!(r.get(b"a"), None);
        assert_eq!(r.get(b"b"), Some(&b"2"[..]));
        assert_eq!(
            r.young_bytes, 2,
            "accounting follows overwrites and deletes"
        );

        let mut b = Batch::default();
        b.delete_range(Cf::Data, b"a".to_vec(), b"z".to_vec());
        r.written(b);
        assert_eq!(r.get(b"b"), None, "a range delete forgets everything");
    }

    #[test]
    fn memory_stays_within_two_generations_and_hot_keys_stay() {
        let budget = 1000;
        let mut r = Recent::new(budget);
        for i in 0..2000 {
            r.written(puts(&[(&format!("cold{i:05}"), "0123456789")]));
            // The hot key is read and written again now and then, as a busy key is.
            if i % 50 == 0 {
                assert!(i == 0 || r.get(b"hot").is_some(), "hot key lost at {i}");
                r.written(puts(&[("hot", "h")]));
            }
            assert!(held(&r) <= 2 * budget + 20, "{} bytes held", held(&r));
        }
        assert!(r.get(b"cold00000").is_none(), "old cold keys age out");
        assert!(r.get(b"cold01999").is_some(), "the newest are kept");
    }

    #[test]
    fn a_hit_in_the_old_generation_survives_the_next_turnover() {
        let mut r = Recent::new(20);
        r.written(puts(&[("k", "v")]));
        // Fill the young generation past its budget: "k" moves to the old one.
        r.written(puts(&[("x1", "0123456789"), ("x2", "0123456789")]));
        assert!(r.old.contains_key(&b"k"[..]));
        assert_eq!(r.get(b"k"), Some(&b"v"[..]), "promoted back");
        r.written(puts(&[("y1", "0123456789"), ("y2", "0123456789")]));
        assert_eq!(r.get(b"k"), Some(&b"v"[..]));
    }
}
