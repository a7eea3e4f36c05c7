//! An in-memory model of the nodes' admin side, for tests and for driving the
//! orchestration core without real nodes.
//!
//! It tracks which node holds which partition replica, so tests can check the property
//! that matters: no partition ever has fewer than N copies on existing volumes. A commit
//! records the moves the new map needs; [`MemoryAdmin::tick`] moves a few replicas (from
//! any up node that holds the partition); `finalize` refuses until every move is done,
//! like a node that has not synced; finalize and abort drop the replicas a node no longer
//! needs, as the real range delete does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dynamo_core::ring::{NodeId, PartitionMap};
use parking_lot::Mutex;

use super::{AdminError, ClusterAdmin, MapState, MoveProgress};

#[derive(Default, Debug, Clone)]
struct State {
    /// Counted up by every commit, finalize and abort, as the nodes' map state version is.
    version: u64,
    current: Option<PartitionMap>,
    pending: Option<PartitionMap>,
    /// Moves the pending map needed when it was committed.
    moves_total: u32,
    /// Partition replicas each node holds on its volume.
    held: BTreeMap<NodeId, BTreeSet<u32>>,
    /// Nodes that are up.
    up: BTreeSet<NodeId>,
    /// Undelivered hints each node holds for others.
    hints: BTreeMap<NodeId, u32>,
    /// Every admin call that changed state, for assertions.
    log: Vec<String>,
}

/// The in-memory admin model. Cloning shares the state.
#[derive(Clone, Default, Debug)]
pub struct MemoryAdmin {
    state: Arc<Mutex<State>>,
}

fn replica_set(map: &PartitionMap, node: &str) -> BTreeSet<u32> {
    map.replicated_by(node).collect()
}

impl State {
    /// Replicas the pending map places where they are not held yet.
    fn missing(&self) -> Vec<(u32, NodeId)> {
        let Some(pending) = &self.pending else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in 0..pending.partitions {
            for m in pending.preference_list(p) {
                if !self.held.get(&m.id).is_some_and(|h| h.contains(&p)) {
                    out.push((p, m.id.clone()));
                }
            }
        }
        out
    }

    /// Drops, on every node, the replicas no live map version gives it.
    fn drop_unneeded(&mut self) {
        let maps: Vec<PartitionMap> = self.current.iter().chain(&self.pending).cloned().collect();
        for (node, held) in self.held.iter_mut() {
            let keep: BTreeSet<u32> = maps.iter().flat_map(|m| replica_set(m, node)).collect();
            held.retain(|p| keep.contains(p));
        }
    }
}

impl MemoryAdmin {
    /// An empty cluster with no map.
    pub fn new() -> Self {
        Self::default()
    }

    /// A deep copy with its own state.
    pub fn fork(&self) -> Self {
        Self {
            state: Arc::new(Mutex::new(self.state.lock().clone())),
        }
    }

    /// Sets which nodes are up (in a test world: the ready pods).
    pub fn set_up(&self, nodes: impl IntoIterator<Item = NodeId>) {
        self.state.lock().up = nodes.into_iter().collect();
    }

    /// Gives `node` `count` undelivered hints (writes it took for an unreachable peer).
    pub fn add_hints(&self, node: &str, count: u32) {
        *self.state.lock().hints.entry(node.to_string()).or_default() += count;
    }

    /// The node's volume was deleted: everything it held is gone.
    pub fn wipe(&self, node: &str) {
        let mut s = self.state.lock();
        s.held.remove(node);
        s.hints.remove(node);
        s.log.push(format!("wipe {node}"));
    }

    /// Moves up to `budget` missing replicas from up holders, and delivers one hint per
    /// up node. Returns how many replicas moved.
    pub fn tick(&self, budget: usize) -> usize {
        let mut s = self.state.lock();
        for (node, h) in s.hints.clone() {
            if h > 0 && s.up.contains(&node) {
                s.hints.insert(node, h - 1);
            }
        }
        let mut moved = 0;
        for (p, to) in s.missing() {
            if moved == budget {
                break;
            }
            let source_up = s
                .held
                .iter()
                .any(|(n, h)| n != &to && h.contains(&p) && s.up.contains(n));
            if source_up && s.up.contains(&to) {
                s.held.entry(to).or_default().insert(p);
                moved += 1;
            }
        }
        moved
    }

    /// Nodes holding partition `p`.
    pub fn holders(&self, p: u32) -> BTreeSet<NodeId> {
        let s = self.state.lock();
        s.held
            .iter()
            .filter(|(_, h)| h.contains(&p))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The smallest number of copies any partition has (0 when there is no map).
    pub fn min_copies(&self) -> usize {
        let q = match &self.state.lock().current {
            Some(m) => m.partitions,
            None => return 0,
        };
        (0..q).map(|p| self.holders(p).len()).min().unwrap_or(0)
    }

    /// Whether `node` holds nothing the nodes of the newest live map lack (and no hints).
    pub fn is_drained(&self, node: &str) -> bool {
        let s = self.state.lock();
        let Some(target) = s.pending.as_ref().or(s.current.as_ref()) else {
            return true;
        };
        if s.hints.get(node).copied().unwrap_or(0) > 0 {
            return false;
        }
        let held = s.held.get(node).cloned().unwrap_or_default();
        held.iter().all(|&p| {
            target
                .preference_list(p)
                .filter(|m| m.id != node)
                .all(|m| s.held.get(&m.id).is_some_and(|h| h.contains(&p)))
        })
    }

    /// Whether `node` is a member of a live map version.
    pub fn in_live_map(&self, node: &str) -> bool {
        let s = self.state.lock();
        s.current
            .iter()
            .chain(&s.pending)
            .any(|m| m.member(node).is_some())
    }

    /// The admin calls that changed state, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().log.clone()
    }

    /// The live maps, synchronously.
    pub fn snapshot(&self) -> MapState {
        let s = self.state.lock();
        MapState {
            version: s.version,
            current: s.current.clone(),
            pending: s.pending.clone(),
        }
    }
}

impl ClusterAdmin for MemoryAdmin {
    async fn members(&self) -> Result<BTreeSet<NodeId>, AdminError> {
        Ok(self.state.lock().up.clone())
    }

    async fn maps(&self) -> Result<MapState, AdminError> {
        Ok(self.snapshot())
    }

    async fn commit(&self, map: &PartitionMap) -> Result<(), AdminError> {
        let mut s = self.state.lock();
        if let Some(p) = &s.pending {
            return if p == map {
                Ok(())
            } else {
                Err(AdminError::EpochConflict(format!(
                    "epoch {} is already pending",
                    p.epoch
                )))
            };
        }
        let expected = s.current.as_ref().map_or(1, |c| c.epoch + 1);
        if map.epoch != expected {
            return Err(AdminError::EpochConflict(format!(
                "commit of epoch {}, expected {expected}",
                map.epoch
            )));
        }
        if s.current.is_none() {
            // A new cluster holds no data: every replica of the first map is trivially in place.
            for m in &map.members {
                s.held.insert(m.id.clone(), replica_set(map, &m.id));
            }
        }
        s.pending = Some(map.clone());
        s.version += 1;
        s.moves_total = s.missing().len() as u32;
        s.log.push(format!("commit {}", map.epoch));
        Ok(())
    }

    async fn progress(&self, epoch: u64) -> Result<MoveProgress, AdminError> {
        let s = self.state.lock();
        let Some(pending) = s.pending.as_ref().filter(|p| p.epoch == epoch) else {
            return Err(AdminError::EpochConflict(format!(
                "epoch {epoch} is not pending"
            )));
        };
        let missing = s.missing();
        let synced = pending
            .members
            .iter()
            .filter(|m| s.up.contains(&m.id) && !missing.iter().any(|(_, n)| n == &m.id))
            .map(|m| m.id.clone())
            .collect();
        let pending_moves = missing.len() as u32;
        Ok(MoveProgress {
            pending: pending_moves,
            done: s.moves_total.saturating_sub(pending_moves),
            synced,
        })
    }

    async fn drained(&self, node: &str) -> Result<bool, AdminError> {
        Ok(self.is_drained(node))
    }

    async fn finalize(&self, epoch: u64) -> Result<(), AdminError> {
        let mut s = self.state.lock();
        match &s.pending {
            Some(p) if p.epoch == epoch => {
                if !s.missing().is_empty() {
                    return Err(AdminError::EpochConflict(format!(
                        "epoch {epoch} is not synced yet"
                    )));
                }
                s.current = s.pending.take();
                s.version += 1;
                s.drop_unneeded();
                s.log.push(format!("finalize {epoch}"));
                Ok(())
            }
            _ if s.current.as_ref().is_some_and(|c| c.epoch == epoch) => Ok(()),
            _ => Err(AdminError::EpochConflict(format!(
                "epoch {epoch} is not pending"
            ))),
        }
    }

    async fn abort(&self, epoch: u64) -> Result<(), AdminError> {
        let mut s = self.state.lock();
        // As on the nodes, the first map cannot be aborted: it is the only one.
        if s.current.is_some() && s.pending.as_ref().is_some_and(|p| p.epoch == epoch) {
            s.pending = None;
            s.version += 1;
            s.drop_unneeded();
            s.log.push(format!("abort {epoch}"));
        }
        Ok(())
    }
}
