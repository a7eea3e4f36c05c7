//! What each store mutation does to the stored state: read-modify-write of sibling sets
//! and hints, against the engine plus the writes already staged in the current group.
//! Also the stored encodings (a sibling set is the codec's format; a hint prepends the
//! time it was first stored).

use std::collections::HashMap;

use bytes::Bytes;
use dynamo_core::codec::{decode_set, encode_set};
use dynamo_core::ring::partition_of;
use dynamo_core::{Actor, CausalContext, PartitionId, SiblingSet};

use super::cache::SetCache;
use super::trees::Toggle;
use crate::dots::EpochRecord;
use crate::storage::keys::{data_key, hint_key, partition_range};
use crate::storage::{Batch, Cf, Engine, Op, StorageError};

/// A change to the store, applied by the writer thread.
pub(super) enum Mutation {
    Update {
        key: Bytes,
        context: CausalContext,
        actor: Actor,
        value: Option<Bytes>,
    },
    Join {
        key: Bytes,
        set: SiblingSet,
        /// The key's new epoch record, when this node's write minted an epoch.
        epoch: Option<EpochRecord>,
    },
    /// Drops the local copy of a key and its epoch record (only if the stored set is
    /// byte for byte `if_raw`, when given).
    Forget { key: Bytes, if_raw: Option<Bytes> },
    Hint {
        target: String,
        key: Bytes,
        set: SiblingSet,
        now_ms: u64,
    },
    ClearHint {
        target: String,
        key: Bytes,
        raw: Vec<u8>,
    },
    /// Drops every key of a partition with its epoch records: two range deletes. The
    /// writer applies it in a group of its own, so no other mutation of the group reads
    /// around it.
    DropPartition(PartitionId),
    /// Several mutations answered together (stops at the first error; the earlier ones
    /// stay staged).
    All(Vec<Mutation>),
}

impl Mutation {
    /// How many single-key mutations this is (a group's size is counted in these).
    pub(super) fn weight(&self) -> usize {
        match self {
            Mutation::All(ms) => ms.len().max(1),
            _ => 1,
        }
    }

    /// Whether the writer must apply this mutation in a group of its own.
    pub(super) fn is_alone(&self) -> bool {
        matches!(self, Mutation::DropPartition(_))
    }
}

/// What a mutation answers once applied.
pub(super) enum Outcome {
    Set(SiblingSet),
    /// Whether a conditional forget dropped the key.
    Forgot(bool),
    Done,
}

pub(super) fn encode_hint(created_ms: u64, set: &SiblingSet) -> Vec<u8> {
    let mut v = created_ms.to_le_bytes().to_vec();
    v.extend_from_slice(&encode_set(set));
    v
}

pub(super) fn decode_hint(raw: &[u8]) -> Result<(u64, SiblingSet), StorageError> {
    if raw.len() < 8 {
        return Err(StorageError::Corrupt("hint shorter than its header".into()));
    }
    let created = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    let set = decode_set(&raw[8..]).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    Ok((created, set))
}

/// Decodes a stored sibling set; `None` (never written) is the empty set.
pub fn decode_stored(raw: Option<&[u8]>) -> Result<SiblingSet, StorageError> {
    match raw {
        None => Ok(SiblingSet::new()),
        Some(b) => decode_set(b).map_err(|e| StorageError::Corrupt(e.to_string())),
    }
}

/// Pending state of keys already touched by the batch being built.
#[derive(Default)]
pub(super) struct Overlay {
    /// Data keys written in the batch: the index of the latest put (or delete) of each
    /// (decoded again only if the same group touches the key twice).
    data: HashMap<Vec<u8>, usize>,
    hints: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the batch does to the Merkle trees, once written.
    pub(super) toggles: Vec<Toggle>,
    /// Partitions the batch empties (their trees are reset before `toggles` apply).
    pub(super) emptied: Vec<PartitionId>,
}

pub(super) fn apply(
    engine: &dyn Engine,
    cache: &SetCache,
    q: u32,
    m: Mutation,
    batch: &mut Batch,
    overlay: &mut Overlay,
) -> Result<Outcome, StorageError> {
    match m {
        Mutation::Update {
            key,
            context,
            actor,
            value,
        } => {
            let dk = data_key(partition_of(&key, q), &key);
            let old = current(engine, cache, batch, overlay, &dk)?;
            let mut set = decode_stored(old.as_deref())?;
            set.update(&context, &actor, value)
                .map_err(|e| StorageError::Engine(e.to_string()))?;
            stage(batch, overlay, dk, old.as_deref(), encode_set(&set));
            Ok(Outcome::Set(set))
        }
        Mutation::Join { key, set, epoch } => {
            let dk = data_key(partition_of(&key, q), &key);
            let old = current(engine, cache, batch, overlay, &dk)?;
            let mut stored = decode_stored(old.as_deref())?;
            if let Some(record) = epoch {
                batch.put(Cf::Epochs, dk.clone(), record.encode());
            }
            if stored.absorb(&set) {
                stage(batch, overlay, dk, old.as_deref(), encode_set(&stored));
            }
            Ok(Outcome::Done)
        }
        Mutation::Forget { key, if_raw } => {
            let dk = data_key(partition_of(&key, q), &key);
            let old = current(engine, cache, batch, overlay, &dk)?;
            if if_raw.is_some_and(|want| old.as_ref() != Some(&want)) {
                return Ok(Outcome::Forgot(false));
            }
            overlay.toggles.push(Toggle::of(&dk, old.as_deref(), None));
            batch.delete(Cf::Epochs, dk.clone());
            overlay.data.insert(dk.clone(), batch.ops.len());
            batch.delete(Cf::Data, dk);
            Ok(Outcome::Forgot(true))
        }
        Mutation::Hint {
            target,
            key,
            set,
            now_ms,
        } => {
            let hk = hint_key(&target, &key);
            let (created, joined) = match current_hint(engine, overlay, &hk)? {
                Some(raw) => {
                    let (created, held) = decode_hint(&raw)?;
                    (created, held.join(&set))
                }
                None => (now_ms, set),
            };
            let raw = encode_hint(created, &joined);
            batch.put(Cf::Hints, hk.clone(), raw.clone());
            overlay.hints.insert(hk, Some(raw));
            Ok(Outcome::Done)
        }
        Mutation::DropPartition(p) => {
            let (from, to) = partition_range(p);
            batch.delete_range(Cf::Data, from.clone(), to.clone());
            batch.delete_range(Cf::Epochs, from, to);
            overlay.emptied.push(p);
            Ok(Outcome::Done)
        }
        Mutation::All(ms) => {
            for m in ms {
                apply(engine, cache, q, m, batch, overlay)?;
            }
            Ok(Outcome::Done)
        }
        Mutation::ClearHint { target, key, raw } => {
            let hk = hint_key(&target, &key);
            if current_hint(engine, overlay, &hk)?.as_deref() == Some(&raw[..]) {
                batch.delete(Cf::Hints, hk.clone());
                overlay.hints.insert(hk, None);
            }
            Ok(Outcome::Done)
        }
    }
}

/// The encoded set stored under `dk` (`None` if absent): as written earlier in this
/// batch, else as cached, else as in the engine.
fn current(
    engine: &dyn Engine,
    cache: &SetCache,
    batch: &Batch,
    overlay: &Overlay,
    dk: &[u8],
) -> Result<Option<Bytes>, StorageError> {
    match overlay.data.get(dk).map(|&i| &batch.ops[i]) {
        Some(Op::Put(_, _, staged)) => Ok(Some(Bytes::copy_from_slice(staged))),
        Some(Op::Delete(..)) => Ok(None),
        Some(_) => unreachable!("the overlay indexes puts and deletes only"),
        None => match cache.get(dk) {
            Ok(cached) => Ok(Some(cached)),
            Err(_) => Ok(engine.get(Cf::Data, dk)?.map(Bytes::from)),
        },
    }
}

/// Adds the put of `encoded` under `dk` (which held `old`) to the batch, and remembers it
/// for later mutations of the same group and for the Merkle trees.
fn stage(
    batch: &mut Batch,
    overlay: &mut Overlay,
    dk: Vec<u8>,
    old: Option<&[u8]>,
    encoded: Vec<u8>,
) {
    overlay.toggles.push(Toggle::of(&dk, old, Some(&encoded)));
    overlay.data.insert(dk.clone(), batch.ops.len());
    batch.put(Cf::Data, dk, encoded);
}

fn current_hint(
    engine: &dyn Engine,
    overlay: &Overlay,
    hk: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    match overlay.hints.get(hk) {
        Some(v) => Ok(v.clone()),
        None => engine.get(Cf::Hints, hk),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;

    #[test]
    fn mutations_of_one_key_in_one_group_see_each_other() {
        let engine = MemoryEngine::new();
        let cache = SetCache::new(1 << 20);
        let (mut batch, mut overlay) = (Batch::default(), Overlay::default());
        let key = Bytes::from("k");
        let update = |v: &'static str, n: &str| Mutation::Update {
            key: key.clone(),
            context: CausalContext::new(),
            actor: Actor::new(n, 1),
            value: Some(Bytes::from(v)),
        };
        let mut run = |m| apply(&engine, &cache, 16, m, &mut batch, &mut overlay);
        run(update("a", "n1")).unwrap();
        let Outcome::Set(second) = run(update("b", "n1")).unwrap() else {
            panic!("an update answers the set");
        };
        assert_eq!(second.values().count(), 2, "the second saw the first");
        let mut remote = SiblingSet::new();
        remote
            .update(
                &CausalContext::new(),
                &Actor::new("n2", 1),
                Some("c".into()),
            )
            .unwrap();
        run(Mutation::Join {
            key,
            set: remote,
            epoch: None,
        })
        .unwrap();

        engine.write(&batch, true).unwrap();
        let dk = data_key(partition_of(b"k", 16), b"k");
        let stored = decode_stored(engine.get(Cf::Data, &dk).unwrap().as_deref()).unwrap();
        let mut values: Vec<_> = stored.values().cloned().collect();
        values.sort();
        assert_eq!(values, ["a", "b", "c"]);
    }
}
