//! Storage engines.
//!
//! An [`Engine`] is a small, synchronous, ordered key-value interface over four column
//! families ([`Cf`]): data (partition-prefixed keys, see [`keys`]), hints, node
//! metadata and key epochs. Two engines implement it: [`rocks::RocksEngine`] (production) and
//! [`memory::MemoryEngine`] (tests and simulation; it can drop unsynced writes on a
//! simulated crash). One conformance suite ([`conformance`]) runs against both.
//! [`faulty::FaultyEngine`] wraps the memory engine with injectable disk faults, and
//! [`power::PowerCycle`] is one process's life on it (fenced off once the process dies).
//!
//! Engines are blocking; the node calls them from its writer thread or from blocking
//! sections, never while holding an async lock.

pub mod faulty;
pub mod keys;
pub mod memory;
pub mod power;
#[cfg(feature = "rocksdb")]
pub mod rocks;

#[cfg(all(test, feature = "rocksdb"))]
mod conformance;

/// A column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Stored keys: `partition (u32 BE) ++ user key` → encoded sibling set.
    Data,
    /// Hints held for other nodes: `target ++ 0 ++ user key` → hint.
    Hints,
    /// Node metadata: identity, incarnation, clean-shutdown marker.
    Meta,
    /// The epoch this node writes a stored key under: `partition ++ user key` (as
    /// [`Cf::Data`]) → incarnation (u64 BE) ++ epoch (u64 BE); see [`crate::dots`].
    Epochs,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::Data, Cf::Hints, Cf::Meta, Cf::Epochs];

    /// RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Data => "data",
            Cf::Hints => "hints",
            Cf::Meta => "meta",
            Cf::Epochs => "epochs",
        }
    }
}

/// One operation of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes keys in `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// An atomic group of writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(cf, key, value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.ops.push(Op::Delete(cf, key));
    }

    pub fn delete_range(&mut self, cf: Cf, from: Vec<u8>, to: Vec<u8>) {
        self.ops.push(Op::DeleteRange(cf, from, to));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A storage failure (disk, corruption, RocksDB error).
#[derive(Clone, Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("stored value for a key is corrupt: {0}")]
    Corrupt(String),
}

/// Key-value pairs returned by a scan, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered key-value store with column families and atomic batches.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies a batch atomically. With `sync`, the batch is on disk when this returns;
    /// without, it survives a process crash but not necessarily a machine crash.
    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError>;

    /// Up to `limit` entries with keys starting with `prefix` and at or after `start`,
    /// in key order.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Entries, StorageError>;

    /// Makes every write so far durable (syncs the WAL).
    fn sync(&self) -> Result<(), StorageError>;

    /// Approximate bytes stored (live data, for metrics).
    fn size_bytes(&self) -> u64;

    /// Approximate number of keys in the data column family (a member change's plan
    /// estimates what it moves from it, without a scan).
    fn data_keys_estimate(&self) -> u64;

    /// Approximate bytes compactions still owe (for metrics: a benchmark waits for them
    /// to be paid before it measures). Engines without compactions owe nothing.
    fn compaction_debt_bytes(&self) -> u64 {
        0
    }
}
