//! A [`MemoryEngine`] with injectable disk faults, for failure tests and simulation:
//! writes or syncs that fail, a gate that holds syncs (and, if asked, every write) until it
//! opens, as a hung disk would, and a read held after it has read, as a slow one would.
//!
//! A handle can also be *fenced*, as the process that used the disk dies: its later
//! writes and syncs fail, while [`FaultyEngine::reopen`] gives the next process a new
//! handle on the same data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::memory::MemoryEngine;
use super::{Batch, Cf, Engine, Entries, StorageError};

/// Where the one-shot read pause is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadPause {
    Off,
    /// The next read will be held.
    Armed,
    /// A read has read and is held.
    Holding,
}

/// An in-memory engine whose disk misbehaves on demand. Starts healthy and open.
pub struct FaultyEngine {
    /// The disk: shared with the handles [`Self::reopen`] makes.
    inner: Arc<MemoryEngine>,
    /// Set by [`Self::fence`]: this handle's process is gone.
    fenced: AtomicBool,
    fail_syncs: AtomicBool,
    fail_writes: AtomicBool,
    gate_writes: AtomicBool,
    syncs: AtomicU64,
    read_pause: Mutex<ReadPause>,
    read_paused: Condvar,
    open: Mutex<bool>,
    opened: Condvar,
}

impl Default for FaultyEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyEngine {
    pub fn new() -> Self {
        Self::on(Arc::new(MemoryEngine::new()))
    }

    /// A healthy handle on `disk`.
    fn on(disk: Arc<MemoryEngine>) -> Self {
        Self {
            inner: disk,
            fenced: AtomicBool::new(false),
            fail_syncs: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            gate_writes: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            read_pause: Mutex::new(ReadPause::Off),
            read_paused: Condvar::new(),
            open: Mutex::new(true),
            opened: Condvar::new(),
        }
    }

    /// Loses every write not yet synced (see [`MemoryEngine::crash`]).
    pub fn crash(&self) {
        self.inner.crash();
    }

    /// Ends this handle's process, as far as the disk can tell: every later write and sync
    /// through it fails (reads still answer, a read under way returns). Nothing already
    /// written is lost: a dead process's writes stay in the page cache.
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// A new handle on the same data, healthy and unfenced, as the next process to open
    /// the disk gets (faults set on this handle do not carry over).
    pub fn reopen(&self) -> Self {
        Self::on(self.inner.clone())
    }

    fn check_fence(&self) -> Result<(), StorageError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(StorageError::Engine(
                "fenced: the process that used this engine handle is gone".into(),
            ));
        }
        Ok(())
    }

    /// Syncs done so far (successful or not).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Holds the next read after it has read its value, until [`Self::release_read`]:
    /// what it returns may be stale by then, as with a slow disk.
    pub fn pause_next_read(&self) {
        *self.read_pause.lock().expect("pause lock") = ReadPause::Armed;
    }

    /// Waits until a read is held by [`Self::pause_next_read`].
    pub fn wait_read_paused(&self) {
        let mut p = self.read_pause.lock().expect("pause lock");
        while *p != ReadPause::Holding {
            p = self.read_paused.wait(p).expect("pause lock");
        }
    }

    /// Lets the held read return.
    pub fn release_read(&self) {
        *self.read_pause.lock().expect("pause lock") = ReadPause::Off;
        self.read_paused.notify_all();
    }

    /// Makes every sync fail (`true`) or succeed again.
    pub fn fail_syncs(&self, fail: bool) {
        self.fail_syncs.store(fail, Ordering::SeqCst);
    }

    /// Makes every write fail (`true`), as a full or failing disk would, or succeed again.
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Whether a closed gate also holds plain (unsynced) writes, not only syncs.
    pub fn gate_writes(&self, gate: bool) {
        self.gate_writes.store(gate, Ordering::SeqCst);
    }

    /// Closes the gate (syncs wait) or opens it (waiting syncs go on).
    pub fn set_open(&self, open: bool) {
        *self.open.lock().expect("gate lock") = open;
        self.opened.notify_all();
    }

    fn wait_open(&self) {
        let mut open = self.open.lock().expect("gate lock");
        while !*open {
            open = self.opened.wait(open).expect("gate lock");
        }
    }
}

impl Engine for FaultyEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let got = self.inner.get(cf, key);
        let mut p = self.read_pause.lock().expect("pause lock");
        if *p == ReadPause::Armed {
            *p = ReadPause::Holding;
            self.read_paused.notify_all();
            while *p == ReadPause::Holding {
                p = self.read_paused.wait(p).expect("pause lock");
            }
        }
        got
    }

    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(StorageError::Engine("injected write failure".into()));
        }
        if sync {
            self.sync()?;
        } else if self.gate_writes.load(Ordering::SeqCst) {
            self.wait_open();
        }
        // After the gate: a write held there while its process died must not land.
        self.check_fence()?;
        self.inner.write(batch, sync)
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Entries, StorageError> {
        self.inner.scan(cf, prefix, from, limit)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.wait_open();
        self.check_fence()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(StorageError::Engine("injected sync failure".into()));
        }
        self.inner.sync()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn compaction_debt_bytes(&self) -> u64 {
        self.inner.compaction_debt_bytes()
    }

    fn data_keys_estimate(&self) -> u64 {
        self.inner.data_keys_estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8]) -> Batch {
        let mut b = Batch::default();
        b.put(Cf::Data, key.to_vec(), b"v".to_vec());
        b
    }

    #[test]
    fn a_fenced_handle_writes_nothing_and_the_next_handle_sees_what_it_wrote() {
        let old = FaultyEngine::new();
        old.write(&put(b"before"), false).unwrap();
        old.fence();
        let err = old.write(&put(b"after"), false).unwrap_err();
        assert!(err.to_string().contains("fenced"), "{err}");
        assert!(old.sync().is_err());

        let next = old.reopen();
        assert!(next.get(Cf::Data, b"before").unwrap().is_some());
        assert!(next.get(Cf::Data, b"after").unwrap().is_none());
        next.write(&put(b"next"), true).unwrap();
        assert!(
            old.get(Cf::Data, b"next").unwrap().is_some(),
            "one disk under both handles"
        );
    }
}
