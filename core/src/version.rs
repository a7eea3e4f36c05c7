//! Actors, dots and version vectors.
//!
//! Causality is tracked per **actor**, never per client: an actor is a node id plus an
//! *incarnation* that changes whenever the node starts with an empty or lost data
//! directory. A counter of one actor is therefore never reused, which is what keeps a
//! wiped node's new writes from being silently dominated by its old ones (Riak KV679).
//! The number of actors is bounded by the number of node incarnations, so vectors are
//! never truncated (truncation loses data).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who made an event: a node incarnation. Cheap to clone: the node id is shared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node id.
    pub node: Arc<str>,
    /// Changes whenever the node starts with an empty or lost data directory.
    pub incarnation: u64,
}

impl Actor {
    /// An actor of node `node` at `incarnation`.
    pub fn new(node: impl Into<Arc<str>>, incarnation: u64) -> Self {
        Self {
            node: node.into(),
            incarnation,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)
    }
}

/// One event: the `counter`-th write coordinated by `actor`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// A version vector: for each actor, the number of its events seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Actor, u64>);

impl VersionVector {
    /// The empty vector (has seen nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Events of `actor` seen.
    pub fn get(&self, actor: &Actor) -> u64 {
        self.0.get(actor).copied().unwrap_or(0)
    }

    /// Records that events of `actor` up to `counter` have been seen.
    pub fn witness(&mut self, actor: &Actor, counter: u64) {
        if counter > self.get(actor) {
            self.0.insert(actor.clone(), counter);
        }
    }

    /// Whether `dot` is in the history this vector describes.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.actor) >= dot.counter
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (a, &c) in &other.0 {
            self.witness(a, c);
        }
    }

    /// Whether this vector has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, &c)| self.get(a) >= c)
    }

    /// Whether the vector has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (&Actor, u64)> {
        self.0.iter().map(|(a, &c)| (a, c))
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl FromIterator<(Actor, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Actor, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::new();
        for (a, c) in iter {
            vv.witness(&a, c);
        }
        vv
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, (a, c)) in self.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{a}:{c}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_pointwise_max() {
        let a1 = Actor::new("a", 1);
        let b1 = Actor::new("b", 1);
        let mut x: VersionVector = [(a1.clone(), 3), (b1.clone(), 1)].into_iter().collect();
        let y: VersionVector = [(a1.clone(), 1), (b1.clone(), 4)].into_iter().collect();
        x.merge(&y);
        assert_eq!(x.get(&a1), 3);
        assert_eq!(x.get(&b1), 4);
        assert!(x.descends(&y));
        assert!(!y.descends(&x));
    }

    #[test]
    fn incarnations_are_distinct_actors() {
        let old = Actor::new("n", 1);
        let new = Actor::new("n", 2);
        let vv: VersionVector = [(old, 10)].into_iter().collect();
        assert!(!vv.covers(&Dot {
            actor: new,
            counter: 1
        }));
    }
}
