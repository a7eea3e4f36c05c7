//! One node's comparison of its partitions with one peer's copies of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::merkle::{Tree, FANOUT};
use dynamo_core::{Member, PartitionId};
use futures::stream::{self, StreamExt};

use dynamo_core::codec::decode_set;
use dynamo_proto::v1::FetchRequest;

use super::answer::MAX_QUERY_ITEMS;
use super::{Report, TreeAnswer, TreeQuery};
use crate::change::transfer::CHUNK_BYTES;
use crate::network::{PeerError, WriteEntry};
use crate::node::Node;
use crate::store::Change;

/// How long one tree query or transfer batch may take (a leaf-keys query scans a
/// partition on the peer).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys read from the peer at once.
const PULLS_IN_FLIGHT: usize = 32;
/// Sets sent to the peer per write.
const PUSH_BATCH: usize = 128;
/// A pull of at least this many keys, most of the keys of the differing leaves, streams
/// the whole partition instead ([`stream_partition`]).
const STREAM_AT_LEAST: usize = 64;

/// Which sides of an exchange take the differences.
#[derive(Clone, Copy, Debug)]
struct Sides {
    /// Whether this node fetches and joins what the peer holds differently.
    pull: bool,
    /// Whether the peer syncs what it is sent before it answers.
    sync_pushes: bool,
}

/// Compares this node's copies of `partitions` with `peer`'s and joins what differs, on
/// both sides.
pub async fn with_peer(node: &Arc<Node>, peer: &Member, partitions: &[PartitionId]) -> Report {
    let both = Sides {
        pull: true,
        sync_pushes: false,
    };
    compare(node, peer, partitions, both).await
}

/// Sends `peer` whatever this node holds of `partitions` that the peer's copies lack,
/// synced there before it answers, and takes nothing back: what a node that no longer
/// replicates the partitions does before it drops its copies (see
/// [`crate::change::cleanup`]).
pub async fn hand_off(node: &Arc<Node>, peer: &Member, partitions: &[PartitionId]) -> Report {
    let push = Sides {
        pull: false,
        sync_pushes: true,
    };
    compare(node, peer, partitions, push).await
}

async fn compare(
    node: &Arc<Node>,
    peer: &Member,
    partitions: &[PartitionId],
    sides: Sides,
) -> Report {
    let mut report = Report::default();
    let mut roots = Vec::with_capacity(partitions.len());
    for chunk in partitions.chunks(MAX_QUERY_ITEMS) {
        match hashes(node, peer, TreeQuery::Roots(chunk.to_vec()), &mut report).await {
            Ok(h) if h.len() == chunk.len() => roots.extend(h),
            Ok(h) => {
                report.errors.push(format!(
                    "{}: {} roots for {} partitions",
                    peer.id,
                    h.len(),
                    chunk.len()
                ));
                return report;
            }
            Err(e) => {
                report.errors.push(format!("{}: {e}", peer.id));
                return report;
            }
        }
    }
    report.compared += partitions.len() as u64;
    for (&p, theirs) in partitions.iter().zip(roots) {
        let Some(mine) = node.store.trees().tree(p) else {
            continue;
        };
        if mine.root() == theirs {
            continue;
        }
        report.differing += 1;
        if let Err(e) = partition(node, peer, p, &mine, sides, &mut report).await {
            report
                .errors
                .push(format!("{}: partition {p}: {e}", peer.id));
        }
    }
    report
}

/// Asks `peer` a query answered with hashes, counting the bytes.
async fn hashes(
    node: &Node,
    peer: &Member,
    query: TreeQuery,
    report: &mut Report,
) -> Result<Vec<u64>, PeerError> {
    report.bytes += query_bytes(&query);
    match node.transport.tree(peer, query, CALL_TIMEOUT).await? {
        TreeAnswer::Hashes(h) => {
            report.bytes += 8 * h.len() as u64;
            Ok(h)
        }
        TreeAnswer::Keys(_) => Err(PeerError::Corrupt("keys where hashes were asked".into())),
    }
}

fn query_bytes(q: &TreeQuery) -> u64 {
    let n = match q {
        TreeQuery::Roots(p) => p.len(),
        TreeQuery::Children { nodes, .. } => nodes.len(),
        TreeQuery::LeafKeys { leaves, .. } => leaves.len(),
    };
    16 + 4 * n as u64
}

/// Descends the differing subtrees of partition `p` (this node's tree `mine` against the
/// peer's), then joins the keys of the differing leaves.
async fn partition(
    node: &Arc<Node>,
    peer: &Member,
    p: PartitionId,
    mine: &Tree,
    sides: Sides,
    report: &mut Report,
) -> Result<(), PeerError> {
    let mut frontier: Vec<u32> = vec![0];
    for level in 0..mine.depth() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(MAX_QUERY_ITEMS) {
            let query = TreeQuery::Children {
                partition: p,
                level,
                nodes: chunk.to_vec(),
            };
            let theirs = hashes(node, peer, query, report).await?;
            if theirs.len() != chunk.len() * FANOUT {
                return Err(PeerError::Corrupt(format!(
                    "{} hashes for {} nodes",
                    theirs.len(),
                    chunk.len()
                )));
            }
            for (&i, theirs) in chunk.iter().zip(theirs.chunks(FANOUT)) {
                next.extend(
                    mine.differing_children(level, i as usize, theirs)
                        .into_iter()
                        .map(|c| c as u32),
                );
            }
        }
        frontier = next;
        if frontier.is_empty() {
            // Roots differed, yet no child does: a write landed meanwhile.
            return Ok(());
        }
    }
    report.leaves += frontier.len() as u64;

    let mut theirs: BTreeMap<Bytes, u64> = BTreeMap::new();
    for chunk in frontier.chunks(MAX_QUERY_ITEMS) {
        let query = TreeQuery::LeafKeys {
            partition: p,
            leaves: chunk.to_vec(),
        };
        report.bytes += query_bytes(&query);
        let answer = node.transport.tree(peer, query, CALL_TIMEOUT).await?;
        report.bytes += answer.wire_bytes();
        match answer {
            TreeAnswer::Keys(keys) => theirs.extend(keys),
            TreeAnswer::Hashes(_) => {
                return Err(PeerError::Corrupt("hashes where keys were asked".into()))
            }
        }
    }
    let leaves: BTreeSet<usize> = frontier.iter().map(|&l| l as usize).collect();
    let store_node = node.clone();
    let mine_items: BTreeMap<Bytes, u64> =
        crate::determinism::blocking(move || store_node.store.leaf_items(p, &leaves))
            .await
            .map_err(|e| PeerError::Corrupt(format!("leaf scan panicked: {e}")))?
            .map_err(|e| PeerError::Status(tonic::Status::internal(e.to_string())))?
            .into_iter()
            .collect();

    // Keys the peer holds differently (or only it holds): fetch and join here. Keys this
    // node holds differently (or only it holds): send, after the join, so the peer gets
    // both sides at once.
    let pull: Vec<Bytes> = theirs
        .iter()
        .filter(|_| sides.pull)
        .filter(|(k, item)| mine_items.get(*k) != Some(item))
        .map(|(k, _)| k.clone())
        .collect();
    let push: Vec<Bytes> = mine_items
        .iter()
        .filter(|(k, item)| theirs.get(*k) != Some(item))
        .map(|(k, _)| k.clone())
        .collect();

    // A large difference (a wiped or new replica) is streamed as a whole partition, in
    // the chunks of a transfer, rather than read a key at a time: one call per chunk
    // instead of one per key, on a peer that is serving clients too.
    let pull = if pull.len() >= STREAM_AT_LEAST && 2 * pull.len() > theirs.len() {
        report.pulled += stream_partition(node, peer, p, report).await?;
        report.streamed += 1;
        Vec::new()
    } else {
        pull
    };
    let fetched: Vec<Result<(Bytes, Bytes), PeerError>> = stream::iter(pull)
        .map(|key| async move {
            // Charged before the read, at the key's size; the set is charged after.
            node.budget.acquire(key.len() as u64).await;
            let set = node.transport.read(peer, key.clone(), CALL_TIMEOUT).await?;
            Ok((key, set))
        })
        .buffer_unordered(PULLS_IN_FLIGHT)
        .collect()
        .await;
    let mut entries = Vec::new();
    for f in fetched {
        let (key, set) = f?;
        report.bytes += (key.len() + set.len()) as u64;
        node.budget.acquire(set.len() as u64).await;
        if !set.is_empty() {
            entries.push(WriteEntry {
                key,
                set,
                hint_for: None,
                sync: false,
            });
        }
    }
    report.pulled += entries.len() as u64;
    if !entries.is_empty() {
        node.accept(entries)
            .await
            .map_err(|e| PeerError::Corrupt(format!("joining the peer's sets: {e}")))?;
    }

    for chunk in push.chunks(PUSH_BATCH) {
        let mut entries = Vec::with_capacity(chunk.len());
        for key in chunk {
            let set = node
                .store
                .read_raw(key)
                .map_err(|e| PeerError::Status(tonic::Status::internal(e.to_string())))?;
            if let Some(set) = set {
                report.bytes += (key.len() + set.len()) as u64;
                entries.push(WriteEntry {
                    key: key.clone(),
                    set,
                    hint_for: None,
                    sync: sides.sync_pushes,
                });
            }
        }
        report.pushed += entries.len() as u64;
        let bytes = entries.iter().map(|e| (e.key.len() + e.set.len()) as u64);
        node.budget.acquire(bytes.sum()).await;
        node.transport.write(peer, entries, CALL_TIMEOUT).await?;
    }
    Ok(())
}

/// Fetches all of `peer`'s copy of partition `p` in transfer chunks and joins it here;
/// returns how many keys came. Each chunk is charged to this node's background budget
/// (the peer charges its own as it serves them).
async fn stream_partition(
    node: &Arc<Node>,
    peer: &Member,
    p: PartitionId,
    report: &mut Report,
) -> Result<u64, PeerError> {
    let mut after: Option<Vec<u8>> = None;
    let mut keys = 0u64;
    loop {
        let req = FetchRequest {
            cluster_id: node.cfg.cluster_id.clone(),
            partition: p,
            after: after.clone().unwrap_or_default(),
            started: after.is_some(),
            max_bytes: CHUNK_BYTES,
        };
        let resp = node.transport.fetch(peer, req, CALL_TIMEOUT).await?;
        let mut changes = Vec::with_capacity(resp.entries.len());
        let mut bytes = 0u64;
        for e in resp.entries {
            let set = decode_set(&e.set).map_err(|err| {
                PeerError::Corrupt(format!("{} sent a corrupt set: {err}", peer.id))
            })?;
            bytes += (e.key.len() + e.set.len()) as u64;
            after = Some(e.key.to_vec());
            changes.push(Change::Join { key: e.key, set });
        }
        report.bytes += bytes;
        keys += changes.len() as u64;
        node.budget.acquire(bytes).await;
        node.store
            .apply_paced(changes)
            .await
            .map_err(|e| PeerError::Corrupt(format!("joining the peer's sets: {e}")))?;
        if resp.done || after.is_none() {
            return Ok(keys);
        }
    }
}
