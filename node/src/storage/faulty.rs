//! A [`MemoryEngine`] with injectable disk faults, for failure tests and simulation:
//! syncs that fail, a gate that holds syncs (and, if asked, every write) until it
//! opens, as a hung disk would, and slow reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::memory::MemoryEngine;
use super::{Batch, Cf, Engine, Entries, StorageError};

/// An in-memory engine whose disk misbehaves on demand. Starts healthy and open.
pub struct FaultyEngine {
    inner: MemoryEngine,
    fail_syncs: AtomicBool,
    gate_writes: AtomicBool,
    read_delay_us: AtomicU64,
    syncs: AtomicU64,
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
        Self {
            inner: MemoryEngine::new(),
            fail_syncs: AtomicBool::new(false),
            gate_writes: AtomicBool::new(false),
            read_delay_us: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            open: Mutex::new(true),
            opened: Condvar::new(),
        }
    }

    /// Loses every write not yet synced (see [`MemoryEngine::crash`]).
    pub fn crash(&self) {
        self.inner.crash();
    }

    /// Syncs done so far (successful or not).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Makes reads slow: each takes from none to twice `delay`, varying from read to read
    /// as a busy disk's do (zero: reads are fast again).
    pub fn slow_reads(&self, delay: Duration) {
        self.read_delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Makes every sync fail (`true`) or succeed again.
    pub fn fail_syncs(&self, fail: bool) {
        self.fail_syncs.store(fail, Ordering::SeqCst);
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
        match self.read_delay_us.load(Ordering::SeqCst) {
            0 => {}
            // The read happened first: a slow disk returns what it read, late.
            us => {
                let clock = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let spread = u64::from(clock.subsec_micros() % 5); // 0..=4
                std::thread::sleep(Duration::from_micros(us * spread / 2));
            }
        }
        got
    }

    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        if sync {
            self.sync()?;
        } else if self.gate_writes.load(Ordering::SeqCst) {
            self.wait_open();
        }
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
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(StorageError::Engine("injected sync failure".into()));
        }
        self.inner.sync()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}
