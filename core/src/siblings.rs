//! Sibling sets: the stored form of a key (dotted version vectors, as in Riak 2.x).
//!
//! A [`SiblingSet`] holds the concurrent versions of one key, each tagged with the
//! [`Dot`] of the write that made it, plus one shared [`CausalContext`] of every dot the
//! set has seen (the siblings' dots included). A version is a value or a tombstone; a
//! tombstone merges like any version, so a write concurrent with a delete survives it.
//!
//! Invariants:
//! - every sibling's dot is in the context;
//! - a dot in the context without a sibling was superseded by a write whose client saw
//!   it (contexts are exact: see [`crate::version`]);
//! - no two siblings share a dot; siblings are kept sorted by dot.
//!
//! [`SiblingSet::join`] is commutative, associative and idempotent (property-tested), so
//! replicas converge whatever order they exchange state in.

use bytes::Bytes;

use crate::version::{Actor, CausalContext, Dot, VersionError};

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
    cc: CausalContext,
    siblings: Vec<Sibling>,
}

impl SiblingSet {
    /// The empty set (the key was never written here).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from parts, restoring the invariants (sorted, unique dots, the
    /// context covering every sibling).
    pub fn from_parts(mut cc: CausalContext, mut siblings: Vec<Sibling>) -> Self {
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        siblings.dedup_by(|a, b| a.dot == b.dot);
        for s in &siblings {
            cc.add(&s.dot);
        }
        Self { cc, siblings }
    }

    /// The causal context: every dot this set has seen. A get's context.
    pub fn context(&self) -> &CausalContext {
        &self.cc
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
        self.siblings.is_empty() && self.cc.is_empty()
    }

    /// Whether the key currently has no value (never written, or every sibling deleted).
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Records a write coordinated by `actor` with the causal `context` its client sent.
    ///
    /// The new version supersedes exactly the siblings `context` covers; every other
    /// sibling stays, concurrent with it. `value` is `None` for a delete. Returns the new
    /// version's dot. `actor` must be the local node, and this set its whole local copy
    /// of the key, so that every dot `actor` ever made for the key is in it (the
    /// coordinator writes locally before anyone else sees a dot) and the new counter,
    /// one past the highest here or in `context`, is new.
    pub fn update(
        &mut self,
        context: &CausalContext,
        actor: &Actor,
        value: Option<Bytes>,
    ) -> Result<Dot, VersionError> {
        let highest = self.cc.max_counter(actor).max(context.max_counter(actor));
        let counter = highest
            .checked_add(1)
            .ok_or_else(|| VersionError::CounterOverflow(actor.clone()))?;
        let dot = Dot {
            actor: actor.clone(),
            counter,
        };
        self.siblings.retain(|s| !context.covers(&s.dot));
        self.cc.merge(context);
        self.cc.add(&dot);
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
        Ok(dot)
    }

    /// Joins two replicas' states of the same key.
    ///
    /// A sibling survives if both sides hold it, or if the other side has not seen it
    /// (its dot is not in the other side's context). A sibling one side holds and the
    /// other has seen but dropped was superseded, and goes.
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
                    if !other.cc.covers(&a[i].dot) {
                        out.push(a[i].clone());
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    if !self.cc.covers(&b[j].dot) {
                        out.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        let mut cc = self.cc.clone();
        cc.merge(&other.cc);
        SiblingSet { cc, siblings: out }
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
        self.cc.descends(&other.cc) && self.join(other) == *self
    }

    /// Total bytes of sibling values (for metrics and limits).
    pub fn value_bytes(&self) -> usize {
        self.values().map(Bytes::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::KEPT_EXACT_DOTS;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn actor(i: u8) -> Actor {
        Actor::new(format!("n{i}"), 1)
    }

    fn val(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn blind() -> CausalContext {
        CausalContext::new()
    }

    /// Puts `v` with `ctx` through actor `a` and returns the context handed back.
    fn put(s: &mut SiblingSet, ctx: &CausalContext, a: u8, v: &str) -> CausalContext {
        let dot = s.update(ctx, &actor(a), val(v)).unwrap();
        ctx.with_write(&dot)
    }

    fn values(s: &SiblingSet) -> Vec<&str> {
        s.values()
            .map(|v| std::str::from_utf8(v).unwrap())
            .collect()
    }

    #[test]
    fn blind_writes_are_siblings_and_a_context_put_resolves_them() {
        let mut s = SiblingSet::new();
        put(&mut s, &blind(), 0, "a");
        put(&mut s, &blind(), 0, "b");
        assert_eq!(s.values().count(), 2, "a blind write never overwrites");
        let ctx = s.context().clone();
        put(&mut s, &ctx, 1, "merged");
        assert_eq!(values(&s), ["merged"]);
    }

    /// The bug of issue 15: client 1 writes blind, client 2 writes blind through the same
    /// coordinator and then updates its own write with the context its put returned.
    /// Client 1's version must survive: client 2 never saw it.
    #[test]
    fn a_returned_context_covers_only_what_its_client_saw() {
        let mut s = SiblingSet::new();
        put(&mut s, &blind(), 0, "b");
        let c = put(&mut s, &blind(), 0, "a");
        let mut c = put(&mut s, &c, 0, "a2");
        assert_eq!(values(&s), ["b", "a2"]);
        // A chain of puts on returned contexts stays small and keeps "b".
        for i in 0..1000 {
            c = put(&mut s, &c, 0, &format!("a{i}"));
        }
        assert_eq!(values(&s), ["b", "a999"]);
        assert!(c.exact_len() <= KEPT_EXACT_DOTS, "context grew: {c}");
    }

    /// Found by the simulation (seed 31): a write that superseded a version is undone
    /// by a power loss of every node that held it, and the version lives again. A
    /// client that never saw that version must not supersede it with the context an
    /// earlier put returned, even though the coordinator's copy showed it superseded
    /// when that put was made.
    #[test]
    fn a_returned_context_never_covers_a_version_a_power_loss_revives() {
        let mut a = SiblingSet::new();
        put(&mut a, &blind(), 0, "x0");
        // A late client reads and keeps the context for a while.
        let late = a.context().clone();
        let read = a.context().clone();
        put(&mut a, &read, 0, "x0,x1");
        // What the disks hold when the power goes.
        let synced = a.clone();
        // Another client supersedes "x0,x1" through node 1; node 0 learns of it.
        let mut b = a.clone();
        let read = b.context().clone();
        put(&mut b, &read, 1, "x0,x1,x2");
        a.absorb(&b);
        // The late client writes on its old context, through node 0.
        let returned = put(&mut a, &late, 0, "x0,late");
        // Power loss: every node is back at what it had synced; node 0 restarts as a
        // new incarnation (a new actor).
        let mut a = synced;
        let n0 = Actor::new("n0", 2);
        a.update(&returned, &n0, val("x0,late,late2")).unwrap();
        assert_eq!(
            values(&a),
            ["x0,x1", "x0,late,late2"],
            "the late client never saw x1"
        );
    }

    #[test]
    fn delete_with_context_leaves_concurrent_write() {
        let mut r1 = SiblingSet::new();
        put(&mut r1, &blind(), 0, "v1");
        let ctx = r1.context().clone();
        let mut r2 = r1.clone();
        r1.update(&ctx, &actor(0), None).unwrap(); // delete what was read
        put(&mut r2, &ctx, 1, "v2"); // concurrent write from the same read
        let j = r1.join(&r2);
        assert_eq!(values(&j), ["v2"]);
        assert_eq!(j.siblings().len(), 2, "the tombstone is a sibling too");
    }

    #[test]
    fn stale_replica_loses_superseded_sibling_on_join() {
        let mut a = SiblingSet::new();
        put(&mut a, &blind(), 0, "old");
        let stale = a.clone();
        let ctx = a.context().clone();
        put(&mut a, &ctx, 0, "new");
        let j = stale.join(&a);
        assert_eq!(j, a);
        assert!(a.descends(&stale));
        assert!(!stale.descends(&a));
    }

    #[test]
    fn an_exhausted_counter_is_an_error_not_a_wrap() {
        let mut s = SiblingSet::new();
        let a = actor(0);
        let full = CausalContext::from(
            [(a.clone(), u64::MAX)]
                .into_iter()
                .collect::<crate::version::VersionVector>(),
        );
        assert_eq!(
            s.update(&full, &a, val("x")),
            Err(VersionError::CounterOverflow(a))
        );
    }

    // ---- property tests over random histories -------------------------------------

    /// How a write's client got its context.
    #[derive(Clone, Debug)]
    enum Ctx {
        /// None: a blind write.
        Blind,
        /// A get from a replica.
        Read(usize),
        /// The context returned by an earlier put of the history (picked by index,
        /// possibly long after: a context reused late).
        Returned(usize),
    }

    /// An operation in a random history: a coordinator makes a write, or two replicas sync.
    #[derive(Clone, Debug)]
    enum Op {
        Write { at: usize, ctx: Ctx, delete: bool },
        Sync { from: usize, to: usize },
    }

    fn op(coordinators: usize) -> impl Strategy<Value = Op> {
        let ctx = prop_oneof![
            Just(Ctx::Blind),
            (0usize..3).prop_map(Ctx::Read),
            any::<usize>().prop_map(Ctx::Returned),
        ];
        prop_oneof![
            3 => (0..coordinators, ctx, proptest::bool::weighted(0.2))
                .prop_map(|(at, ctx, delete)| Op::Write { at, ctx, delete }),
            1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// A history run on three replicas, with what every write's client really saw.
    struct Run {
        reps: Vec<SiblingSet>,
        /// Every context a put returned, with every dot its client had seen by then.
        returned: Vec<(CausalContext, BTreeSet<Dot>)>,
        /// For each dot written, every dot its client really saw: the versions it read
        /// or wrote before, and everything those had seen.
        saw: BTreeMap<Dot, BTreeSet<Dot>>,
    }

    impl Run {
        /// The causal frontier: every dot written that no client saw before writing.
        fn frontier(&self) -> BTreeSet<Dot> {
            let seen: BTreeSet<&Dot> = self.saw.values().flatten().collect();
            self.saw
                .keys()
                .filter(|d| !seen.contains(d))
                .cloned()
                .collect()
        }

        /// What a client sees when it reads (or wrote) `dots`: them and their pasts.
        fn past_of<'a>(&self, dots: impl IntoIterator<Item = &'a Dot>) -> BTreeSet<Dot> {
            let mut out = BTreeSet::new();
            for d in dots {
                out.insert(d.clone());
                out.extend(self.saw[d].iter().cloned());
            }
            out
        }
    }

    fn run(ops: &[Op]) -> Run {
        let mut r = Run {
            reps: vec![SiblingSet::new(); 3],
            returned: Vec::new(),
            saw: BTreeMap::new(),
        };
        for op in ops {
            match op {
                Op::Write { at, ctx, delete } => {
                    let (ctx, saw) = match ctx {
                        Ctx::Read(from) => {
                            let read = &r.reps[*from];
                            let live = read.siblings().iter().map(|s| &s.dot);
                            (read.context().clone(), r.past_of(live))
                        }
                        Ctx::Returned(i) if !r.returned.is_empty() => {
                            r.returned[i % r.returned.len()].clone()
                        }
                        _ => Default::default(),
                    };
                    let value = if *delete { None } else { val("x") };
                    let set = &mut r.reps[*at];
                    let dot = set.update(&ctx, &actor(*at as u8), value).unwrap();
                    let next = ctx.with_write(&dot);
                    let mut next_saw = saw.clone();
                    next_saw.insert(dot.clone());
                    r.returned.push((next, next_saw));
                    r.saw.insert(dot, saw);
                }
                Op::Sync { from, to } => {
                    let src = r.reps[*from].clone();
                    r.reps[*to].absorb(&src);
                }
            }
        }
        r
    }

    fn dots(s: &SiblingSet) -> BTreeSet<Dot> {
        s.siblings().iter().map(|s| s.dot.clone()).collect()
    }

    /// Every sibling not seen by the client of a write that superseded it survives, and
    /// nothing seen survives once all replicas are joined.
    fn check_frontier(r: &Run) -> Result<(), TestCaseError> {
        let frontier = r.frontier();
        let all = r.reps[0].join(&r.reps[1]).join(&r.reps[2]);
        prop_assert_eq!(dots(&all), frontier.clone());
        for rep in &r.reps {
            for d in frontier.iter().filter(|d| rep.context().covers(d)) {
                prop_assert!(dots(rep).contains(d), "replica dropped live sibling {}", d);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A context a put returns covers no write its client did not see (a dot it
        /// covers that the client never saw is a version its next put would supersede
        /// unseen, should that version live again).
        #[test]
        fn a_returned_context_covers_only_writes_its_client_saw(
            ops in proptest::collection::vec(op(3), 0..60)
        ) {
            let r = run(&ops);
            for (ctx, saw) in &r.returned {
                for d in r.saw.keys().filter(|d| ctx.covers(d)) {
                    prop_assert!(saw.contains(d), "{} covers {}, unseen", ctx, d);
                }
            }
        }

        #[test]
        fn join_is_commutative(ops in proptest::collection::vec(op(3), 0..40)) {
            let r = run(&ops).reps;
            prop_assert_eq!(r[0].join(&r[1]), r[1].join(&r[0]));
        }

        #[test]
        fn join_is_associative(ops in proptest::collection::vec(op(3), 0..40)) {
            let r = run(&ops).reps;
            prop_assert_eq!(r[0].join(&r[1]).join(&r[2]), r[0].join(&r[1].join(&r[2])));
        }

        #[test]
        fn join_is_idempotent(ops in proptest::collection::vec(op(3), 0..40)) {
            let r = run(&ops).reps;
            prop_assert_eq!(r[0].join(&r[0]), r[0].clone());
        }

        /// Blind puts, puts with a get's context and puts with an earlier put's returned
        /// context, all through one coordinator (as `route_by_key` and forwarding make
        /// them): the joined state is exactly the causal frontier of what clients saw.
        #[test]
        fn one_coordinator_keeps_exactly_the_causal_frontier(
            ops in proptest::collection::vec(op(1), 0..60)
        ) {
            check_frontier(&run(&ops))?;
        }

        /// The same through three coordinators.
        #[test]
        fn several_coordinators_keep_exactly_the_causal_frontier(
            ops in proptest::collection::vec(op(3), 0..60)
        ) {
            check_frontier(&run(&ops))?;
        }
    }
}
