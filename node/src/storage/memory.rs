//! An in-memory engine for tests and simulation.
//!
//! It models durability: writes without `sync` are applied at once but are also kept in
//! an unsynced log; [`MemoryEngine::crash`] drops them, as a machine crash drops what the
//! OS had not written back. `sync` (or a synced write) makes everything so far durable.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{Batch, Cf, Engine, Entries, Op, StorageError};

type Tables = BTreeMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
struct State {
    current: Tables,
    durable: Tables,
    unsynced: Vec<Batch>,
}

/// In-memory [`Engine`] that can simulate a crash.
#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

fn apply(tables: &mut Tables, batch: &Batch) {
    for op in &batch.ops {
        match op {
            Op::Put(cf, k, v) => {
                tables.entry(*cf).or_default().insert(k.clone(), v.clone());
            }
            Op::Delete(cf, k) => {
                tables.entry(*cf).or_default().remove(k);
            }
            Op::DeleteRange(cf, from, to) => {
                let t = tables.entry(*cf).or_default();
                let doomed: Vec<_> = t
                    .range(from.clone()..to.clone())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    t.remove(&k);
                }
            }
        }
    }
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a machine crash: every write not yet synced is lost.
    pub fn crash(&self) {
        let mut s = self.state.lock();
        s.current = s.durable.clone();
        s.unsynced.clear();
    }

    fn sync_locked(s: &mut State) {
        let pending = std::mem::take(&mut s.unsynced);
        for b in &pending {
            apply(&mut s.durable, b);
        }
    }
}

impl Engine for MemoryEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .state
            .lock()
            .current
            .get(&cf)
            .and_then(|t| t.get(key))
            .cloned())
    }

    fn write(&self, batch: &Batch, sync: bool) -> Result<(), StorageError> {
        let mut s = self.state.lock();
        apply(&mut s.current, batch);
        s.unsynced.push(batch.clone());
        if sync {
            Self::sync_locked(&mut s);
        }
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Entries, StorageError> {
        let s = self.state.lock();
        let Some(t) = s.current.get(&cf) else {
            return Ok(Vec::new());
        };
        let from = if start > prefix {
            start.to_vec()
        } else {
            prefix.to_vec()
        };
        Ok(t.range(from..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Self::sync_locked(&mut self.state.lock());
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.current
            .values()
            .flat_map(|t| t.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    fn data_keys_estimate(&self) -> u64 {
        let s = self.state.lock();
        s.current.get(&Cf::Data).map_or(0, |t| t.len() as u64)
    }
}
