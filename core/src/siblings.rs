//! Sibling sets: the stored form of a key (dotted version vectors, as in Riak 2.x).
//!
//! A [`SiblingSet`] holds the concurrent versions of one key, each tagged with the
//! [`Dot`] of the write that made it, plus one shared [`VersionVector`] that covers every
//! event the set has seen (the siblings' dots included). A version is a value or a
//! tombstone; a tombstone merges like any version, so a write concurrent with a delete
//! survives it.
//!
//! Invariants:
//! - every sibling's dot is covered by `vv`;
//! - no two siblings share a dot; siblings are kept sorted by dot.
//!
//! [`SiblingSet::join`] is commutative, associative and idempotent (property-tested), so
//! replicas converge whatever order they exchange state in.

use bytes::Bytes;

use crate::version::{Actor, Dot, VersionVector};

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The write that made this version.
    pub dot: Dot,
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<Bytes>,
}

impl Sibling {
    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The concurrent versions of a key and the causal history they summarize.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiblingSet {
    vv: VersionVector,
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The empty set (the key was never written here).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from parts, restoring the invariants (sorted, unique dots, `vv`
    /// covering every sibling).
    pub fn from_parts(mut vv: VersionVector, mut siblings: Vec<Sibling>) -> Self {
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        siblings.dedup_by(|a, b| a.dot == b.dot);
        for s in &siblings {
            vv.witness(&s.dot.actor, s.dot.counter);
        }
        Self { vv, siblings }
    }

    /// The causal context: everything this set has seen.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    /// All siblings, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Siblings that are values (not tombstones).
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings.iter().filter_map(|s| s.value.as_ref())
    }

    /// Whether the set has never seen a write.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.vv.is_empty()
    }

    /// Whether the key currently has no value (never written, or every sibling deleted).
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Records a write coordinated by `actor` with the causal `context` the client read.
    ///
    /// The new version supersedes exactly the siblings `context` covers; every other
    /// sibling stays, concurrent with it. `value` is `None` for a delete. Returns the new
    /// version's dot. `actor` must be the local node, so that its counter here is its
    /// highest (the coordinator writes locally first).
    pub fn update(&mut self, context: &VersionVector, actor: &Actor, value: Option<Bytes>) -> Dot {
        let counter = self.vv.get(actor).max(context.get(actor)) + 1;
        let dot = Dot {
            actor: actor.clone(),
            counter,
        };
        self.siblings.retain(|s| !context.covers(&s.dot));
        self.vv.merge(context);
        self.vv.witness(actor, counter);
        // The new dot is the largest of its actor, so inserting at the sorted place keeps
        // the order without a full sort.
        let at = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(
            at,
            Sibling {
                dot: dot.clone(),
                value,
            },
        );
        dot
    }

    /// Joins two replicas' states of the same key.
    ///
    /// A sibling survives if both sides hold it, or if the other side has not seen it
    /// (its dot is not covered by the other side's vector). A sibling one side holds and
    /// the other has seen but dropped was superseded, and goes.
    pub fn join(&self, other: &SiblingSet) -> SiblingSet {
        let mut out = Vec::with_capacity(self.siblings.len().max(other.siblings.len()));
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.siblings, &other.siblings);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Equal => {
                    out.push(a[i].clone());
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    if !other.vv.covers(&a[i].dot) {
                        out.push(a[i].clone());
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    if !self.vv.covers(&b[j].dot) {
                        out.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        let mut vv = self.vv.clone();
        vv.merge(&other.vv);
        SiblingSet { vv, siblings: out }
    }

    /// Joins `other` into `self`; returns whether `self` changed.
    pub fn absorb(&mut self, other: &SiblingSet) -> bool {
        let joined = self.join(other);
        let changed = joined != *self;
        *self = joined;
        changed
    }

    /// Whether this state has everything `other` has (joining `other` changes nothing).
    pub fn descends(&self, other: &SiblingSet) -> bool {
        self.vv.descends(&other.vv) && self.join(other) == *self
    }

    /// Total bytes of sibling values (for metrics and limits).
    pub fn value_bytes(&self) -> usize {
        self.values().map(Bytes::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn actor(i: u8) -> Actor {
        Actor::new(format!("n{i}"), 1)
    }

    fn val(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn blind_writes_are_siblings_and_a_context_put_resolves_them() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), &actor(0), val("a"));
        s.update(&VersionVector::new(), &actor(0), val("b"));
        assert_eq!(s.values().count(), 2, "a blind write never overwrites");
        let ctx = s.version_vector().clone();
        s.update(&ctx, &actor(1), val("merged"));
        assert_eq!(s.values().collect::<Vec<_>>(), [&Bytes::from("merged")]);
    }

    #[test]
    fn delete_with_context_leaves_concurrent_write() {
        let mut r1 = SiblingSet::new();
        r1.update(&VersionVector::new(), &actor(0), val("v1"));
        let ctx = r1.version_vector().clone();
        let mut r2 = r1.clone();
        r1.update(&ctx, &actor(0), None); // delete what was read
        r2.update(&ctx, &actor(1), val("v2")); // concurrent write from the same read
        let j = r1.join(&r2);
        assert_eq!(j.values().collect::<Vec<_>>(), [&Bytes::from("v2")]);
        assert_eq!(j.siblings().len(), 2, "the tombstone is a sibling too");
    }

    #[test]
    fn stale_replica_loses_superseded_sibling_on_join() {
        let mut a = SiblingSet::new();
        a.update(&VersionVector::new(), &actor(0), val("old"));
        let stale = a.clone();
        let ctx = a.version_vector().clone();
        a.update(&ctx, &actor(0), val("new"));
        let j = stale.join(&a);
        assert_eq!(j, a);
        assert!(a.descends(&stale));
        assert!(!stale.descends(&a));
    }

    // ---- property tests over random histories -------------------------------------

    /// An operation in a random history: replica `at` coordinates a write whose context
    /// is the state of replica `ctx_from` (or none: a blind write), or two replicas sync.
    #[derive(Clone, Debug)]
    enum Op {
        Write {
            at: usize,
            ctx_from: Option<usize>,
            delete: bool,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..3, proptest::option::of(0usize..3), any::<bool>()).prop_map(
                |(at, ctx_from, delete)| Op::Write {
                    at,
                    ctx_from,
                    delete
                }
            ),
            (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Runs a history on three replicas. Returns the replicas and the model's causal
    /// frontier: every dot written and not superseded by a context that covered it.
    fn run(ops: &[Op]) -> (Vec<SiblingSet>, BTreeSet<Dot>) {
        let mut reps = vec![SiblingSet::new(); 3];
        let mut written: BTreeMap<Dot, VersionVector> = BTreeMap::new();
        for op in ops {
            match *op {
                Op::Write {
                    at,
                    ctx_from,
                    delete,
                } => {
                    let ctx = ctx_from
                        .map(|r| reps[r].version_vector().clone())
                        .unwrap_or_default();
                    let value = if delete { None } else { val("x") };
                    let dot = reps[at].update(&ctx, &actor(at as u8), value);
                    written.insert(dot, ctx);
                }
                Op::Sync { from, to } => {
                    let src = reps[from].clone();
                    reps[to].absorb(&src);
                }
            }
        }
        let frontier = written
            .keys()
            .filter(|d| !written.values().any(|ctx| ctx.covers(d)))
            .cloned()
            .collect();
        (reps, frontier)
    }

    fn dots(s: &SiblingSet) -> BTreeSet<Dot> {
        s.siblings().iter().map(|s| s.dot.clone()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn join_is_commutative(ops in proptest::collection::vec(op(), 0..40)) {
            let (r, _) = run(&ops);
            prop_assert_eq!(r[0].join(&r[1]), r[1].join(&r[0]));
        }

        #[test]
        fn join_is_associative(ops in proptest::collection::vec(op(), 0..40)) {
            let (r, _) = run(&ops);
            prop_assert_eq!(r[0].join(&r[1]).join(&r[2]), r[0].join(&r[1].join(&r[2])));
        }

        #[test]
        fn join_is_idempotent(ops in proptest::collection::vec(op(), 0..40)) {
            let (r, _) = run(&ops);
            prop_assert_eq!(r[0].join(&r[0]), r[0].clone());
        }

        /// After every replica is joined, the siblings are exactly the causal frontier:
        /// every dominated version is dropped and no concurrent version ever is.
        #[test]
        fn joined_state_is_the_causal_frontier(ops in proptest::collection::vec(op(), 0..40)) {
            let (r, frontier) = run(&ops);
            let all = r[0].join(&r[1]).join(&r[2]);
            prop_assert_eq!(dots(&all), frontier);
        }

        /// No replica ever drops a version that is still on the frontier and that it has
        /// received: a replica's siblings include every frontier dot it has seen.
        #[test]
        fn no_concurrent_sibling_is_dropped(ops in proptest::collection::vec(op(), 0..40)) {
            let (r, frontier) = run(&ops);
            for rep in &r {
                for d in frontier.iter().filter(|d| rep.version_vector().covers(d)) {
                    prop_assert!(dots(rep).contains(d), "replica dropped live sibling {}", d);
                }
            }
        }
    }
}
