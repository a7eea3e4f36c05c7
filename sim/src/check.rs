//! The checker: what the clients saw against a final dump of every replica, once every
//! fault has healed and the cluster has had time to converge.
//!
//! - no acknowledged element is lost, and no element appears that no client tried;
//! - no element a delete removed for good is in the final state (a read between may
//!   still return it: a sloppy quorum promises no read-your-writes);
//! - one dot carries the same bytes wherever it is and whenever a read returned it (a
//!   reused dot loses a version silently on every join, and the final state may hold
//!   only the survivor);
//! - every replica of a key holds the same siblings, and the replicas of a partition the
//!   same Merkle root;
//! - no hint is left.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_client::set_workload::elements_of;

use crate::cluster::{Cluster, Q};

/// A replica's siblings of one key: each dot with its value (`None`: a tombstone).
type Siblings = Vec<(String, Option<bytes::Bytes>)>;
use crate::workload::History;

/// Every violation found, each a sentence naming what broke. Elements in `excused` need
/// not be found (acknowledged ones) or may be found (buried ones): a power loss of every
/// node may legitimately have taken back the writes or deletes of theirs that nodes
/// syncing periodically had not synced.
pub fn check(cluster: &Cluster, history: &History, excused: &BTreeSet<String>) -> Vec<String> {
    let mut violations = Vec::new();
    let nodes: Vec<_> = cluster.running().map(|p| p.node.clone()).collect();
    let members = cluster.machines.iter().filter(|m| !m.retired).count();
    if nodes.len() != members {
        violations.push(format!("{} of {members} nodes run at the end", nodes.len()));
        return violations;
    }
    // Every node holds the same state, with no change left pending, and only the
    // partitions it replicates.
    let states: BTreeSet<u64> = nodes.iter().map(|n| n.live().state.version).collect();
    if states.len() > 1 {
        violations.push(format!(
            "nodes disagree on the map state: versions {states:?}"
        ));
    }
    for node in &nodes {
        let state = node.live().state.clone();
        if let Some(p) = &state.pending {
            violations.push(format!(
                "{}: change to epoch {} still pending",
                node.id(),
                p.epoch
            ));
        }
        let map = node.map();
        for p in 0..Q {
            if !map.is_replica(p, node.id()) && node.store.trees().root(p) != Some(0) {
                violations.push(format!(
                    "{}: still holds partition {p}, which it does not replicate",
                    node.id()
                ));
            }
        }
    }
    violations.extend(history.dot_clashes.iter().cloned());
    let keys: BTreeSet<&String> = history.tried.keys().collect();
    let none = BTreeSet::new();
    for key in keys {
        // Dots are per key: the same dot in two keys is two writes.
        let mut dots: BTreeMap<String, (String, Option<bytes::Bytes>)> = BTreeMap::new();
        let mut held = BTreeSet::new();
        let mut by_replica: Vec<(String, Siblings)> = Vec::new();
        for node in &nodes {
            let set = match node.store.read(key.as_bytes()) {
                Ok(set) => set,
                Err(e) => {
                    violations.push(format!("{}: reading {key}: {e}", node.id()));
                    continue;
                }
            };
            let mut siblings = Vec::new();
            let seen = history.seen_dots.get(key);
            for s in set.siblings() {
                let dot = s.dot.to_string();
                let bytes = s.value.as_deref().unwrap_or_default();
                let hash = crate::workload::bytes_hash(s.value.is_none(), bytes);
                if let Some((_, at)) = seen
                    .and_then(|seen| seen.get(&dot))
                    .filter(|(h, _)| *h != hash)
                {
                    violations.push(format!(
                        "{key}: dot {dot} carries other bytes on {} than a read returned at {at} ms",
                        node.id()
                    ));
                }
                match dots.get(&dot) {
                    Some((first, v)) if v != &s.value => violations.push(format!(
                        "{key}: dot {dot} carries different bytes on {first} and {}",
                        node.id()
                    )),
                    Some(_) => {}
                    None => {
                        dots.insert(dot.clone(), (node.id().to_owned(), s.value.clone()));
                    }
                }
                if let Some(v) = &s.value {
                    held.extend(elements_of([v]));
                }
                siblings.push((dot, s.value.clone()));
            }
            siblings.sort();
            let map = node.map();
            if map.is_replica(map.partition_of(key.as_bytes()), node.id()) {
                by_replica.push((node.id().to_owned(), siblings));
            }
        }
        let acked = history.acked.get(key).unwrap_or(&none);
        let buried = history.buried.get(key).unwrap_or(&none);
        let tried = history.tried.get(key).unwrap_or(&none);
        let lost: Vec<&String> = acked
            .difference(&held)
            .filter(|e| !excused.contains(*e))
            .collect();
        if !lost.is_empty() {
            let when: Vec<String> = lost[..lost.len().min(5)]
                .iter()
                .map(|e| match history.acked_at.get(*e) {
                    Some(t) => format!("{e} at {t} ms"),
                    None => format!("{e} at ?"),
                })
                .collect();
            violations.push(format!(
                "{key}: {} acknowledged elements lost, e.g. {when:?}",
                lost.len()
            ));
        }
        let mut flag = |what: &str, found: Vec<&String>| {
            if !found.is_empty() {
                let some = &found[..found.len().min(5)];
                violations.push(format!("{key}: {} {what}, e.g. {some:?}", found.len()));
            }
        };
        let back = buried.intersection(&held).filter(|e| !excused.contains(*e));
        flag("deleted elements came back", back.collect());
        flag("elements no client tried", held.difference(tried).collect());
        if let Some((first, siblings)) = by_replica.first() {
            for (other, theirs) in &by_replica[1..] {
                if theirs != siblings {
                    violations.push(format!(
                        "{key}: replicas {first} and {other} differ after quiescence"
                    ));
                }
            }
        }
    }
    for p in 0..Q {
        let mut roots = BTreeMap::new();
        for node in &nodes {
            if node.map().is_replica(p, node.id()) {
                let root = node.store.trees().tree(p).map(|t| t.root());
                roots.insert(node.id().to_owned(), root);
            }
        }
        let distinct: BTreeSet<_> = roots.values().collect();
        if distinct.len() > 1 {
            violations.push(format!("partition {p}: Merkle roots differ: {roots:?}"));
        }
    }
    for node in &nodes {
        match node.store.hint_summary() {
            Ok(s) if s.is_empty() => {}
            Ok(s) => violations.push(format!("{}: hints left at quiescence: {s:?}", node.id())),
            Err(e) => violations.push(format!("{}: hint summary: {e}", node.id())),
        }
    }
    violations
}
