//! Actors, dots and version vectors.
//!
//! Causality is tracked per **actor**, never per client: an actor is a node id plus an
//! *incarnation* that changes whenever the node starts with an empty or lost data
//! directory. A counter of one actor is therefore never reused, which is what keeps a
//! wiped node's new writes from being silently dominated by its old ones (Riak KV679).
//! The number of actors is bounded by the number of node incarnations, so vectors are
//! never truncated (truncation loses data).
//!
//! A [`CausalContext`] is a set of dots written compactly: a [`VersionVector`] for each
//! actor's contiguous prefix plus the exact dots seen beyond it (a dotted version
//! vector). It is what a stored key remembers having seen, and what a client's context
//! covers: exactly the dots in it, so that a context never covers a write its client
//! did not see just because a later dot of the same actor was seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Who made an event: a node incarnation, and within it an *epoch*. Cheap to clone: the
/// node id is shared.
///
/// A node counts its writes of a key from its own copy of the key, so the counter of an
/// actor is only safe while that copy holds every dot the actor made for the key. A node
/// therefore writes each key under an epoch of its own (see the node's `dots` module): a
/// new epoch whenever it holds no copy of the key that it wrote under its current epoch,
/// so a dropped or re-fetched copy never makes it issue a counter twice. Epoch 0 is the
/// actor of stores written before epochs existed; it is never issued again.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The node id.
    pub node: Arc<str>,
    /// Changes whenever the node starts with an empty or lost data directory.
    pub incarnation: u64,
    /// The key's epoch within the incarnation (0: before epochs existed).
    #[serde(default)]
    pub epoch: u64,
}

impl Actor {
    /// The epoch-0 actor of node `node` at `incarnation`.
    pub fn new(node: impl Into<Arc<str>>, incarnation: u64) -> Self {
        Self {
            node: node.into(),
            incarnation,
            epoch: 0,
        }
    }

    /// This actor's node incarnation at `epoch`.
    pub fn at_epoch(&self, epoch: u64) -> Self {
        Self {
            node: self.node.clone(),
            incarnation: self.incarnation,
            epoch,
        }
    }

    /// Whether `other` is the same node incarnation (at any epoch).
    pub fn same_incarnation(&self, other: &Actor) -> bool {
        self.incarnation == other.incarnation && self.node == other.node
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.incarnation)?;
        if self.epoch != 0 {
            write!(f, ".{}", self.epoch)?;
        }
        Ok(())
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

    /// Forgets every event of `actor`.
    fn forget(&mut self, actor: &Actor) {
        self.0.remove(actor);
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

/// Why a new dot could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("the counter of actor {0} is exhausted")]
    CounterOverflow(Actor),
}

/// A set of dots: each actor's contiguous prefix as a [`VersionVector`], plus the exact
/// dots beyond it.
///
/// Invariant (which makes the representation canonical, so `==` compares the sets): no
/// exact dot is covered by the vector or extends it (its counter is more than the
/// vector's counter for its actor plus one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CausalContext {
    vv: VersionVector,
    dots: BTreeSet<Dot>,
}

/// Most exact dots of one actor a context returned by a put keeps (see
/// [`CausalContext::with_write`]).
pub const KEPT_EXACT_DOTS: usize = 4;

/// The first and last possible dots of `actor`, for ranges over a dot set.
fn actor_range(actor: &Actor) -> std::ops::RangeInclusive<Dot> {
    let dot = |counter| Dot {
        actor: actor.clone(),
        counter,
    };
    dot(0)..=dot(u64::MAX)
}

impl CausalContext {
    /// The empty context (covers nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A context of `vv`'s prefixes plus the exact `dots`.
    pub fn from_parts(vv: VersionVector, dots: impl IntoIterator<Item = Dot>) -> Self {
        let mut cc = Self {
            vv,
            dots: BTreeSet::new(),
        };
        for d in dots {
            cc.add(&d);
        }
        cc
    }

    /// The contiguous prefixes.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// The exact dots beyond the prefixes, in order.
    pub fn dots(&self) -> impl Iterator<Item = &Dot> {
        self.dots.iter()
    }

    /// Whether `dot` is in the set.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.vv.covers(dot) || self.dots.contains(dot)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.dots.is_empty()
    }

    /// The highest counter of `actor` in the set (0 if none).
    pub fn max_counter(&self, actor: &Actor) -> u64 {
        let exact = self.dots.range(actor_range(actor)).next_back();
        exact.map_or(self.vv.get(actor), |d| d.counter)
    }

    /// Every actor with a dot in the set, in order.
    pub fn actors(&self) -> BTreeSet<&Actor> {
        self.vv
            .iter()
            .map(|(a, _)| a)
            .chain(self.dots.iter().map(|d| &d.actor))
            .collect()
    }

    /// Number of exact dots beyond the prefixes.
    pub fn exact_len(&self) -> usize {
        self.dots.len()
    }

    /// Adds `dot` to the set.
    pub fn add(&mut self, dot: &Dot) {
        if dot.counter == 0 || self.covers(dot) {
            return;
        }
        self.dots.insert(dot.clone());
        self.compact(&dot.actor);
    }

    /// Adds every dot of `other`.
    pub fn merge(&mut self, other: &CausalContext) {
        for (a, c) in other.vv.iter() {
            if c > self.vv.get(a) {
                self.vv.witness(a, c);
                self.compact(a);
            }
        }
        for d in &other.dots {
            self.add(d);
        }
    }

    /// Whether every dot of `other` is in this set.
    pub fn descends(&self, other: &CausalContext) -> bool {
        // A prefix this set does not reach has a gap at its next counter (an exact dot
        // never extends a prefix), so only a prefix at least as long descends.
        self.vv.descends(&other.vv) && other.dots.iter().all(|d| self.covers(d))
    }

    /// The context to hand back to a client that sent this context with a write which
    /// made `dot`: what it saw plus its own write, and nothing it did not see.
    ///
    /// Covering a dot the client never saw would let its next put supersede that
    /// version unseen. Filling the gaps between the client's dots with other clients'
    /// dots is not safe even when the coordinator's copy shows them superseded: the
    /// superseding write may be undone by a power loss of every replica that held it
    /// (nodes that sync periodically), and the older version it superseded then lives
    /// again, unseen by this client.
    ///
    /// To stay small when a client chains puts on returned contexts while others write
    /// the key through the same coordinator, it keeps at most [`KEPT_EXACT_DOTS`] exact
    /// dots of `dot`'s actor, dropping the oldest. Dropping covers less, so it never
    /// loses a version: a dropped dot is one of the client's own earlier writes, already
    /// superseded by a later one whose stored context covers it, and at worst it shows
    /// as a sibling through a replica that has not yet seen that later write.
    pub fn with_write(&self, dot: &Dot) -> CausalContext {
        let mut out = self.clone();
        let mine: Vec<Dot> = out.dots.range(actor_range(&dot.actor)).cloned().collect();
        let excess = mine.len().saturating_sub(KEPT_EXACT_DOTS - 1);
        for d in &mine[..excess] {
            out.dots.remove(d);
        }
        out.add(dot);
        out
    }

    /// The same set without any dot of `actor`.
    pub fn without(&self, actor: &Actor) -> CausalContext {
        let mut out = self.clone();
        out.vv.forget(actor);
        let theirs: Vec<Dot> = out.dots.range(actor_range(actor)).cloned().collect();
        for d in theirs {
            out.dots.remove(&d);
        }
        out
    }

    /// Restores the invariant for `actor`: folds exact dots that extend its prefix into
    /// it and drops those it covers.
    fn compact(&mut self, actor: &Actor) {
        loop {
            let prefix = self.vv.get(actor);
            let Some(first) = self.dots.range(actor_range(actor)).next().cloned() else {
                return;
            };
            if first.counter <= prefix {
                self.dots.remove(&first);
            } else if Some(first.counter) == prefix.checked_add(1) {
                self.dots.remove(&first);
                self.vv.witness(actor, first.counter);
            } else {
                return;
            }
        }
    }
}

impl From<VersionVector> for CausalContext {
    fn from(vv: VersionVector) -> Self {
        Self {
            vv,
            dots: BTreeSet::new(),
        }
    }
}

impl fmt::Display for CausalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.vv)?;
        if !self.dots.is_empty() {
            write!(f, "+{{")?;
            for (i, d) in self.dots.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{d}")?;
            }
            write!(f, "}}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dot(a: &Actor, counter: u64) -> Dot {
        Dot {
            actor: a.clone(),
            counter,
        }
    }

    #[test]
    fn exact_dots_cover_only_themselves_until_the_gap_closes() {
        let a = Actor::new("a", 1);
        let mut cc = CausalContext::new();
        cc.add(&dot(&a, 2));
        assert!(cc.covers(&dot(&a, 2)));
        assert!(!cc.covers(&dot(&a, 1)), "a later dot covers no earlier one");
        assert_eq!(cc.max_counter(&a), 2);
        cc.add(&dot(&a, 1));
        assert_eq!(cc.vv().get(&a), 2, "a closed gap folds into the prefix");
        assert_eq!(cc.exact_len(), 0);
        let mut far = CausalContext::new();
        far.add(&dot(&a, 5));
        far.merge(&cc);
        assert_eq!(far.to_string(), "[a#1:2]+{a#1:5}");
        assert!(!far.covers(&dot(&a, 3)));
        assert!(far.descends(&cc));
        assert!(!cc.descends(&far));
        assert_eq!(far.without(&a), CausalContext::new());
    }

    #[test]
    fn the_last_counter_does_not_overflow_a_prefix() {
        let a = Actor::new("a", 1);
        let mut cc = CausalContext::from(VersionVector::from_iter([(a.clone(), u64::MAX)]));
        cc.add(&dot(&a, u64::MAX));
        assert_eq!(cc.max_counter(&a), u64::MAX);
    }

    fn dots_of(cc: &CausalContext, actors: &[Actor]) -> BTreeSet<Dot> {
        actors
            .iter()
            .flat_map(|a| (1..=12).map(move |c| dot(a, c)))
            .filter(|d| cc.covers(d))
            .collect()
    }

    proptest! {
        /// Whatever order dots are added and contexts merged in, a context covers
        /// exactly the dots added to it, and equal sets have equal representations.
        #[test]
        fn a_context_is_exactly_its_dots(
            left in proptest::collection::vec((0u8..3, 1u64..12), 0..20),
            right in proptest::collection::vec((0u8..3, 1u64..12), 0..20),
        ) {
            let actors: Vec<Actor> = (0..3).map(|i| Actor::new(format!("n{i}"), 1)).collect();
            let build = |ds: &[(u8, u64)]| {
                let mut cc = CausalContext::new();
                for &(a, c) in ds {
                    cc.add(&dot(&actors[a as usize], c));
                }
                cc
            };
            let (l, r) = (build(&left), build(&right));
            let want: BTreeSet<Dot> = left
                .iter()
                .chain(&right)
                .map(|&(a, c)| dot(&actors[a as usize], c))
                .collect();
            let mut merged = l.clone();
            merged.merge(&r);
            prop_assert_eq!(dots_of(&merged, &actors), want.clone());
            let mut other_way = r.clone();
            other_way.merge(&l);
            prop_assert_eq!(&merged, &other_way);
            let all_at_once = CausalContext::from_parts(VersionVector::new(), want);
            prop_assert_eq!(&merged, &all_at_once);
            prop_assert!(merged.descends(&l) && merged.descends(&r));
        }
    }

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
