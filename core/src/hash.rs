//! The key hash.
//!
//! Keys are hashed with **xxh3-64, seed 0** (`xxhash_rust::xxh3::xxh3_64`). The hash decides
//! which partition holds a key, and data keys on disk are prefixed with the partition, so
//! this function is part of the on-disk and wire format forever: never change it.

/// Hashes a key to 64 bits (xxh3-64, seed 0).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Checksum used by the binary codec (xxh3-64 with a fixed, non-zero seed so a checksum is
/// never mistaken for a key hash).
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, 0x6479_6e61_6d6f) // "dynamo"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable() {
        // Pinned values: if this test fails the on-disk format has changed.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"hello"), 0x9555_e855_5c62_dcfd);
    }
}
