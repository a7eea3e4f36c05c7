//! What each store mutation does to the stored state: read-modify-write of sibling sets
//! and hints, against the engine plus the writes already staged in the current group.
//! Also the stored encodings (a sibling set is the codec's format; a hint prepends the
//! time it was first stored).

use std::collections::HashMap;

use bytes::Bytes;
use dynamo_core::codec::{decode_set, encode_set};
use dynamo_core::ring::partition_of;
use dynamo_core::{Actor, SiblingSet, VersionVector};

use crate::storage::keys::{data_key, hint_key};
use crate::storage::{Batch, Cf, Engine, StorageError};

/// A change to the store, applied by the writer thread.
pub(super) enum Mutation {
    Update {
        key: Bytes,
        context: VersionVector,
        actor: Actor,
        value: Option<Bytes>,
    },
    Join {
        key: Bytes,
        set: SiblingSet,
    },
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
}

/// What a mutation answers once applied.
pub(super) enum Outcome {
    Set(SiblingSet),
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
    data: HashMap<Vec<u8>, SiblingSet>,
    hints: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

pub(super) fn apply(
    engine: &dyn Engine,
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
            let mut set = current(engine, overlay, &dk)?;
            set.update(&context, &actor, value);
            batch.put(Cf::Data, dk.clone(), encode_set(&set));
            overlay.data.insert(dk, set.clone());
            Ok(Outcome::Set(set))
        }
        Mutation::Join { key, set } => {
            let dk = data_key(partition_of(&key, q), &key);
            let mut stored = current(engine, overlay, &dk)?;
            if stored.absorb(&set) {
                batch.put(Cf::Data, dk.clone(), encode_set(&stored));
                overlay.data.insert(dk, stored.clone());
            }
            Ok(Outcome::Set(stored))
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

fn current(engine: &dyn Engine, overlay: &Overlay, dk: &[u8]) -> Result<SiblingSet, StorageError> {
    match overlay.data.get(dk) {
        Some(s) => Ok(s.clone()),
        None => decode_stored(engine.get(Cf::Data, dk)?.as_deref()),
    }
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
