//! Hinted handoff.
//!
//! Hints live in their own column family and survive restarts. [`run`] loops forever:
//! it hands every hint to its intended node once the failure detector believes that node
//! alive (see [`crate::health`]), deleting a hint only after the node acknowledged it (and
//! only if no newer hinted write joined it meanwhile). Delivered hints ask the target to
//! sync its WAL before acknowledging, whatever its fsync policy, so that a power loss of
//! the target right after delivery cannot lose a version that then lives nowhere else. It
//! wakes early when a peer is believed alive again or a hint is stored, and it refreshes
//! the hint and storage metrics.

use std::sync::Arc;
use std::time::Duration;

use crate::network::WriteEntry;
use crate::node::Node;

/// How often handoff runs without being woken.
const PERIOD: Duration = Duration::from_millis(500);
/// Hints sent to one node in one request.
const BATCH: usize = 128;

/// Runs hinted handoff until the process stops.
pub async fn run(node: Arc<Node>) {
    loop {
        tokio::select! {
            biased;
            _ = node.handoff_wakeup.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
        }
        round(&node).await;
    }
}

/// One round of hint delivery.
pub async fn round(node: &Node) {
    if let Err(e) = deliver(node).await {
        tracing::warn!(error = %e, "hinted handoff round failed");
    }
}

/// One round: refresh metrics, then deliver hints to every reachable target.
async fn deliver(node: &Node) -> Result<(), crate::storage::StorageError> {
    let summary = node.store.hint_summary()?;
    let now = node.clock.now_ms();
    node.metrics
        .hints_pending
        .set(summary.iter().map(|(_, n, _)| *n as i64).sum());
    let oldest = summary
        .iter()
        .map(|(_, _, c)| *c)
        .min()
        .map_or(0, |c| now.saturating_sub(c));
    node.metrics
        .hint_oldest_age_seconds
        .set((oldest / 1000) as i64);
    node.metrics.background_rate.set(node.budget.rate() as i64);
    node.metrics
        .storage_bytes
        .set(node.store.engine().size_bytes() as i64);
    node.metrics
        .compaction_debt_bytes
        .set(node.store.engine().compaction_debt_bytes() as i64);

    for (target, _, _) in summary {
        if target == node.id() {
            // A hint for ourselves (we were someone's fallback for our own key): keep it
            // as data.
            for h in node.store.hints_for(&target, BATCH)? {
                node.store.join(h.key.clone(), h.set.clone()).await?;
                node.store.clear_hint(&h).await?;
            }
            continue;
        }
        let Some(member) = node.member(&target) else {
            // The node left the cluster: its hints go to the keys' current replicas.
            retarget(node, &target).await?;
            continue;
        };
        loop {
            let all = node.store.hints_for(&target, BATCH)?;
            let fetched = all.len();
            // A hint for a key whose partition the newest map moves away from the target
            // (made by a coordinator that did not know of the change yet) goes to the
            // key's replicas under that map instead, which the partition is moving to.
            let newest = node.live().state.newest().cloned();
            let (hints, elsewhere): (Vec<_>, Vec<_>) = all.into_iter().partition(|h| {
                newest
                    .as_ref()
                    .is_none_or(|m| m.is_replica(m.partition_of(&h.key), &target))
            });
            let mut cleared = 0;
            if let Some(map) = &newest {
                for h in &elsewhere {
                    cleared += usize::from(retarget_hint(node, h, map).await?);
                }
            }
            if hints.is_empty() || !node.health.is_up(&target) {
                if fetched < BATCH || cleared == 0 {
                    break;
                }
                continue;
            }
            let entries: Vec<WriteEntry> = hints.iter().map(hint_entry).collect();
            let bytes = entries.iter().map(|e| (e.key.len() + e.set.len()) as u64);
            node.budget.acquire(bytes.sum()).await;
            match node.transport.write(&member, entries, node.timeout()).await {
                Ok(()) => {
                    for h in &hints {
                        node.store.clear_hint(h).await?;
                    }
                    node.metrics.hints_delivered.inc_by(hints.len() as u64);
                    tracing::debug!(peer = %target, count = hints.len(), "hints delivered");
                }
                Err(e) => {
                    // Tried again next round, or when the detector sees it come back.
                    tracing::debug!(peer = %target, error = %e, "hint delivery failed");
                    break;
                }
            }
            if fetched < BATCH {
                break;
            }
        }
    }
    Ok(())
}

/// A hint as a write to its target: synced there before the target answers, since the
/// hint is deleted on that answer.
fn hint_entry(h: &crate::store::Hint) -> WriteEntry {
    let entry = WriteEntry::new(h.key.clone(), &h.set, None);
    // The planted bug (simulation only): acknowledged before it is synced.
    match crate::determinism::sabotaged(crate::determinism::Sabotage::UnsyncedHint) {
        true => entry,
        false => entry.synced(),
    }
}

/// Hands the hints held for `target`, a node no live map has any more, to the replicas
/// of each key under the map in force (every replica that is up; a hint is dropped once
/// all of them acknowledged it).
async fn retarget(node: &Node, target: &str) -> Result<(), crate::storage::StorageError> {
    let Some(map) = node.try_map() else {
        return Ok(());
    };
    for h in node.store.hints_for(target, BATCH)? {
        retarget_hint(node, &h, &map).await?;
    }
    Ok(())
}

/// Hands one hint to the replicas of its key under `map` (every replica that is up);
/// clears it once all of them acknowledged it, and says whether it did.
async fn retarget_hint(
    node: &Node,
    h: &crate::store::Hint,
    map: &dynamo_core::PartitionMap,
) -> Result<bool, crate::storage::StorageError> {
    let p = map.partition_of(&h.key);
    let mut delivered = true;
    for m in map.preference_list(p) {
        if m.id == node.id() {
            node.store.join(h.key.clone(), h.set.clone()).await?;
            continue;
        }
        if !node.health.is_up(&m.id) {
            delivered = false;
            continue;
        }
        let entry = hint_entry(h);
        if let Err(e) = node.transport.write(m, vec![entry], node.timeout()).await {
            tracing::debug!(peer = %m.id, error = %e, "re-targeted hint not delivered");
            delivered = false;
        }
    }
    if delivered {
        node.store.clear_hint(h).await?;
        node.metrics.hints_delivered.inc();
    }
    Ok(delivered)
}
