//! Merkle anti-entropy: replicas of a partition compare their trees and join the keys on
//! which they differ, so a replica that missed writes (or lost its disk) converges
//! without anyone reading those keys.
//!
//! Every node keeps one tree per partition ([`crate::store::Trees`], see
//! [`dynamo_core::merkle`]). In a *sweep*, a node compares each partition it replicates
//! with other replicas of it ([`exchange`]): one message carries the roots of every
//! partition it shares with a peer, so identical replicas cost one root each; for a
//! partition whose roots differ it descends only into differing subtrees, level by
//! level, then lists the keys of the differing leaves on both sides, pulls the peer's
//! sets of the keys it lacks or holds differently and joins them, and pushes its joined
//! sets back. Both replicas then hold the join. The bytes exchanged grow with the
//! difference, not with the data.
//!
//! In the background each node sweeps every `anti_entropy_interval_ms`, comparing each
//! partition with the next replica after it in the preference list that is believed up
//! (so over a round every pair of a partition's replicas is linked); on demand (the
//! admin `Repair` call, `dynamoctl repair`) it compares with every other replica, and
//! reports what it compared and fixed. Peers answer tree queries in [`answer`].
//! Tombstones are purged once every replica is proven to hold them ([`purge`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::{Member, PartitionId};

use crate::node::Node;

pub mod answer;
pub mod exchange;
pub mod purge;

/// A question about a peer's trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeQuery {
    /// The root of each partition's tree.
    Roots(Vec<PartitionId>),
    /// The 16 child hashes of each of `nodes` of `level` of `partition`'s tree.
    Children {
        partition: PartitionId,
        level: u32,
        nodes: Vec<u32>,
    },
    /// The keys (with item hashes) stored in `leaves` of `partition`'s tree.
    LeafKeys {
        partition: PartitionId,
        leaves: Vec<u32>,
    },
}

/// A peer's answer to a [`TreeQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeAnswer {
    Hashes(Vec<u64>),
    Keys(Vec<(Bytes, u64)>),
}

impl TreeAnswer {
    /// Approximate bytes on the wire.
    pub fn wire_bytes(&self) -> u64 {
        match self {
            TreeAnswer::Hashes(h) => 8 * h.len() as u64,
            TreeAnswer::Keys(k) => k.iter().map(|(k, _)| k.len() as u64 + 10).sum(),
        }
    }
}

/// What a sweep (or part of one) compared and fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// (partition, peer) pairs whose roots were compared.
    pub compared: u64,
    /// Of those, the ones whose roots differed.
    pub differing: u64,
    /// Leaves that differed, over all pairs.
    pub leaves: u64,
    /// Keys whose peer's set was fetched and joined here.
    pub pulled: u64,
    /// Partitions fetched whole, in transfer chunks, because most of the differing
    /// leaves' keys differed (a wiped or new replica).
    pub streamed: u64,
    /// Keys whose set was sent to the peer to join.
    pub pushed: u64,
    /// Approximate bytes sent and received (hashes, keys and sets).
    pub bytes: u64,
    /// Peers that could not be compared with, and why.
    pub errors: Vec<String>,
}

impl Report {
    pub fn add(&mut self, other: Report) {
        self.compared += other.compared;
        self.differing += other.differing;
        self.leaves += other.leaves;
        self.pulled += other.pulled;
        self.streamed += other.streamed;
        self.pushed += other.pushed;
        self.bytes += other.bytes;
        self.errors.extend(other.errors);
    }
}

/// Which peers a sweep compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// The next replica after this node in each partition's preference list that is
    /// believed up.
    Next,
    /// Every other replica.
    All,
}

/// The partitions this node replicates (or just `only`, if it does), grouped by the
/// peers to compare them with.
pub fn plan(
    node: &Node,
    only: Option<PartitionId>,
    peers: Peers,
) -> BTreeMap<String, (Member, Vec<PartitionId>)> {
    let mut by_peer: BTreeMap<String, (Member, Vec<PartitionId>)> = BTreeMap::new();
    let map = node.map();
    let partitions = match only {
        Some(p) if p < map.partitions => p..p + 1,
        Some(_) => 0..0,
        None => 0..map.partitions,
    };
    for p in partitions {
        let pref: Vec<&Member> = map.preference_list(p).collect();
        let Some(me) = pref.iter().position(|m| m.id == node.id()) else {
            continue;
        };
        let others = (1..pref.len()).map(|i| pref[(me + i) % pref.len()]);
        let chosen: Vec<&Member> = match peers {
            Peers::All => others.collect(),
            Peers::Next => others
                .filter(|m| node.health.is_up(&m.id))
                .take(1)
                .collect(),
        };
        for m in chosen {
            by_peer
                .entry(m.id.clone())
                .or_insert_with(|| (m.clone(), Vec::new()))
                .1
                .push(p);
        }
    }
    by_peer
}

/// Compares this node's partitions (or only `only`) with `peers`, joining what differs.
pub async fn sweep(node: &Arc<Node>, only: Option<PartitionId>, peers: Peers) -> Report {
    let mut report = Report::default();
    for (_, (peer, partitions)) in plan(node, only, peers) {
        report.add(exchange::with_peer(node, &peer, &partitions).await);
    }
    node.metrics.record_anti_entropy(&report);
    *node.anti_entropy.lock() = Some(LastSweep {
        at_ms: node.clock.now_ms(),
        report: report.clone(),
    });
    report
}

/// The outcome of this node's last sweep, for its status.
#[derive(Clone, Debug)]
pub struct LastSweep {
    pub at_ms: u64,
    pub report: Report,
}

/// Sweeps every `every` until aborted (by the node's stop).
pub async fn run(node: Arc<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: let the node settle first
    loop {
        tick.tick().await;
        let report = sweep(&node, None, Peers::Next).await;
        if report.differing > 0 || !report.errors.is_empty() {
            tracing::info!(
                compared = report.compared,
                differing = report.differing,
                pulled = report.pulled,
                pushed = report.pushed,
                bytes = report.bytes,
                errors = ?report.errors,
                "anti-entropy sweep"
            );
        }
    }
}
