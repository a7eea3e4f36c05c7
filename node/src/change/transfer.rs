//! Transfers: how a new replica of a partition receives it during a change of members.
//!
//! The receiving node drives it. Once every member holds the pending map (so every
//! write from then on goes to the new replicas too, see [`dynamo_core::map_state`]), for
//! each of its incoming moves it:
//!
//! 1. **streams** the partition from an old replica (the one it replaces, if up): it asks
//!    for the next chunk (`AntiEntropy.Fetch`, at most [`CHUNK_BYTES`] of sets after the
//!    last key it has) only once it has joined the last one, so the sender never runs
//!    ahead of it. Joins are idempotent, so a chunk fetched twice is harmless; the last
//!    key joined is persisted after every chunk, so a restart of either side resumes
//!    there. Chunks take the background budget ([`crate::budget`]).
//! 2. **verifies**: anti-entropy of the partition against every old replica that is up
//!    (the one it replaces first), repeated until a pass finds no difference. This
//!    catches writes and hints that reached an old replica after its chunk was read.
//!
//! Only then is the move done (persisted too). A chunk is read from the sender's store as
//! it is at that moment; the verification, not the stream, is what makes a move
//! complete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::codec::decode_set;
use dynamo_core::map_state::Move;
use dynamo_core::Member;
use dynamo_proto::v1::{FetchRequest, FetchResponse, ReplicaEntry};
use serde::{Deserialize, Serialize};

use super::{ChangeError, MoveStatus, Stage};
use crate::antientropy::exchange;
use crate::node::Node;
use crate::storage::keys::{data_key, partition_range};
use crate::storage::{Batch, Cf, Engine, StorageError};
use crate::store::Change;

/// Bytes of sets per chunk: small enough that the sender's budget at its floor answers
/// one well within [`FETCH_TIMEOUT`]. The receiver joins a chunk in slices
/// ([`crate::store::Store::apply_paced`]), so its writer is never held for a whole one.
pub const CHUNK_BYTES: u64 = 256 << 10;
/// How long one chunk may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Anti-entropy passes against one old replica before the move is retried later.
const VERIFY_PASSES: usize = 5;
/// Keys scanned at once when answering a fetch: more than a chunk holds, so that a chunk
/// costs one scan (each sorts the data memtable first, see `storage::rocks`).
const SCAN_PAGE: usize = 4096;
const PROGRESS_PREFIX: &[u8] = b"move/";

/// A move's persisted progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last key joined.
    pub after: Option<Vec<u8>>,
    pub keys: u64,
    pub bytes: u64,
    /// Every chunk is joined.
    pub streamed: bool,
    /// Verified: the move is done.
    pub done: bool,
}

fn progress_key(version: u64, p: u32) -> Vec<u8> {
    let mut k = PROGRESS_PREFIX.to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k.extend_from_slice(&p.to_be_bytes());
    k
}

/// The persisted progress of the move of partition `p` under map-state `version`.
pub fn load(engine: &dyn Engine, version: u64, p: u32) -> Result<Progress, StorageError> {
    match engine.get(Cf::Meta, &progress_key(version, p))? {
        Some(raw) => serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("move progress: {e}"))),
        None => Ok(Progress::default()),
    }
}

fn save(
    engine: &dyn Engine,
    version: u64,
    p: u32,
    progress: &Progress,
) -> Result<(), StorageError> {
    let mut b = Batch::default();
    b.put(
        Cf::Meta,
        progress_key(version, p),
        serde_json::to_vec(progress).expect("progress serializes"),
    );
    engine.write(&b, false)
}

/// Drops the persisted progress of every change but the one of map-state `keep`.
pub fn forget_others(engine: &dyn Engine, keep: Option<u64>) -> Result<(), StorageError> {
    let stale: Vec<Vec<u8>> = engine
        .scan(Cf::Meta, PROGRESS_PREFIX, PROGRESS_PREFIX, 1 << 16)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            let version = k
                .get(PROGRESS_PREFIX.len()..PROGRESS_PREFIX.len() + 8)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes);
            version != keep
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let mut b = Batch::default();
    for k in stale {
        b.delete(Cf::Meta, k);
    }
    engine.write(&b, false)
}

fn record(
    node: &Node,
    version: u64,
    mv: &Move,
    progress: &Progress,
    stage: Stage,
    error: Option<String>,
) {
    node.moves.lock().insert(
        (version, mv.partition),
        MoveStatus {
            from: mv.from.clone(),
            stage,
            keys: progress.keys,
            bytes: progress.bytes,
            error,
        },
    );
}

/// Works on this node's incoming moves of the pending change, one after the other.
pub async fn step(node: &Arc<Node>) {
    let live = node.live();
    let state = &live.state;
    if !state.changing() {
        return;
    }
    let version = state.version;
    let mine: Vec<Move> = state
        .moves()
        .into_iter()
        .filter(|m| m.to == node.id())
        .collect();
    node.moves.lock().retain(|(v, _), _| *v == version);
    let lagging = super::lagging(node, state);
    for mv in &mine {
        if node.live().state.version != version {
            return; // the state moved on: the next step works on the new one
        }
        let engine = node.store.engine().clone();
        let mut progress = match load(&*engine, version, mv.partition) {
            Ok(p) => p,
            Err(e) => {
                record(
                    node,
                    version,
                    mv,
                    &Progress::default(),
                    Stage::Waiting,
                    Some(e.to_string()),
                );
                continue;
            }
        };
        if progress.done {
            record(node, version, mv, &progress, Stage::Done, None);
            continue;
        }
        if !lagging.is_empty() {
            let why = format!("waiting for {} to hold the pending map", lagging.join(", "));
            record(node, version, mv, &progress, Stage::Waiting, Some(why));
            continue;
        }
        if let Err(e) = one(node, version, mv, &mut progress).await {
            tracing::info!(partition = mv.partition, error = %e, "move not done yet");
            let stage = match progress.streamed {
                true => Stage::Verifying,
                false => Stage::Streaming,
            };
            record(node, version, mv, &progress, stage, Some(e));
        }
    }
}

/// The old replicas to stream from and verify against, the one `mv` replaces first.
fn sources(node: &Node, mv: &Move) -> Vec<Member> {
    let live = node.live();
    let mut ids: Vec<&String> = mv.from.iter().collect();
    ids.extend(mv.sources.iter().filter(|s| Some(*s) != mv.from.as_ref()));
    ids.into_iter()
        .filter(|id| *id != node.id())
        .filter_map(|id| live.state.member(id).cloned())
        .collect()
}

/// Why move `mv` cannot be made from the `up` old replicas that are up (this node left
/// out): none is, or the replica it replaces is not (`from_up`) and fewer than
/// N − W + 1 others are.
/// A write acknowledged under the old map is on W of its N replicas, so any N − W + 1
/// of them hold every such write between them, and verifying against all of those is
/// as good as verifying against the one replaced (which lets a change remove a dead
/// node). Writes acknowledged by fallbacks reach the new replicas as hints.
fn enough_sources(mv: &Move, from_up: bool, up: usize, n: u32, w: u32) -> Option<String> {
    let needed = (n.saturating_sub(w) + 1) as usize;
    match &mv.from {
        _ if up == 0 => Some(format!(
            "no old replica of partition {} is up",
            mv.partition
        )),
        Some(from) if !from_up && up < needed => Some(format!(
            "{from}, the replica it replaces, is not up, and only {up} of the other old \
             replicas are (need {needed})"
        )),
        _ => None,
    }
}

/// Streams and verifies one move.
async fn one(
    node: &Arc<Node>,
    version: u64,
    mv: &Move,
    progress: &mut Progress,
) -> Result<(), String> {
    let all = sources(node, mv);
    let up: Vec<Member> = all
        .iter()
        .filter(|m| node.health.is_up(&m.id))
        .cloned()
        .collect();
    let from_up = mv.from.as_ref().is_none_or(|f| node.health.is_up(f));
    if let Some(why) = enough_sources(mv, from_up, up.len(), node.n(), node.cfg.replication.w) {
        return Err(why);
    }
    let Some(source) = up.first() else {
        return Err(format!(
            "no old replica of partition {} is up",
            mv.partition
        ));
    };
    let engine = node.store.engine().clone();
    while !progress.streamed {
        record(node, version, mv, progress, Stage::Streaming, None);
        let req = FetchRequest {
            cluster_id: node.cfg.cluster_id.clone(),
            partition: mv.partition,
            after: progress.after.clone().unwrap_or_default(),
            started: progress.after.is_some(),
            max_bytes: CHUNK_BYTES,
        };
        let resp = node
            .transport
            .fetch(source, req, FETCH_TIMEOUT)
            .await
            .map_err(|e| format!("fetch from {}: {e}", source.id))?;
        let mut changes = Vec::with_capacity(resp.entries.len());
        let mut bytes = 0u64;
        let mut last = None;
        for e in resp.entries {
            let set = decode_set(&e.set)
                .map_err(|err| format!("{} sent a corrupt set: {err}", source.id))?;
            bytes += (e.key.len() + e.set.len()) as u64;
            last = Some(e.key.to_vec());
            changes.push(Change::Join { key: e.key, set });
        }
        node.budget.acquire(bytes).await;
        let n = changes.len() as u64;
        node.store
            .apply_paced(changes)
            .await
            .map_err(|e| e.to_string())?;
        if last.is_some() {
            progress.after = last;
        }
        progress.keys += n;
        progress.bytes += bytes;
        progress.streamed = resp.done;
        node.metrics.transfer_bytes.inc_by(bytes);
        save(&*engine, version, mv.partition, progress).map_err(|e| e.to_string())?;
    }
    record(node, version, mv, progress, Stage::Verifying, None);
    for peer in &up {
        let mut clean = false;
        for _ in 0..VERIFY_PASSES {
            let report = exchange::with_peer(node, peer, &[mv.partition]).await;
            if !report.errors.is_empty() {
                return Err(format!(
                    "verifying against {}: {}",
                    peer.id,
                    report.errors.join("; ")
                ));
            }
            if report.differing == 0 {
                clean = true;
                break;
            }
        }
        if !clean {
            return Err(format!(
                "still differs from {} after {VERIFY_PASSES} anti-entropy passes",
                peer.id
            ));
        }
    }
    progress.done = true;
    save(&*engine, version, mv.partition, progress).map_err(|e| e.to_string())?;
    record(node, version, mv, progress, Stage::Done, None);
    tracing::info!(partition = mv.partition, from = %source.id, keys = progress.keys, bytes = progress.bytes, "partition received");
    Ok(())
}

/// Serves a fetch ([`answer_fetch`], off the runtime's threads), charging what it sends
/// to this node's background budget: the sender is often the busiest node of a change
/// (one leaving serves every move), and its own foreground latency, not the
/// receivers', must slow the stream. Every transport serves fetches through this.
pub async fn serve_fetch(node: Arc<Node>, req: FetchRequest) -> Result<FetchResponse, ChangeError> {
    let answering = node.clone();
    let resp = crate::determinism::blocking(move || answer_fetch(&answering, req))
        .await
        .map_err(|e| ChangeError::Internal(e.to_string()))??;
    let bytes = resp
        .entries
        .iter()
        .map(|e| (e.key.len() + e.set.len()) as u64)
        .sum();
    node.budget.acquire(bytes).await;
    Ok(resp)
}

/// Answers a fetch: the keys of the partition after `after`, up to `max_bytes` of sets
/// (at least one key).
pub fn answer_fetch(node: &Node, req: FetchRequest) -> Result<FetchResponse, ChangeError> {
    let q = node.store.partitions();
    if req.partition >= q {
        return Err(ChangeError::Invalid(format!(
            "partition {} of a cluster of {q}",
            req.partition
        )));
    }
    let (prefix, _) = partition_range(req.partition);
    let mut start = match req.started {
        true => {
            let mut k = data_key(req.partition, &req.after);
            k.push(0); // the next key after it
            k
        }
        false => prefix.clone(),
    };
    let engine = node.store.engine();
    let max = req.max_bytes.clamp(1, 16 * CHUNK_BYTES);
    let mut entries = Vec::new();
    let mut bytes = 0u64;
    loop {
        let page = engine
            .scan(Cf::Data, &prefix, &start, SCAN_PAGE)
            .map_err(|e| ChangeError::Internal(e.to_string()))?;
        let full = page.len() == SCAN_PAGE;
        for (dk, set) in page {
            if bytes >= max {
                return Ok(FetchResponse {
                    entries,
                    done: false,
                });
            }
            bytes += (dk.len() + set.len()) as u64;
            start = dk.clone();
            start.push(0);
            entries.push(ReplicaEntry {
                key: Bytes::copy_from_slice(&dk[4..]),
                set: Bytes::from(set),
                hint_for: String::new(),
                sync: false,
            });
        }
        if !full {
            return Ok(FetchResponse {
                entries,
                done: true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryEngine;

    #[test]
    fn a_move_goes_on_without_the_replaced_replica_when_enough_others_are_up() {
        let mv = Move {
            partition: 7,
            to: "d".into(),
            from: Some("c".into()),
            sources: vec!["a".into(), "b".into(), "c".into()],
        };
        // N=3, W=2: the replaced replica up is enough; without it, both others are needed.
        assert_eq!(enough_sources(&mv, true, 1, 3, 2), None);
        assert_eq!(enough_sources(&mv, false, 2, 3, 2), None);
        let why = enough_sources(&mv, false, 1, 3, 2).unwrap();
        assert!(
            why.contains("c, the replica it replaces, is not up") && why.contains("need 2"),
            "{why}"
        );
        // W=1: every old replica may hold a write alone, so all are needed.
        assert!(enough_sources(&mv, false, 2, 3, 1).is_some());
        assert!(enough_sources(&mv, true, 0, 3, 2)
            .unwrap()
            .contains("no old replica"));
    }

    #[test]
    fn progress_is_kept_per_change_and_old_changes_are_forgotten() {
        let engine = MemoryEngine::new();
        let p = Progress {
            after: Some(b"k".to_vec()),
            keys: 3,
            bytes: 40,
            streamed: true,
            done: false,
        };
        save(&engine, 7, 12, &p).unwrap();
        save(&engine, 5, 12, &Progress::default()).unwrap();
        assert_eq!(load(&engine, 7, 12).unwrap(), p);
        assert_eq!(load(&engine, 7, 13).unwrap(), Progress::default());
        forget_others(&engine, Some(7)).unwrap();
        assert_eq!(load(&engine, 7, 12).unwrap(), p);
        assert!(engine
            .get(Cf::Meta, &progress_key(5, 12))
            .unwrap()
            .is_none());
        forget_others(&engine, None).unwrap();
        assert_eq!(load(&engine, 7, 12).unwrap(), Progress::default());
    }
}
