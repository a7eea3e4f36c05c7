//! One process's life on a [`MemoryEngine`] disk, for tests and the simulator: once the
//! process dies (or its machine loses power), it can no longer touch the disk, while the
//! disk itself lives on for the next process started on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::memory::MemoryEngine;
use super::{Batch, Cf, Engine, Entries, StorageError};

/// A process's view of a disk, fenced off when the process ends.
pub struct PowerCycle {
    disk: Arc<MemoryEngine>,
    ended: RwLock<bool>,
    /// Writes and syncs fail (a failing disk), reads still work.
    failing: AtomicBool,
}

impl PowerCycle {
    pub fn new(disk: Arc<MemoryEngine>) -> Arc<Self> {
        Arc::new(Self {
            disk,
            ended: RwLock::new(false),
            failing: AtomicBool::new(false),
        })
    }

    /// From now on every write and sync fails, as on a disk returning I/O errors; what
    /// the failed calls carried is not stored.
    pub fn fail_writes(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    fn writable(&self) -> Result<(), StorageError> {
        match self.failing() {
            true => Err(StorageError::Engine("injected disk write failure".into())),
            false => Ok(()),
        }
    }

    /// Ends the process: waits out the disk calls under way and fails every later one.
    /// With `power_loss` its machine goes down too, and every write not yet synced is lost.
    pub fn end(&self, power_loss: bool) {
        let mut ended = self.ended.write();
        *ended = true;
        if power_loss {
            self.disk.crash();
        }
    }

    fn alive<T>(
        &self,
        f: impl FnOnce(&MemoryEngine) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let ended = self.ended.read();
        if *ended {
            return Err(StorageError::Engine("the process is dead".into()));
        }
        f(&self.disk)
    }
}

impl Engine for PowerCycle {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.alive(|d| d.get(cf, key))
    }
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        self.writable()?;
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
        self.writable()?;
        self.alive(|d| d.sync())
    }
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }

    fn compaction_debt_bytes(&self) -> u64 {
        self.disk.compaction_debt_bytes()
    }

    fn data_keys_estimate(&self) -> u64 {
        self.disk.data_keys_estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(e: &dyn Engine, key: &[u8], sync: bool) -> Result<(), StorageError> {
        let mut b = Batch::default();
        b.put(Cf::Data, key.to_vec(), b"v".to_vec());
        e.write(&b, sync)
    }

    #[test]
    fn an_ended_process_cannot_touch_the_disk_and_power_loss_drops_unsynced_writes() {
        let disk = Arc::new(MemoryEngine::new());
        let first = PowerCycle::new(disk.clone());
        put(&*first, b"synced", true).unwrap();
        put(&*first, b"unsynced", false).unwrap();
        first.end(false);
        assert!(put(&*first, b"late", true).is_err());
        assert!(first.get(Cf::Data, b"synced").is_err());

        // A crash without power loss keeps what the disk was given.
        let second = PowerCycle::new(disk.clone());
        assert!(second.get(Cf::Data, b"unsynced").unwrap().is_some());
        second.end(true);
        let third = PowerCycle::new(disk);
        assert!(third.get(Cf::Data, b"synced").unwrap().is_some());
        assert!(third.get(Cf::Data, b"unsynced").unwrap().is_none());

        // A failing disk refuses writes and keeps nothing of them; reads go on.
        third.fail_writes();
        assert!(put(&*third, b"refused", false).is_err());
        assert!(third.sync().is_err());
        assert!(third.get(Cf::Data, b"refused").unwrap().is_none());
        assert!(third.get(Cf::Data, b"synced").unwrap().is_some());
    }
}
