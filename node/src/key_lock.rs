//! Per-key locks of a coordinator's read-modify-write.
//!
//! A coordinator computes a key's new version itself (read the stored set, add the
//! version with this node's next dot), so that it can replicate the version before its
//! own copy is applied. Two coordinations of one key on one node must not read the same
//! state, or they would hand out the same dot: each holds the key's lock from its read
//! until its own write is applied (visible to the next read). Other nodes write with
//! other actors, and joins never make new dots of this node, so nothing else needs the
//! lock. Keys share a fixed set of stripes: unrelated keys rarely wait for each other.

use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

/// Stripes (a power of two).
const STRIPES: usize = 1024;

/// Striped async locks by key.
pub struct KeyLocks {
    stripes: Box<[Arc<Mutex<()>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            hasher: Default::default(),
        }
    }
}

impl KeyLocks {
    /// Waits for `key`'s lock; it is held until the guard is dropped (the guard may move
    /// to another task, e.g. one that waits for a slow write to be applied).
    pub async fn lock(&self, key: &[u8]) -> OwnedMutexGuard<()> {
        let stripe = self.hasher.hash_one(key) as usize & (STRIPES - 1);
        self.stripes[stripe].clone().lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_is_held_until_its_guard_drops() {
        let locks = Arc::new(KeyLocks::default());
        let guard = locks.lock(b"k").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.lock(b"k").await) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("released")
            .unwrap();
    }
}
