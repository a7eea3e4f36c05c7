//! Tombstone purging, and the clean-up of a fallback's copies of keys it does not
//! replicate.
//!
//! A deleted key must never come back, so a tombstone may go only when no older version
//! of the key is left anywhere that could later be joined back in. A partition's owner
//! (the first node of its preference list) purges its keys in passes:
//!
//! 1. It notes every key of the partition whose set is tombstones only, with the item
//!    hash of that set (see [`dynamo_core::merkle::item_hash`]). A key becomes ready once
//!    its set has stayed the same for the grace period (`tombstone_grace_ms`, timed by the
//!    monotonic clock, so a jump of the wall clock does not shorten it): writes in
//!    flight when the key was deleted have long landed or failed.
//! 2. It asks **every member** of the cluster to check the ready keys: a replica must
//!    hold exactly the owner's set (anti-entropy has brought every replica the same
//!    tombstone), a non-replica must hold no copy at all (no fallback's old version),
//!    and nobody may hold a hint for the key. A member that does not answer stops the
//!    pass: a node that is down may hold anything.
//! 3. Only keys every member vouched for are purged, on every member, each dropping its
//!    copy only if it is still byte for byte that set (a write that landed meanwhile
//!    keeps the key); the owner last.
//!
//! A member syncs before it vouches (and the owner before it purges): what was checked
//! must survive a power cut, or a tombstone received since the last periodic sync could
//! be lost after the purge was decided and the older version under it come back.
//!
//! A member that missed the purge still holds the tombstone; anti-entropy gives it back
//! to the others, and a later pass purges it again. Nothing older than the tombstone can
//! come back: no copy of one existed anywhere when the purge was decided.
//!
//! Every node also drops its copies of keys of partitions it does not replicate (written
//! while it was a sloppy-quorum fallback coordinator) once it holds no hint for the key
//! and every replica answers with a set that already covers the copy. Dropping a copy
//! also drops its epoch record (see [`crate::dots`]), so the node's next write of the
//! key takes a new epoch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::codec::decode_set;
use dynamo_core::merkle::item_hash;
use dynamo_core::{Member, PartitionId};
use tokio::time::Instant;

use crate::network::PeerError;
use crate::node::Node;
use crate::storage::keys::data_key;
use crate::storage::StorageError;
use crate::store::for_each_in_partition;

/// How long a purge call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most keys one pass purges per partition.
const MAX_PER_PARTITION: usize = 1024;

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Tombstoned keys waiting for their grace period or for every member's vouching.
    pub waiting: u64,
    /// Tombstones purged (this node being the owner).
    pub purged: u64,
    /// Copies of keys this node does not replicate that it dropped.
    pub cleaned: u64,
    /// What stopped part of the pass.
    pub errors: Vec<String>,
}

/// What the owner has seen of tombstoned keys: the item hash of each one's set and when
/// it was first seen so, by the monotonic clock (a jump of the wall clock must not
/// shorten the grace; candidates are not kept across restarts anyway).
#[derive(Default)]
pub struct Candidates {
    seen: HashMap<Bytes, (u64, Instant)>,
}

/// One purge pass of `node` over the partitions it owns, then one clean-up pass over
/// those it does not replicate.
pub async fn pass(node: &Arc<Node>, grace: Duration, candidates: &mut Candidates) -> PurgeReport {
    let mut report = PurgeReport::default();
    let now = Instant::now();
    let me = node.id().to_owned();
    // One map for the whole pass (gossip may bring a newer one meanwhile). While members
    // change, nothing is purged or cleaned up: the new replicas are still receiving
    // their partitions, and a member's vouching covers only the map in force.
    let live = node.live();
    if live.state.pending.is_some() {
        report
            .errors
            .push("no purge while the members of the cluster change".into());
        return report;
    }
    let map = node.map();
    // A member believed down cannot vouch: no purge this pass (asking it would only
    // wait out a timeout per partition).
    let down: Vec<&str> = map
        .members
        .iter()
        .filter(|m| m.id != me && !node.health.is_up(&m.id))
        .map(|m| m.id.as_str())
        .collect();
    if !down.is_empty() {
        report.errors.push(format!(
            "no purge while {} is believed down",
            down.join(", ")
        ));
    }
    for p in 0..map.partitions {
        let owner = map.preference_list(p).next().map(|m| m.id.clone());
        if owner.as_deref() == Some(&me) {
            if !down.is_empty() {
                continue;
            }
            if let Err(e) = purge_partition(node, p, grace, now, candidates, &mut report).await {
                report.errors.push(format!("partition {p}: {e}"));
            }
        } else if !map.is_replica(p, &me) {
            if let Err(e) = clean_partition(node, p, &mut report).await {
                report.errors.push(format!("partition {p}: {e}"));
            }
        }
    }
    report
}

/// The keys of partition `p` this node holds whose sets are tombstones only, with the
/// item hash of each set.
fn tombstoned(node: &Node, p: PartitionId) -> Result<Vec<(Bytes, u64)>, StorageError> {
    let mut out = Vec::new();
    for_each_in_partition(&**node.store.engine(), p, |dk, set| {
        if decode_set(set).is_ok_and(|s| s.is_deleted()) {
            out.push((Bytes::copy_from_slice(&dk[4..]), item_hash(dk, set)));
        }
    })?;
    Ok(out)
}

async fn purge_partition(
    node: &Arc<Node>,
    p: PartitionId,
    grace: Duration,
    now: Instant,
    candidates: &mut Candidates,
    report: &mut PurgeReport,
) -> Result<(), String> {
    let scan = node.clone();
    let found = crate::determinism::blocking(move || tombstoned(&scan, p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut ready = Vec::new();
    for (key, item) in found {
        let first = match candidates.seen.get(&key) {
            Some(&(seen_item, since)) if seen_item == item => since,
            _ => now,
        };
        candidates.seen.insert(key.clone(), (item, first));
        if now.saturating_duration_since(first) >= grace && ready.len() < MAX_PER_PARTITION {
            ready.push((key, item));
        } else {
            report.waiting += 1;
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    let map = node.map();
    let others: Vec<Member> = map
        .members
        .iter()
        .filter(|m| m.id != node.id())
        .cloned()
        .collect();
    // Every member vouches for a key, or it waits.
    let mut vouched = vec![true; ready.len()];
    for m in &others {
        let ok = ask(node, m, p, &ready, false)
            .await
            .map_err(|e| format!("{} did not vouch: {e}", m.id))?;
        for (v, ok) in vouched.iter_mut().zip(ok) {
            *v &= ok;
        }
    }
    // This node's own check: no hint held here for the key either.
    let targets: Vec<&str> = map.members.iter().map(|m| m.id.as_str()).collect();
    let mut keys = Vec::new();
    for ((key, item), ok) in ready.into_iter().zip(vouched) {
        let hinted = node
            .store
            .holds_hint(&key, targets.iter().copied())
            .map_err(|e| e.to_string())?;
        if ok && !hinted {
            keys.push((key, item));
        } else {
            report.waiting += 1;
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    // The owner's own tombstones must be durable too before anyone drops theirs.
    node.store.sync().await.map_err(|e| e.to_string())?;
    for m in &others {
        // A member that misses this keeps its tombstone; a later pass purges it.
        if let Err(e) = ask(node, m, p, &keys, true).await {
            report.errors.push(format!("{} did not purge: {e}", m.id));
        }
    }
    for (key, item) in keys {
        candidates.seen.remove(&key);
        let raw = node.store.read_raw(&key).map_err(|e| e.to_string())?;
        let dk = data_key(p, &key);
        if let Some(raw) = raw.filter(|r| item_hash(&dk, r) == item) {
            if node
                .store
                .forget_if(key, Some(raw))
                .await
                .map_err(|e| e.to_string())?
            {
                report.purged += 1;
            }
        }
    }
    Ok(())
}

async fn ask(
    node: &Node,
    m: &Member,
    p: PartitionId,
    keys: &[(Bytes, u64)],
    commit: bool,
) -> Result<Vec<bool>, PeerError> {
    let ok = node
        .transport
        .purge(m, p, keys.to_vec(), commit, CALL_TIMEOUT)
        .await?;
    if ok.len() != keys.len() {
        return Err(PeerError::Corrupt(format!(
            "{} answers for {} keys",
            ok.len(),
            keys.len()
        )));
    }
    Ok(ok)
}

/// Answers an owner's purge check (`commit` false) or purge (`commit` true) of `keys`
/// of partition `p` (see the module's documentation).
pub async fn answer(
    node: &Node,
    p: PartitionId,
    keys: Vec<(Bytes, u64)>,
    commit: bool,
) -> Result<Vec<bool>, StorageError> {
    let map = node.map();
    let replica = map.is_replica(p, node.id());
    let targets: Vec<&str> = map.members.iter().map(|m| m.id.as_str()).collect();
    let mut out = Vec::with_capacity(keys.len());
    for (key, item) in keys {
        if map.partition_of(&key) != p {
            out.push(false);
            continue;
        }
        let hinted = node.store.holds_hint(&key, targets.iter().copied())?;
        let raw = node.store.read_raw(&key)?;
        let same = raw
            .as_ref()
            .is_some_and(|r| item_hash(&data_key(p, &key), r) == item);
        let ok = match (commit, replica) {
            (false, true) => same && !hinted,
            (false, false) => raw.is_none() && !hinted,
            (true, _) if raw.is_none() => true,
            (true, true) if same && !hinted => node.store.forget_if(key, raw).await?,
            (true, _) => false,
        };
        out.push(ok);
    }
    if !commit && out.contains(&true) {
        // What this node vouches for must outlive a power cut: a tombstone received
        // since the last sync would otherwise be lost with the purge decided, and the
        // older version under it come back (as would a copy or a hint dropped unsynced).
        node.store.sync().await?;
    }
    Ok(out)
}

/// Drops this node's copies of keys of partition `p` (which it does not replicate) that
/// no hint here still needs and that every replica already covers.
async fn clean_partition(
    node: &Arc<Node>,
    p: PartitionId,
    report: &mut PurgeReport,
) -> Result<(), String> {
    let scan = node.clone();
    let held: Vec<(Bytes, Bytes)> = crate::determinism::blocking(move || {
        let mut out = Vec::new();
        for_each_in_partition(&**scan.store.engine(), p, |dk, set| {
            if out.len() < MAX_PER_PARTITION {
                out.push((
                    Bytes::copy_from_slice(&dk[4..]),
                    Bytes::copy_from_slice(set),
                ));
            }
        })
        .map(|_| out)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let map = node.map();
    let targets: Vec<String> = map.members.iter().map(|m| m.id.clone()).collect();
    let replicas: Vec<Member> = map.preference_list(p).cloned().collect();
    if replicas.iter().any(|m| !node.health.is_up(&m.id)) {
        return Ok(()); // every replica must answer; later
    }
    'keys: for (key, raw) in held {
        let hinted = node
            .store
            .holds_hint(&key, targets.iter().map(String::as_str))
            .map_err(|e| e.to_string())?;
        if hinted {
            continue;
        }
        let Ok(mine) = decode_set(&raw) else {
            continue;
        };
        for m in &replicas {
            let Ok(theirs) = node.transport.read(m, key.clone(), CALL_TIMEOUT).await else {
                continue 'keys;
            };
            let Ok(mut theirs) = decode_set(&theirs) else {
                continue 'keys;
            };
            if theirs.absorb(&mine) {
                // The replica lacks part of this copy: it stays until hints or
                // anti-entropy have brought it there.
                continue 'keys;
            }
        }
        if node
            .store
            .forget_if(key, Some(raw))
            .await
            .map_err(|e| e.to_string())?
        {
            report.cleaned += 1;
        }
    }
    Ok(())
}

/// How often a node with tombstone grace `grace` runs a pass: every half grace, between
/// 1 s and 10 minutes (so a tombstone goes 1-1.5 graces after its set stopped changing,
/// once every member vouches for it).
pub fn interval(grace: Duration) -> Duration {
    (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Runs a pass every `every` until aborted (by the node's stop), purging tombstones
/// `grace` after their sets stopped changing.
pub async fn run(node: Arc<Node>, grace: Duration, every: Duration) {
    let mut candidates = Candidates::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = pass(&node, grace, &mut candidates).await;
        node.metrics.record_purge(&r);
        if r.purged > 0 || r.cleaned > 0 || !r.errors.is_empty() {
            tracing::info!(
                purged = r.purged,
                cleaned = r.cleaned,
                waiting = r.waiting,
                errors = ?r.errors,
                "tombstone purge pass"
            );
        }
    }
}
