//! The local store: sibling sets and hints on top of an [`Engine`].
//!
//! Every mutation goes through one writer thread, and, when writes must be synced, a
//! syncer thread behind it:
//!
//! - **Atomic read-modify-write per key.** The writer reads the stored set, joins or
//!   updates it and writes it back with no other mutation in between, so concurrent
//!   coordinators never lose each other's versions.
//! - **Group commit, pipelined.** The writer takes every request queued while it was
//!   busy and applies them as one RocksDB write batch (WAL written, not synced). With the
//!   `always` fsync policy it hands the group to the syncer and goes on with the next
//!   group; the syncer syncs the WAL once for every group that queued during its previous
//!   sync, then acknowledges them. No request is acknowledged before a sync that covers it
//!   (a request that changed nothing still waits: what it read may not be synced yet).
//! - **Recent sets in memory.** The sets written or read last are kept in a bounded
//!   cache shared by the writer and readers (see `cache`), so most reads, and the read of
//!   a read-modify-write, of a busy key skip RocksDB. The writer records each set there
//!   before it answers the write; a reader's fill never replaces a newer set.
//! - **Early outcome.** [`Store::update`] answers as soon as the new version is applied,
//!   with a [`Staged`] whose durability is awaited separately; [`Store::merge`] hands a
//!   join to the writer at once and returns the wait for durability, releasing the
//!   coordinator's key lock it carries once applied. A coordinator thus sends a version to
//!   the other replicas while its own copy is applied and synced.
//!
//! A failed write or sync poisons the store: every later mutation fails, and the node
//! must not record a clean shutdown (versions it handed out may be lost here, so the next
//! start must take a new incarnation; see [`crate::identity`]).
//!
//! [`Store::close`] (and dropping the store) refuses later mutations, lets the writer
//! apply and the syncer sync every one accepted before, and joins both threads: they
//! never outlive the store (see `threads`).
//!
//! Reads (the cache, else the engine) may see an applied write before it is synced.

mod apply;
mod cache;
mod commit;
mod recent;
mod threads;
mod trees;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::ring::partition_of;
use dynamo_core::{Actor, CausalContext, PartitionId, SiblingSet};
use tokio::sync::oneshot;

use crate::dots::EpochRecord;
use crate::storage::keys::{data_key, hint_key, hint_prefix, split_hint_key};
use crate::storage::{Cf, Engine, StorageError};
pub use apply::decode_stored;
use apply::{decode_hint, Mutation, Outcome};
pub use cache::CacheStats;
use cache::SetCache;
use commit::{syncer, writer, Request};
use threads::{Spawner, Threads};
pub use trees::{for_each_in_partition, Trees};

/// A hint held for another node.
#[derive(Clone, Debug, PartialEq)]
pub struct Hint {
    pub target: String,
    pub key: Bytes,
    pub set: SiblingSet,
    /// When the hint was first stored (ms since the Unix epoch).
    pub created_ms: u64,
    /// The stored bytes, so that delivery deletes the hint only if it did not change.
    pub raw: Vec<u8>,
}

/// A version applied by [`Store::update`], and the wait for it to be durable.
pub struct Staged {
    /// The stored set after the update.
    pub set: SiblingSet,
    durable: oneshot::Receiver<Result<Outcome, StorageError>>,
}

impl Staged {
    /// Waits until the update is durable under the store's fsync policy.
    pub async fn durable(self) -> Result<(), StorageError> {
        self.into_parts().1.await
    }

    /// The stored set, and the wait for it to be durable.
    pub fn into_parts(
        self,
    ) -> (
        SiblingSet,
        impl std::future::Future<Output = Result<(), StorageError>>,
    ) {
        let durable = self.durable;
        (self.set, async move {
            durable.await.map_err(|_| stopped())?.map(|_| ())
        })
    }
}

/// Bytes (keys plus sets) of one generation of the cache of sets; it holds at most twice
/// this.
const CACHE_GENERATION_BYTES: usize = 8 << 20;

fn stopped() -> StorageError {
    StorageError::Engine("store writer has stopped".into())
}

/// One change of [`Store::apply_all`].
#[derive(Debug)]
pub enum Change {
    /// Join `set` into the stored set of `key`.
    Join { key: Bytes, set: SiblingSet },
    /// Keep `set` as a hint for `target` (joined with any hint already held for the key).
    Hint {
        target: String,
        key: Bytes,
        set: SiblingSet,
        now_ms: u64,
    },
    /// Drop this node's copy of `key` and its epoch record, if it is still byte for byte
    /// `if_raw` (whatever it is, for `None`).
    Forget { key: Bytes, if_raw: Option<Bytes> },
}

/// Joins per request of [`Store::apply_paced`].
const BULK_SLICE: usize = 128;

fn mutation(change: Change) -> Mutation {
    match change {
        Change::Join { key, set } => Mutation::Join {
            key,
            set,
            epoch: None,
        },
        Change::Hint {
            target,
            key,
            set,
            now_ms,
        } => Mutation::Hint {
            target,
            key,
            set,
            now_ms,
        },
        Change::Forget { key, if_raw } => Mutation::Forget { key, if_raw },
    }
}

/// Where the store sends its mutations: the writer thread, or (in a simulation, see
/// [`crate::determinism`]) the writer run inline by the sender.
enum Sink {
    Thread(mpsc::Sender<Request>),
    Inline(Box<commit::Writer>),
}

/// Sibling sets and hints of one node.
pub struct Store {
    engine: Arc<dyn Engine>,
    cache: Arc<SetCache>,
    /// A Merkle tree per partition, kept up to date by the writer.
    trees: Arc<Trees>,
    partitions: u32,
    /// The writer's queue; taken by [`Self::close`], after which mutations are refused.
    /// Every mutation is sent under its read lock, so each one accepted is queued ahead
    /// of the end of the queue, and the writer applies it before it ends.
    tx: parking_lot::RwLock<Option<Sink>>,
    /// The writer and the syncer, joined by [`Self::close`] or the store's drop.
    threads: Arc<Threads>,
    poisoned: Arc<AtomicBool>,
    /// Whether every write is synced before it is acknowledged.
    synced: bool,
}

impl Store {
    /// Starts the writer thread over `engine` (and the syncer thread with `sync_writes`:
    /// then every write is synced before it is acknowledged).
    pub fn new(engine: Arc<dyn Engine>, partitions: u32, sync_writes: bool) -> Self {
        let sync = sync_writes.then_some(Duration::ZERO);
        Self::open(engine, partitions, sync, CACHE_GENERATION_BYTES)
    }

    /// A store whose every write is synced before it is acknowledged, with at most one
    /// sync started per `window` (writes queued meanwhile share the next sync).
    pub fn synced(engine: Arc<dyn Engine>, partitions: u32, window: Duration) -> Self {
        Self::open(engine, partitions, Some(window), CACHE_GENERATION_BYTES)
    }

    /// A store whose writer runs inline, on the thread of whoever sends a mutation, and
    /// syncs each write at once when `sync_writes`: for a deterministic simulation, where
    /// no other thread may decide the order of events.
    pub fn inline(engine: Arc<dyn Engine>, partitions: u32, sync_writes: bool) -> Self {
        let writer = Self::writer(&engine, partitions, CACHE_GENERATION_BYTES);
        Self {
            engine,
            cache: writer.cache.clone(),
            trees: writer.trees.clone(),
            partitions,
            poisoned: writer.poisoned.clone(),
            tx: parking_lot::RwLock::new(Some(Sink::Inline(Box::new(writer)))),
            threads: Arc::new(Spawner::new().started()),
            synced: sync_writes,
        }
    }

    /// The writer's state over `engine`, its Merkle trees built by a scan.
    fn writer(engine: &Arc<dyn Engine>, partitions: u32, cache_budget: usize) -> commit::Writer {
        // Built before the writer starts: no write changes what the scan sees.
        let trees = Arc::new(Trees::build(&**engine, partitions).unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not build the Merkle trees; anti-entropy will see every key as different");
            Trees::empty(partitions)
        }));
        commit::Writer {
            engine: engine.clone(),
            q: partitions,
            cache: Arc::new(SetCache::new(cache_budget)),
            trees,
            poisoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts the threads. `sync`: the group window when writes are synced; `cache_budget`:
    /// the bytes of one generation of the cache of sets.
    fn open(
        engine: Arc<dyn Engine>,
        partitions: u32,
        sync: Option<Duration>,
        cache_budget: usize,
    ) -> Self {
        let writer_state = Self::writer(&engine, partitions, cache_budget);
        let (cache, trees, poisoned) = (
            writer_state.cache.clone(),
            writer_state.trees.clone(),
            writer_state.poisoned.clone(),
        );
        let (tx, rx) = mpsc::channel();
        let mut threads = Spawner::new();
        let syncer = sync.map(|window| {
            let (sync_tx, sync_rx) = mpsc::channel();
            let (engine, poisoned) = (engine.clone(), poisoned.clone());
            threads.spawn("store-syncer", move || {
                syncer(&*engine, &poisoned, sync_rx, window)
            });
            sync_tx
        });
        threads.spawn("store-writer", move || writer(&writer_state, rx, syncer));
        Self {
            engine,
            cache,
            trees,
            partitions,
            tx: parking_lot::RwLock::new(Some(Sink::Thread(tx))),
            threads: Arc::new(threads.started()),
            poisoned,
            synced: sync.is_some(),
        }
    }

    /// Makes every write acknowledged so far durable, whatever the fsync policy (with
    /// synced writes they already are). A failed sync poisons the store.
    pub async fn sync(&self) -> Result<(), StorageError> {
        if self.synced {
            return Ok(());
        }
        if self.is_poisoned() {
            return Err(commit::poison_error());
        }
        let (engine, poisoned) = (self.engine.clone(), self.poisoned.clone());
        crate::determinism::blocking(move || {
            let synced = engine.sync();
            if let Err(e) = &synced {
                tracing::error!(error = %e, "WAL sync failed; refusing further writes");
                poisoned.store(true, Ordering::Release);
            }
            synced
        })
        .await
        .map_err(|_| stopped())?
    }

    /// Whether a write or sync failed: the node's state on disk may lack versions it
    /// handed out, so it must not be recorded as cleanly shut down.
    /// The partition count Q the store's trees are shaped for.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The Merkle trees of this node's copies, per partition.
    pub fn trees(&self) -> &Trees {
        &self.trees
    }

    /// The data key and item hash of every key this node stores in `leaves` of partition
    /// `p`'s tree (one scan of the partition), in key order.
    pub fn leaf_items(
        &self,
        p: PartitionId,
        leaves: &std::collections::BTreeSet<usize>,
    ) -> Result<Vec<(Bytes, u64)>, StorageError> {
        let depth = dynamo_core::merkle::depth_for(self.partitions);
        let leaf_of = |key: &[u8]| {
            dynamo_core::merkle::leaf_of_hash(
                self.partitions,
                depth,
                dynamo_core::hash::key_hash(key),
            )
        };
        let mut out = Vec::new();
        for_each_in_partition(&*self.engine, p, |dk, set| {
            let key = &dk[4..];
            if leaves.contains(&leaf_of(key)) {
                out.push((
                    Bytes::copy_from_slice(key),
                    dynamo_core::merkle::item_hash(dk, set),
                ));
            }
        })?;
        Ok(out)
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Lookups of the cache of recent sets (reads and read-modify-writes) that found
    /// their set, and that went to the engine.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Forgets every cached set, for whoever changed the engine behind the store's back
    /// (a test corrupting a stored set, a repair tool): reads then see the engine again.
    pub fn drop_cache(&self) {
        self.cache.clear();
    }

    /// Reads the sibling set of `key` (empty if never written here).
    pub fn read(&self, key: &[u8]) -> Result<SiblingSet, StorageError> {
        decode_stored(self.read_raw(key)?.as_deref())
    }

    /// The epoch record of `key`: under which epoch this node writes it (see
    /// [`crate::dots`]). Read under the key's coordination lock.
    pub fn epoch_of(&self, key: &[u8]) -> Result<Option<EpochRecord>, StorageError> {
        let dk = data_key(partition_of(key, self.partitions), key);
        Ok(self
            .engine
            .get(Cf::Epochs, &dk)?
            .and_then(|raw| EpochRecord::decode(&raw)))
    }

    /// The stored encoding of `key`'s sibling set (the codec's format, as peers exchange it).
    pub fn read_raw(&self, key: &[u8]) -> Result<Option<Bytes>, StorageError> {
        let dk = data_key(partition_of(key, self.partitions), key);
        match self.cache.get(&dk) {
            Ok(cached) => Ok(Some(cached)),
            Err(miss) => {
                let stored = self.engine.get(Cf::Data, &dk)?.map(Bytes::from);
                if let Some(set) = &stored {
                    self.cache.fill(&dk, miss, set);
                }
                Ok(stored)
            }
        }
    }

    /// Queues `request` for the writer, unless the store is closed.
    fn send(&self, request: Request) -> Result<(), StorageError> {
        let tx = self.tx.read();
        let tx = tx.as_ref().ok_or_else(|| {
            StorageError::Engine("the store is closed: the node is stopping".into())
        })?;
        match tx {
            Sink::Thread(tx) => tx.send(request).map_err(|_| stopped()),
            Sink::Inline(w) => {
                commit::write_inline(w, request, self.synced);
                Ok(())
            }
        }
    }

    async fn submit(&self, mutation: Mutation) -> Result<Outcome, StorageError> {
        let (durable, rx) = oneshot::channel();
        self.send(Request {
            mutation,
            applied: None,
            durable,
            hold: None,
        })?;
        rx.await.map_err(|_| stopped())?
    }

    /// Refuses every later mutation, then waits until the writer has applied every
    /// mutation accepted before, the syncer (with synced writes) has synced them, and both
    /// threads have ended, or until `deadline`. Returns whether all that finished with no
    /// write or sync failing: only then may the node record a clean shutdown, since a dot
    /// it handed out may be in a mutation still queued. With unsynced writes, what was
    /// applied is in the WAL but not synced.
    pub async fn close(&self, deadline: tokio::time::Instant) -> bool {
        // The writer ends once it has drained the queue.
        drop(self.tx.write().take());
        let threads = self.threads.clone();
        let ended = crate::determinism::blocking(move || threads.wait(Some(deadline.into_std())))
            .await
            .unwrap_or(false);
        ended && !self.is_poisoned()
    }

    /// Records a new version of `key` coordinated by `actor`, superseding what `context`
    /// covers. Answers once the version is applied, with the stored set after the write;
    /// [`Staged::durable`] waits for the sync.
    pub async fn update(
        &self,
        key: Bytes,
        context: CausalContext,
        actor: Actor,
        value: Option<Bytes>,
    ) -> Result<Staged, StorageError> {
        let (applied, applied_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        let mutation = Mutation::Update {
            key,
            context,
            actor,
            value,
        };
        self.send(Request {
            mutation,
            applied: Some(applied),
            durable,
            hold: None,
        })?;
        match applied_rx.await.map_err(|_| stopped())?? {
            Outcome::Set(set) => Ok(Staged {
                set,
                durable: durable_rx,
            }),
            _ => unreachable!("update returns a set"),
        }
    }

    /// Hands the join of `set` into the stored set of `key` to the writer at once, and
    /// returns the wait for it to be durable. `hold` is dropped by the writer once the join
    /// is applied (visible to reads), whether or not anybody still waits: a coordinator's
    /// per-key lock (see [`crate::key_lock`]).
    /// `epoch` is the key's new epoch record, if the write minted an epoch.
    pub fn merge(
        &self,
        key: Bytes,
        set: SiblingSet,
        epoch: Option<EpochRecord>,
        hold: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<impl std::future::Future<Output = Result<(), StorageError>>, StorageError> {
        let (durable, durable_rx) = oneshot::channel();
        self.send(Request {
            mutation: Mutation::Join { key, set, epoch },
            applied: None,
            durable,
            hold,
        })?;
        Ok(async move { durable_rx.await.map_err(|_| stopped())?.map(|_| ()) })
    }

    /// Joins `set` into the stored set of `key`.
    pub async fn join(&self, key: Bytes, set: SiblingSet) -> Result<(), StorageError> {
        self.submit(Mutation::Join {
            key,
            set,
            epoch: None,
        })
        .await
        .map(|_| ())
    }

    /// Drops this node's copies of every key of partition `p`, with their epoch records
    /// (the next write of such a key here mints a new epoch), in one atomic batch of two
    /// range deletes applied between the writer's other groups.
    pub async fn drop_partition(&self, p: PartitionId) -> Result<(), StorageError> {
        self.submit(Mutation::DropPartition(p)).await.map(|_| ())
    }

    /// Drops this node's copy of `key` and its epoch record (the next write of the key
    /// here mints a new epoch).
    pub async fn forget(&self, key: Bytes) -> Result<(), StorageError> {
        self.forget_if(key, None).await.map(|_| ())
    }

    /// Drops this node's copy of `key` (and its epoch record) only if it is still byte
    /// for byte `raw` (any copy, for `None`); whether it did.
    pub async fn forget_if(&self, key: Bytes, raw: Option<Bytes>) -> Result<bool, StorageError> {
        match self.submit(Mutation::Forget { key, if_raw: raw }).await? {
            Outcome::Forgot(dropped) => Ok(dropped),
            _ => Ok(true),
        }
    }

    /// Whether this node holds a hint for `key` meant for any of `targets`.
    pub fn holds_hint<'a>(
        &self,
        key: &[u8],
        mut targets: impl Iterator<Item = &'a str>,
    ) -> Result<bool, StorageError> {
        targets.try_fold(false, |found, t| {
            Ok(found || self.engine.get(Cf::Hints, &hint_key(t, key))?.is_some())
        })
    }

    /// Applies `changes` as one request to the writer (one group, one reply), and answers
    /// once all are durable. On an error some of them may have been applied: each is a
    /// join, so applying them again is harmless.
    pub async fn apply_all(&self, changes: Vec<Change>) -> Result<(), StorageError> {
        let mutations = changes.into_iter().map(mutation).collect();
        self.submit(Mutation::All(mutations)).await.map(|_| ())
    }

    /// Applies `changes` (a transfer chunk, a partition streamed by anti-entropy) a slice
    /// of [`BULK_SLICE`] at a time, each sent once the writer has applied the one before,
    /// and answers once all are durable. Foreground writes queued meanwhile go between
    /// the slices instead of waiting for the whole chunk (one request of a 256 KiB chunk
    /// held the writer for its ~1,700 joins). On an error some may have been applied:
    /// each is a join, so applying them again is harmless.
    pub async fn apply_paced(&self, changes: Vec<Change>) -> Result<(), StorageError> {
        let mut durable = Vec::new();
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let slice: Vec<Mutation> = changes.by_ref().take(BULK_SLICE).map(mutation).collect();
            let (applied_tx, applied) = oneshot::channel();
            let (durable_tx, durable_rx) = oneshot::channel();
            self.send(Request {
                mutation: Mutation::All(slice),
                applied: Some(applied_tx),
                durable: durable_tx,
                hold: None,
            })?;
            applied.await.map_err(|_| stopped())??;
            durable.push(durable_rx);
        }
        for d in durable {
            d.await.map_err(|_| stopped())??;
        }
        Ok(())
    }

    /// Keeps `set` for `target` as a hint (joined with any hint already held for the key).
    pub async fn add_hint(
        &self,
        target: String,
        key: Bytes,
        set: SiblingSet,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        self.submit(Mutation::Hint {
            target,
            key,
            set,
            now_ms,
        })
        .await
        .map(|_| ())
    }

    /// Deletes a delivered hint, unless it changed since it was read.
    pub async fn clear_hint(&self, hint: &Hint) -> Result<(), StorageError> {
        let m = Mutation::ClearHint {
            target: hint.target.clone(),
            key: hint.key.clone(),
            raw: hint.raw.clone(),
        };
        self.submit(m).await.map(|_| ())
    }

    /// Up to `limit` hints held for `target`.
    pub fn hints_for(&self, target: &str, limit: usize) -> Result<Vec<Hint>, StorageError> {
        let prefix = hint_prefix(target);
        self.engine
            .scan(Cf::Hints, &prefix, &prefix, limit)?
            .into_iter()
            .map(|(k, raw)| {
                let (_, key) =
                    split_hint_key(&k).ok_or(StorageError::Corrupt("hint key".into()))?;
                let (created_ms, set) = decode_hint(&raw)?;
                Ok(Hint {
                    target: target.to_owned(),
                    key: Bytes::copy_from_slice(key),
                    set,
                    created_ms,
                    raw,
                })
            })
            .collect()
    }

    /// Every hint held, summarized per target: (target, count, oldest created_ms).
    pub fn hint_summary(&self) -> Result<Vec<(String, u64, u64)>, StorageError> {
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = self.engine.scan(Cf::Hints, b"", &start, 1024)?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            for (k, raw) in &page {
                let (target, _) =
                    split_hint_key(k).ok_or(StorageError::Corrupt("hint key".into()))?;
                let created = decode_hint(raw)?.0;
                match out.last_mut() {
                    Some(e) if e.0 == target => {
                        e.1 += 1;
                        e.2 = e.2.min(created);
                    }
                    _ => out.push((target.to_owned(), 1, created)),
                }
            }
        }
        Ok(out)
    }
}

/// Closes the store and waits for its threads, however long it takes: the writer never
/// outlives the store (a node's process must not exit, and so destroy RocksDB's state,
/// under it). A writer held by a hung disk therefore holds the drop too; whoever must
/// not wait for that leaks the store instead (see `crate::server`).
impl Drop for Store {
    fn drop(&mut self) {
        drop(self.tx.get_mut().take());
        self.threads.wait(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::faulty::FaultyEngine;
    use crate::storage::memory::MemoryEngine;

    fn store() -> Store {
        Store::new(Arc::new(MemoryEngine::new()), 16, false)
    }

    /// A blind write of `v` to `key` by actor n#1, applied (not yet durable).
    async fn blind(s: &Store, key: &str, v: &str) -> Staged {
        let actor = Actor::new("n", 1);
        s.update(
            Bytes::from(key.to_owned()),
            CausalContext::new(),
            actor,
            value(v),
        )
        .await
        .unwrap()
    }

    /// What the engine itself holds for `key` (past the cache; 16 partitions).
    fn in_engine(engine: &dyn Engine, key: &[u8]) -> SiblingSet {
        let dk = data_key(partition_of(key, 16), key);
        decode_stored(engine.get(Cf::Data, &dk).unwrap().as_deref()).unwrap()
    }

    #[tokio::test]
    async fn with_a_tiny_cache_every_update_still_sees_the_stored_set() {
        // A budget of 64 bytes turns generations over every few writes, so reads come
        // from the young map, the old one and the engine in turn.
        let engine = Arc::new(MemoryEngine::new());
        let s = Store::open(engine.clone(), 16, None, 64);
        let actor = Actor::new("n", 1);
        let keys: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("key-{i}"))).collect();
        for round in 0..10 {
            for key in &keys {
                // A blind write adds a sibling: after `round + 1` rounds, as many values.
                let staged = s
                    .update(key.clone(), CausalContext::new(), actor.clone(), value("x"))
                    .await
                    .unwrap();
                assert_eq!(staged.set.values().count(), round + 1, "{key:?}");
            }
        }
        for key in &keys {
            assert_eq!(
                s.read(key).unwrap().values().count(),
                10,
                "{key:?} in the engine"
            );
        }
    }

    fn value(text: &str) -> Option<Bytes> {
        Some(Bytes::from(text.to_owned()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_never_brings_back_a_set_older_than_an_acknowledged_one() {
        let engine = Arc::new(FaultyEngine::new());
        let s = Arc::new(Store::new(engine.clone(), 16, false));
        let (first, durable) = blind(&s, "k", "v1").await.into_parts();
        durable.await.unwrap();
        // A reader misses the cache and reads v1 from the engine, but is held there...
        s.drop_cache();
        engine.pause_next_read();
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || s.read(b"k").unwrap())
        };
        tokio::task::spawn_blocking({
            let engine = engine.clone();
            move || engine.wait_read_paused()
        })
        .await
        .unwrap();
        // ...while v2 is written over v1 and acknowledged.
        let context = first.context().clone();
        let second = s
            .update(Bytes::from("k"), context, Actor::new("n", 1), value("v2"))
            .await
            .unwrap();
        second.durable().await.unwrap();
        // The held read returns the v1 it read: fine for a read concurrent with the write,
        // but its fill of the cache must not replace v2.
        engine.release_read();
        let seen = reader.join().unwrap();
        assert_eq!(seen.values().collect::<Vec<_>>(), [&Bytes::from("v1")]);
        let now = s.read(b"k").unwrap();
        assert_eq!(
            now.values().collect::<Vec<_>>(),
            [&Bytes::from("v2")],
            "a read after an acknowledged write must see it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn synced_writes_share_syncs_without_waiting_for_writers_that_are_all_back() {
        // One write alone is synced at once: pacing costs nothing when idle. (A long
        // window, so that only a wrong wait, not a busy test machine, fails this.)
        let idle = Arc::new(FaultyEngine::new());
        let long = std::time::Duration::from_secs(20);
        let s = Store::synced(idle.clone(), 16, long);
        let started = std::time::Instant::now();
        blind(&s, "k", "a").await.durable().await.unwrap();
        assert!(started.elapsed() < long / 4, "{:?}", started.elapsed());
        assert_eq!(idle.syncs(), 1);

        let engine = Arc::new(FaultyEngine::new());
        let window = std::time::Duration::from_millis(300);
        let s = Arc::new(Store::synced(engine.clone(), 16, window));
        blind(&s, "k", "a").await.durable().await.unwrap();

        // Eight writers, each waiting for its write's sync before the next. A sync waits
        // for as many writes as the last one covered, not for the window: 20 rounds take
        // ~20 floors (1 ms each), where waiting out the window would take 6 s.
        let started = std::time::Instant::now();
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        let staged = blind(&s, &format!("w{w}-{i}"), "v").await;
                        staged.durable().await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let elapsed = started.elapsed();
        assert!(elapsed < window * 10, "160 writes took {elapsed:?}");
        let syncs = engine.syncs() - 1;
        assert!(
            syncs < 80,
            "{syncs} syncs for 160 writes: syncs are not shared"
        );
        // Every acknowledged write is durable: a crash loses none of them.
        engine.crash();
        assert!(!in_engine(&*engine, b"w7-19").is_empty());
    }

    #[tokio::test]
    async fn with_synced_writes_an_update_is_durable_once_acknowledged() {
        let engine = Arc::new(MemoryEngine::new());
        let s = Store::new(engine.clone(), 16, true);
        let staged = blind(&s, "k", "a").await;
        assert_eq!(staged.set.values().count(), 1);
        staged.durable().await.unwrap();
        // A join that changes nothing is acknowledged only after a sync too.
        s.join(Bytes::from("k"), SiblingSet::new()).await.unwrap();
        engine.crash();
        assert_eq!(
            in_engine(&*engine, b"k").values().collect::<Vec<_>>(),
            vec![&Bytes::from("a")],
            "an acknowledged write survives a crash (in the engine, past the cache)"
        );
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_write_and_poisons_the_store() {
        let engine = Arc::new(FaultyEngine::new());
        engine.fail_syncs(true);
        let s = Store::new(engine.clone(), 16, true);
        let actor = Actor::new("n", 1);
        let err = blind(&s, "k", "a").await.durable().await.unwrap_err();
        assert!(err.to_string().contains("injected sync failure"), "{err}");
        assert!(s.is_poisoned());
        engine.fail_syncs(false);
        let err = s
            .update(Bytes::from("k2"), CausalContext::new(), actor, value("b"))
            .await
            .err()
            .expect("a poisoned store refuses writes");
        assert!(err.to_string().contains("restarts"), "{err}");
        let err = s
            .join(Bytes::from("k3"), SiblingSet::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("restarts"), "{err}");
        assert!(
            s.read(b"k2").unwrap().is_empty(),
            "nothing applied after poisoning"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_drains_what_was_accepted_refuses_the_rest_and_times_out_when_stalled() {
        let engine = Arc::new(FaultyEngine::new());
        let s = Store::synced(engine.clone(), 16, std::time::Duration::ZERO);
        let accepted = s
            .merge(Bytes::from("k"), SiblingSet::new(), None, None)
            .unwrap();
        let soon = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        assert!(s.close(soon).await, "an idle writer drains at once");
        accepted.await.unwrap();
        assert_eq!(
            Arc::strong_count(&engine),
            2,
            "the writer and the syncer have ended (only the test and the store hold the engine)"
        );
        let err = s
            .join(Bytes::from("k2"), SiblingSet::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("store is closed"), "{err}");
        assert!(s.close(soon).await, "closing again changes nothing");

        // A writer held by a hung disk: the close gives up at its deadline.
        let stalled = Store::synced(engine.clone(), 16, std::time::Duration::ZERO);
        engine.set_open(false);
        let pending = stalled
            .merge(Bytes::from("k3"), SiblingSet::new(), None, None)
            .unwrap();
        let shortly = tokio::time::Instant::now() + std::time::Duration::from_millis(200);
        assert!(
            !stalled.close(shortly).await,
            "still in flight at the deadline"
        );
        // What it accepted is still made durable once the disk answers, and the drop
        // waits for the threads.
        engine.set_open(true);
        pending.await.unwrap();
        tokio::task::spawn_blocking(move || drop(stalled))
            .await
            .unwrap();
        assert_eq!(
            Arc::strong_count(&engine),
            2,
            "the stalled store's threads are gone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_store_waits_for_its_writer_to_apply_what_it_accepted() {
        // Every write is held by the disk until the gate opens.
        let engine = Arc::new(FaultyEngine::new());
        engine.gate_writes(true);
        engine.set_open(false);
        let s = Store::new(engine.clone(), 16, false);
        let mut set = SiblingSet::new();
        set.update(&CausalContext::new(), &Actor::new("n", 1), value("v"))
            .unwrap();
        // Accepted, not awaited: the drop right after must not lose it.
        let _durable = s.merge(Bytes::from("k"), set, None, None).unwrap();
        let dropped = tokio::task::spawn_blocking(move || drop(s));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !dropped.is_finished(),
            "the drop waits for the writer the disk holds"
        );
        engine.set_open(true);
        dropped.await.unwrap();
        assert_eq!(
            Arc::strong_count(&engine),
            1,
            "no store thread holds the engine"
        );
        assert_eq!(
            in_engine(&*engine, b"k").values().collect::<Vec<_>>(),
            [&Bytes::from("v")]
        );
    }

    #[tokio::test]
    async fn concurrent_blind_updates_all_survive() {
        let s = Arc::new(store());
        let actor = Actor::new("n", 1);
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let (s, actor) = (s.clone(), actor.clone());
                tokio::spawn(async move {
                    s.update(
                        Bytes::from("k"),
                        CausalContext::new(),
                        actor,
                        Some(Bytes::from(format!("{i}"))),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            s.read(b"k").unwrap().values().count(),
            100,
            "no update lost another"
        );
    }

    #[tokio::test]
    async fn apply_all_joins_and_hints_many_keys_at_once() {
        let s = store();
        let set = |v: &str, n: &str| {
            let mut set = SiblingSet::new();
            set.update(&CausalContext::new(), &Actor::new(n, 1), value(v))
                .unwrap();
            set
        };
        // More single-key changes than one writer group holds: they still go together.
        let mut changes: Vec<Change> = (0..600)
            .map(|i| Change::Join {
                key: Bytes::from(format!("k{i}")),
                set: set(&format!("v{i}"), "a"),
            })
            .collect();
        changes.push(Change::Join {
            key: Bytes::from("k0"),
            set: set("w0", "b"),
        });
        changes.push(Change::Hint {
            target: "t".into(),
            key: Bytes::from("h"),
            set: set("x", "c"),
            now_ms: 9,
        });
        s.apply_all(changes).await.unwrap();
        for i in 1..600 {
            let got: Vec<_> = s
                .read(format!("k{i}").as_bytes())
                .unwrap()
                .values()
                .cloned()
                .collect();
            assert_eq!(got, [format!("v{i}")]);
        }
        let mut k0: Vec<_> = s.read(b"k0").unwrap().values().cloned().collect();
        k0.sort();
        assert_eq!(
            k0,
            ["v0", "w0"],
            "two changes of one key in one request both count"
        );
        let held = s.hints_for("t", 10).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].created_ms, 9);
        assert!(s.read(b"h").unwrap().is_empty(), "a hint is not data");
    }

    #[tokio::test]
    async fn hints_join_and_clear_only_if_unchanged() {
        let s = store();
        let mut a = SiblingSet::new();
        a.update(
            &CausalContext::new(),
            &Actor::new("x", 1),
            Some(Bytes::from("1")),
        )
        .unwrap();
        s.add_hint("t".into(), Bytes::from("k"), a.clone(), 5)
            .await
            .unwrap();
        let held = s.hints_for("t", 10).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].created_ms, 5);
        let mut b = SiblingSet::new();
        b.update(
            &CausalContext::new(),
            &Actor::new("y", 1),
            Some(Bytes::from("2")),
        )
        .unwrap();
        s.add_hint("t".into(), Bytes::from("k"), b, 9)
            .await
            .unwrap();
        s.clear_hint(&held[0]).await.unwrap();
        let now = s.hints_for("t", 10).unwrap();
        assert_eq!(
            now.len(),
            1,
            "a hint that changed after it was read is kept"
        );
        assert_eq!(now[0].set.values().count(), 2);
        assert_eq!(now[0].created_ms, 5, "the oldest write's age is kept");
        assert_eq!(s.hint_summary().unwrap(), vec![("t".to_owned(), 1, 5)]);
        s.clear_hint(&now[0]).await.unwrap();
        assert!(s.hints_for("t", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn dropping_a_partition_empties_it_alone_between_the_writes_around_it() {
        let s = store();
        let keys: Vec<String> = (0..400).map(|i| format!("key{i}")).collect();
        let p = partition_of(keys[0].as_bytes(), 16);
        let in_p = |k: &String| partition_of(k.as_bytes(), 16) == p;
        let mut queued = Vec::new();
        for k in &keys {
            let record = EpochRecord {
                incarnation: 1,
                epoch: 7,
            };
            let mut set = SiblingSet::new();
            set.update(&CausalContext::new(), &Actor::new("x", 1), value(k))
                .unwrap();
            // Queued in order without waiting: the drop lands among pending writes.
            queued.push(
                s.merge(Bytes::from(k.clone()), set, Some(record), None)
                    .unwrap(),
            );
        }
        let late = keys.iter().find(|k| in_p(k)).unwrap().clone();
        let dropped = s.drop_partition(p);
        let again = blind(&s, &late, "after");
        let (dropped, again) = tokio::join!(dropped, again);
        dropped.unwrap();
        again.durable().await.unwrap();
        for q in queued {
            q.await.unwrap();
        }

        for k in &keys {
            let (set, epoch) = (
                s.read(k.as_bytes()).unwrap(),
                s.epoch_of(k.as_bytes()).unwrap(),
            );
            if *k == late {
                let values: Vec<_> = set.values().cloned().collect();
                assert_eq!(
                    values,
                    ["after"],
                    "a write queued after the drop is kept alone"
                );
                assert_eq!(epoch, None, "its epoch record went with the partition");
            } else if in_p(k) {
                assert!(set.is_empty(), "{k} of the dropped partition is gone");
                assert!(in_engine(&**s.engine(), k.as_bytes()).is_empty());
                assert_eq!(epoch, None);
            } else {
                assert_eq!(set.values().count(), 1, "{k} of another partition stays");
                assert!(epoch.is_some());
            }
        }
        let rebuilt = trees::Trees::build(&**s.engine(), 16).unwrap();
        for q in 0..16 {
            assert_eq!(s.trees().tree(q), rebuilt.tree(q), "partition {q}'s tree");
        }
    }

    #[tokio::test]
    async fn a_partition_dropped_and_received_again_keeps_a_true_tree() {
        dropped_and_received(store()).await;
        #[cfg(feature = "rocksdb")]
        {
            let dir = tempfile::tempdir().unwrap();
            let rocks = crate::storage::rocks::RocksEngine::open(dir.path(), 8 << 20).unwrap();
            dropped_and_received(Store::new(Arc::new(rocks), 16, false)).await;
        }
    }

    async fn dropped_and_received(s: Store) {
        let keys: Vec<String> = (0..300).map(|i| format!("key{i}")).collect();
        let p = partition_of(keys[0].as_bytes(), 16);
        let joins = |tag: &str| -> Vec<Change> {
            keys.iter()
                .map(|k| {
                    let mut set = SiblingSet::new();
                    set.update(&CausalContext::new(), &Actor::new(tag, 1), value(k))
                        .unwrap();
                    Change::Join {
                        key: Bytes::from(k.clone()),
                        set,
                    }
                })
                .collect()
        };
        s.apply_all(joins("a")).await.unwrap();
        s.drop_partition(p).await.unwrap();
        // Received back (a transfer's chunk), with versions it held before and new ones.
        s.apply_all(joins("a")).await.unwrap();
        // In slices, as transfers join their chunks.
        s.apply_paced(joins("b")).await.unwrap();
        for k in &keys {
            let set = s.read(k.as_bytes()).unwrap();
            assert_eq!(set.values().count(), 2, "{k} holds a's and b's versions");
        }
        let rebuilt = trees::Trees::build(&**s.engine(), 16).unwrap();
        for q in 0..16 {
            assert_eq!(s.trees().tree(q), rebuilt.tree(q), "partition {q}'s tree");
        }
    }
}
