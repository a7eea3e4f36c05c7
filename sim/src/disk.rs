//! A node's simulated disk: an in-memory engine that loses every unsynced write when its
//! machine loses power, seen through one process's life ([`Life`]) so that a crashed
//! process can no longer touch it.

use std::sync::Arc;

use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::storage::{Batch, Cf, Engine, Entries, StorageError};
use parking_lot::RwLock;

/// One process's view of a disk: once the process dies, its calls fail; the disk lives on.
pub struct Life {
    disk: Arc<MemoryEngine>,
    dead: RwLock<bool>,
}

impl Life {
    pub fn new(disk: Arc<MemoryEngine>) -> Arc<Self> {
        Arc::new(Self {
            disk,
            dead: RwLock::new(false),
        })
    }

    /// The process dies; with `power_loss`, its machine too: unsynced writes are lost.
    pub fn end(&self, power_loss: bool) {
        *self.dead.write() = true;
        if power_loss {
            self.disk.crash();
        }
    }

    fn alive<T>(
        &self,
        f: impl FnOnce(&MemoryEngine) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if *self.dead.read() {
            return Err(StorageError::Engine("the process is dead".into()));
        }
        f(&self.disk)
    }
}

impl Engine for Life {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.alive(|d| d.get(cf, key))
    }
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        self.alive(|d| d.write(batch, sync))
    }
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Entries, StorageError> {
        self.alive(|d| d.scan(cf, prefix, start, limit))
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.alive(|d| d.sync())
    }
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }
}
