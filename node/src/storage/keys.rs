//! Layout of keys in the column families.
//!
//! Data keys are `partition (u32 big-endian) ++ user key`, so one partition is one
//! contiguous key range: it can be iterated for transfer and Merkle rebuilds and dropped
//! with one range delete. Hint keys are `target node id ++ 0x00 ++ user key`, so the hints
//! for one node are one range and repeated hinted writes of a key join into one hint.

use dynamo_core::PartitionId;

/// The data-CF key of `key` in partition `p`.
pub fn data_key(p: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&p.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The range `[from, to)` of data-CF keys of partition `p`.
pub fn partition_range(p: PartitionId) -> (Vec<u8>, Vec<u8>) {
    let from = p.to_be_bytes().to_vec();
    let to = match p.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    };
    (from, to)
}

/// The prefix of hint keys for `target`.
pub fn hint_prefix(target: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 1);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k
}

/// The hint key of `key` held for `target`.
pub fn hint_key(target: &str, key: &[u8]) -> Vec<u8> {
    let mut k = hint_prefix(target);
    k.extend_from_slice(key);
    k
}

/// Splits a hint key into target and user key.
pub fn split_hint_key(k: &[u8]) -> Option<(&str, &[u8])> {
    let nul = k.iter().position(|&b| b == 0)?;
    let target = std::str::from_utf8(&k[..nul]).ok()?;
    Some((target, &k[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_sort_by_partition() {
        let (from, to) = partition_range(7);
        let k = data_key(7, b"\xff\xff");
        assert!(from <= k && k < to);
        assert!(data_key(8, b"") >= to);
    }

    #[test]
    fn hint_keys_split() {
        let k = hint_key("node-2", b"a\0b");
        assert_eq!(split_hint_key(&k), Some(("node-2", &b"a\0b"[..])));
        assert!(k.starts_with(&hint_prefix("node-2")));
        assert!(!k.starts_with(&hint_prefix("node-")));
    }
}
