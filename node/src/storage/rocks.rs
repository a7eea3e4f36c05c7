//! The RocksDB engine.
//!
//! One database per node with the column families of [`Cf`]. The WAL is always on; the
//! fsync policy decides only whether a write waits for the WAL sync. All column families
//! share one LRU block cache, whose size bounds the node's memory together with the
//! (small, fixed) memtables.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    MemtableFactory, Options, ReadOptions, SliceTransform, WriteBatch, WriteOptions, DB,
};

use super::{Batch, Cf, Engine, Entries, Op, StorageError};

/// Memtable size per column family; with two memtables each this bounds write buffers.
const WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Bytes of a data-CF key that name its partition (see [`super::keys::data_key`]): the
/// data CF's prefix, one memtable bucket per partition.
const PARTITION_PREFIX: usize = 4;
/// Hash buckets of a data memtable: at least one per partition a node holds.
const DATA_MEMTABLE_BUCKETS: usize = 1 << 14;

/// [`Engine`] on RocksDB.
pub struct RocksEngine {
    db: DB,
    /// Default read options, made once rather than per get.
    read_opts: ReadOptions,
}

fn err(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

fn cf_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
    opts.set_max_write_buffer_number(2);
    // A bloom filter over the memtable's keys: a get of a key that is not in the memtable
    // (most keys, once data outgrows it) skips the skiplist search.
    opts.set_memtable_prefix_bloom_ratio(0.02);
    opts.set_memtable_whole_key_filtering(true);
    // A put of a key already in the memtable overwrites its entry in place when the new
    // value is no larger, as a key's sibling set mostly is from one write to the next:
    // the memtable then holds each hot key once instead of every version since the last
    // flush, and stays small and quick to search. (The WAL still has every write. The
    // cost: iterators are not point-in-time snapshots, which nothing here relies on.)
    opts.set_inplace_update_support(true);
    opts
}

/// Options of the data column family: [`cf_options`] with a memtable hashed by
/// partition.
///
/// Every write of a key first finds the key's memtable entry (to overwrite it in place).
/// In one skiplist over the whole memtable that search visits a dozen nodes scattered
/// over it, each a cache miss: profiled at ~4 us per write, 7% of the machine's CPU in
/// the synced-put benchmark. With one small skiplist per partition (the prefix is the
/// partition), the search starts in the key's partition.
///
/// The memtable used to be hashed by the whole key, which made every scan sort the
/// whole memtable first (a total-order iterator over a hash memtable copies it into a
/// new skiplist): fine for rare bulk reads, but a partition transfer, anti-entropy and
/// clean-up scan one partition in pages, and a member change spent most of a node's CPU
/// sorting memtables (profiled: 60% of the node a change removed). Scans of one
/// partition now iterate its bucket alone ([`scan_options`]).
fn data_cf_options(cache: &Cache) -> Options {
    let mut opts = cf_options(cache);
    opts.set_prefix_extractor(SliceTransform::create(
        "dynamo.partition",
        partition_prefix,
        None,
    ));
    opts.set_memtable_factory(MemtableFactory::HashSkipList {
        bucket_count: DATA_MEMTABLE_BUCKETS,
        height: 6,
        branching_factor: 4,
    });
    opts
}

/// The data CF's prefix of `key`: its partition (a key too short to name one, which the
/// store never writes, is its own prefix, so that no key is outside the extractor's
/// domain).
fn partition_prefix(key: &[u8]) -> &[u8] {
    &key[..key.len().min(PARTITION_PREFIX)]
}

/// Read options of a scan of `cf` from `from` that stops before `to`: within one
/// partition of the data CF, the partition's memtable bucket alone; otherwise a
/// total-order iterator (over the data CF it sorts the memtable: only for rare scans).
fn scan_options(cf: Cf, from: &[u8], to: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    match within_one_partition(cf, from, to) {
        true => opts.set_prefix_same_as_start(true),
        false => opts.set_total_order_seek(true),
    }
    opts
}

/// Every key of `cf` in `[from, to)` is in the same partition of the data CF.
fn within_one_partition(cf: Cf, from: &[u8], to: &[u8]) -> bool {
    cf == Cf::Data
        && from.len() >= PARTITION_PREFIX
        && to <= next_prefix(&from[..PARTITION_PREFIX]).as_slice()
}

/// The smallest key greater than every key starting with `prefix` (all 0xff: longer).
fn next_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < 0xff {
            next.push(last + 1);
            return next;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl RocksEngine {
    /// Opens (or creates) the database in `dir` with a block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let cache = Cache::new_lru_cache(cache_bytes);
        let mut opts = cf_options(&cache);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // One thread writes (the store's writer): no concurrent memtable inserts to allow
        // for, and no spinning while waiting for other writers.
        opts.set_allow_concurrent_memtable_write(false);
        opts.set_enable_write_thread_adaptive_yield(false);
        opts.set_keep_log_file_num(4);
        let cfs = Cf::ALL.iter().map(|&cf| {
            let opts = match cf {
                Cf::Data => data_cf_options(&cache),
                Cf::Hints | Cf::Meta | Cf::Epochs => cf_options(&cache),
            };
            ColumnFamilyDescriptor::new(cf.name(), opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(err)?;
        Ok(Self {
            db,
            read_opts: ReadOptions::default(),
        })
    }

    /// Every stored key of `cf` in `[from, to)`.
    fn keys_in(&self, cf: Cf, from: &[u8], to: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        let opts = scan_options(cf, from, to);
        let mut keys = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(cf),
            opts,
            IteratorMode::From(from, Direction::Forward),
        ) {
            let (k, _) = item.map_err(err)?;
            if &*k >= to {
                break;
            }
            keys.push(k.into_vec());
        }
        Ok(keys)
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("column families are created at open")
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf_opt(self.cf(cf), key, &self.read_opts)
            .map_err(err)
    }

    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        for (i, op) in batch.ops.iter().enumerate() {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf), k),
                // Not RocksDB's DeleteRange: with in-place updates (see `cf_options`) a
                // later put of a key the memtable held before the range tombstone
                // overwrites that entry under its old sequence number, which the
                // tombstone covers, and the put is lost (found by the operator test: a
                // partition dropped and later received again came back empty). So one
                // point delete per key in the range: every key stored, and every key
                // put earlier in this batch.
                Op::DeleteRange(cf, from, to) => {
                    let mut keys = self.keys_in(*cf, from, to)?;
                    keys.extend(batch.ops[..i].iter().filter_map(|op| match op {
                        Op::Put(c, k, _) if c == cf && k >= from && k < to => Some(k.clone()),
                        _ => None,
                    }));
                    keys.sort_unstable();
                    keys.dedup();
                    for k in keys {
                        wb.delete_cf(self.cf(*cf), k);
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(err)
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let from = if start > prefix { start } else { prefix };
        let mut out = Vec::new();
        let opts = scan_options(cf, from, &next_prefix(prefix));
        for item in self.db.iterator_cf_opt(
            self.cf(cf),
            opts,
            IteratorMode::From(from, Direction::Forward),
        ) {
            let (k, v) = item.map_err(err)?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(err)
    }

    fn size_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|&cf| {
                let prop = |name| {
                    self.db
                        .property_int_value_cf(self.cf(cf), name)
                        .ok()
                        .flatten()
                };
                prop("rocksdb.estimate-live-data-size").unwrap_or(0)
                    + prop("rocksdb.cur-size-all-mem-tables").unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_prefix_is_past_every_key_with_the_prefix() {
        assert_eq!(next_prefix(&[0, 0, 0, 5]), [0, 0, 0, 6]);
        assert_eq!(next_prefix(&[0, 0, 0, 0xff]), [0, 0, 1]);
        assert_eq!(next_prefix(&[0xff; 4]), [0xff; 5]);
        assert!(next_prefix(b"b").as_slice() > b"b\xff\xff".as_slice());
    }

    #[test]
    fn scans_of_one_partition_use_its_bucket_and_others_a_total_order() {
        let one = within_one_partition;
        assert!(one(Cf::Data, &[0, 0, 0, 1], &[0, 0, 0, 2]));
        assert!(one(Cf::Data, &[0, 0, 0, 1, 9], &[0, 0, 0, 1, 10]));
        assert!(!one(Cf::Data, &[0, 0, 0, 1], &[0, 0, 0, 3]));
        assert!(!one(Cf::Data, b"p1", b"p2"));
        assert!(!one(Cf::Hints, &[0, 0, 0, 1], &[0, 0, 0, 2]));
    }
}
