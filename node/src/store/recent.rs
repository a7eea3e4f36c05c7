//! A bounded map of sibling sets in the stored encoding: two generations, so hot keys
//! stay and cold ones age out. Pure data structure; [`super::cache`] shards it, locks it
//! and decides what goes in.
//!
//! New entries go to the young generation; when it holds more than its byte budget it
//! becomes the old one (the previous old one is dropped), and a hit in the old one moves
//! the entry back to the young one. Keys used again and again stay; keys used once age
//! out after two generations' worth of entries. At most twice the budget is held (plus
//! the one entry that overflowed it); each entry counts its key, its set and
//! [`ENTRY_OVERHEAD`] for the map slot and the two heap blocks behind it.

use std::collections::HashMap;

use bytes::Bytes;

/// Bytes an entry costs beyond its key and set: the map slot (key `Vec` and `Bytes`
/// headers, hash control byte) and the allocators' headers of the key and set blocks.
pub(super) const ENTRY_OVERHEAD: usize = 96;

/// Recently used sets by data key, in the stored encoding.
pub(super) struct Recent {
    young: HashMap<Vec<u8>, Bytes>,
    young_bytes: usize,
    old: HashMap<Vec<u8>, Bytes>,
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

    /// The stored encoding of `key`'s set, if held.
    pub fn get(&mut self, key: &[u8]) -> Option<&Bytes> {
        if !self.young.contains_key(key) {
            let (k, v) = self.old.remove_entry(key)?;
            self.insert(k, v);
        }
        self.young.get(key)
    }

    /// Holds `value` as `key`'s set, replacing what was held.
    pub fn put(&mut self, key: Vec<u8>, value: Bytes) {
        self.old.remove(&key);
        self.insert(key, value);
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some((k, v)) = self.young.remove_entry(key) {
            self.young_bytes -= cost(&k, &v);
        }
        self.old.remove(key);
    }

    fn insert(&mut self, key: Vec<u8>, value: Bytes) {
        let added = cost(&key, &value);
        let klen = key.len();
        if let Some(previous) = self.young.insert(key, value) {
            self.young_bytes -= klen + previous.len() + ENTRY_OVERHEAD;
        }
        self.young_bytes += added;
        if self.young_bytes > self.budget {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
        self.young_bytes = 0;
    }
}

/// What an entry counts against the budget.
fn cost(key: &[u8], value: &Bytes) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puts(r: &mut Recent, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            r.put(k.as_bytes().to_vec(), Bytes::copy_from_slice(v.as_bytes()));
        }
    }

    fn held(r: &Recent) -> usize {
        r.young
            .iter()
            .chain(r.old.iter())
            .map(|(k, v)| cost(k, v))
            .sum()
    }

    #[test]
    fn the_last_put_of_a_key_wins_and_removes_forget() {
        let mut r = Recent::new(1 << 20);
        puts(&mut r, &[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(r.get(b"a").map(|v| &v[..]), Some(&b"3"[..]));
        assert_eq!(r.get(b"b").map(|v| &v[..]), Some(&b"2"[..]));
        assert_eq!(r.get(b"c"), None);

        r.remove(b"a");
        assert_eq!(r.get(b"a"), None);
        assert_eq!(r.get(b"b").map(|v| &v[..]), Some(&b"2"[..]));
        assert_eq!(
            r.young_bytes,
            2 + ENTRY_OVERHEAD,
            "accounting follows overwrites and removals"
        );

        r.clear();
        assert_eq!(r.get(b"b"), None, "clear forgets everything");
    }

    #[test]
    fn memory_stays_within_two_generations_and_hot_keys_stay() {
        let budget = 10_000;
        let mut r = Recent::new(budget);
        for i in 0..2000 {
            puts(&mut r, &[(&format!("cold{i:05}"), "0123456789")]);
            // The hot key is read and written again now and then, as a busy key is.
            if i % 50 == 0 {
                assert!(i == 0 || r.get(b"hot").is_some(), "hot key lost at {i}");
                puts(&mut r, &[("hot", "h")]);
            }
            let one = cost(b"cold00000", &Bytes::from_static(b"0123456789"));
            assert!(held(&r) <= 2 * budget + one, "{} bytes held", held(&r));
        }
        assert!(r.get(b"cold00000").is_none(), "old cold keys age out");
        assert!(r.get(b"cold01999").is_some(), "the newest are kept");
    }

    #[test]
    fn a_hit_in_the_old_generation_survives_the_next_turnover() {
        // Room for two entries a generation.
        let mut r = Recent::new(2 * ENTRY_OVERHEAD + 30);
        puts(&mut r, &[("k", "v")]);
        // Fill the young generation past its budget: "k" moves to the old one.
        puts(&mut r, &[("x1", "0123456789"), ("x2", "0123456789")]);
        assert!(r.old.contains_key(&b"k"[..]));
        assert_eq!(
            r.get(b"k").map(|v| &v[..]),
            Some(&b"v"[..]),
            "promoted back"
        );
        puts(&mut r, &[("y1", "0123456789"), ("y2", "0123456789")]);
        assert_eq!(r.get(b"k").map(|v| &v[..]), Some(&b"v"[..]));
    }
}
