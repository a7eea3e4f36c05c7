//! The live partition maps of a cluster, and how a change of members moves between them.
//!
//! A cluster has at most two live maps: the map *in force* (`current`) and, while its
//! members change, a *pending* one (`pending`, one epoch higher). A change is:
//!
//! 1. **commit**: the pending map is set (compare-and-set on the epoch; idempotent);
//! 2. **transfer**: every partition replica the pending map places on a node that the
//!    current map does not (a [`Move`]) is streamed to it from an old replica. Meanwhile a
//!    write needs W acknowledgements among the old preference list *and* W among the new
//!    one ([`WriteQuorum`] over [`Intended`]), and reads use the old list;
//! 3. **finalize**: once every move is done and every node holds the pending map, it
//!    becomes the map in force; or **abort**: the pending map is dropped (the current one
//!    stayed live and complete the whole time, so nothing is lost).
//!
//! Every transition counts [`MapState::version`] up; nodes spread states by gossip and take
//! one only with a higher version. Transitions are made by one node, the *claimant*
//! ([`MapState::claimant`]; while it is down, the next member up stands in for it:
//! [`MapState::acting_claimant`]), so two committers racing on one epoch cannot both win; should
//! two states of one version ever meet anyway, [`MapState::supersedes`] picks the same one
//! everywhere (by a digest), so nodes never stay in disagreement.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::hash::key_hash;
use crate::ring::{MapError, Member, NodeId, PartitionId, PartitionMap};

/// The live maps, versioned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapState {
    /// Counted up by every transition (commit, finalize, abort); 0 for no map at all.
    pub version: u64,
    /// The map in force (None until the first map is finalized).
    pub current: Option<PartitionMap>,
    /// The committed map being moved to, if a change is in progress.
    pub pending: Option<PartitionMap>,
}

/// Why a transition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error(
        "epoch {pending} is already pending with a different map; abort it or let it finish first"
    )]
    AlreadyPending { pending: u64 },
    #[error("commit of epoch {got}, but the next epoch is {expected}")]
    WrongEpoch { got: u64, expected: u64 },
    #[error("the map has {got} partitions, but the cluster has {expected} (fixed at creation)")]
    PartitionCount { got: u32, expected: u32 },
    #[error("epoch {0} is not pending")]
    NotPending(u64),
}

/// One partition replica a change places on a new node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Move {
    pub partition: PartitionId,
    /// The new replica.
    pub to: NodeId,
    /// The old replica it replaces, the preferred source (None when the new list is
    /// longer than the old one).
    pub from: Option<NodeId>,
    /// Every replica of the partition under the current map (other sources).
    pub sources: Vec<NodeId>,
}

impl MapState {
    /// A state with `map` in force, as a node started from a member list plans it.
    pub fn in_force(map: PartitionMap) -> Self {
        Self {
            version: 1,
            current: Some(map),
            pending: None,
        }
    }

    /// Derives the preference lists of the maps after deserialization.
    pub fn rebuild(self) -> Result<Self, MapError> {
        Ok(Self {
            version: self.version,
            current: self.current.map(PartitionMap::rebuild).transpose()?,
            pending: self.pending.map(PartitionMap::rebuild).transpose()?,
        })
    }

    /// The map reads use: the one in force, or the first pending map of a new cluster.
    pub fn reads(&self) -> Option<&PartitionMap> {
        self.current.as_ref().or(self.pending.as_ref())
    }

    /// The newest live map: the pending one, else the one in force.
    pub fn newest(&self) -> Option<&PartitionMap> {
        self.pending.as_ref().or(self.current.as_ref())
    }

    /// The live maps, the one in force first.
    pub fn live(&self) -> impl Iterator<Item = &PartitionMap> {
        self.current.iter().chain(self.pending.iter())
    }

    /// The partition count (fixed at creation), if there is a map.
    pub fn partitions(&self) -> Option<u32> {
        self.reads().map(|m| m.partitions)
    }

    /// Whether a change is in progress (both an old and a new map live).
    pub fn changing(&self) -> bool {
        self.current.is_some() && self.pending.is_some()
    }

    /// Whether `node` replicates partition `p` in any live map.
    pub fn replicates(&self, p: PartitionId, node: &str) -> bool {
        self.live().any(|m| m.is_replica(p, node))
    }

    /// A member of any live map (as the newest map knows it).
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.pending
            .as_ref()
            .and_then(|m| m.member(id))
            .or_else(|| self.current.as_ref().and_then(|m| m.member(id)))
    }

    /// Every member of a live map, by id.
    pub fn members(&self) -> Vec<&Member> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for m in self
            .pending
            .iter()
            .chain(&self.current)
            .flat_map(|m| m.members.iter())
        {
            if seen.insert(&m.id) {
                out.push(m);
            }
        }
        out.sort();
        out
    }

    /// The members of `earlier`'s map in force that no live map of this state names:
    /// the nodes that left the cluster between the two states. (A node named only by an
    /// aborted pending map never joined, and may still be added.)
    pub fn left_since(&self, earlier: &MapState) -> Vec<NodeId> {
        earlier
            .current
            .iter()
            .flat_map(|m| m.members.iter())
            .filter(|m| self.member(&m.id).is_none())
            .map(|m| m.id.clone())
            .collect()
    }

    /// The node that makes transitions: the lowest id of the map in force (of the pending
    /// map before the first is finalized).
    pub fn claimant(&self) -> Option<&Member> {
        self.reads().and_then(|m| m.members.first())
    }

    /// The claimant as a node whose failure detector holds the members `down` sees it:
    /// the lowest id of the map in force that is not down (the lowest id if all are).
    /// A dead claimant would otherwise leave the cluster unable to change, even to remove
    /// it. Two nodes that disagree on who is down may take different claimants for a
    /// while; two states of one version are then settled by [`MapState::supersedes`].
    pub fn acting_claimant(&self, down: impl Fn(&str) -> bool) -> Option<&Member> {
        let members = &self.reads()?.members;
        members
            .iter()
            .find(|m| !down(&m.id))
            .or_else(|| members.first())
    }

    /// The state after committing `map` as pending: `Ok(None)` if it already is.
    pub fn commit(&self, map: PartitionMap) -> Result<Option<MapState>, TransitionError> {
        if let Some(p) = &self.pending {
            return match p == &map {
                true => Ok(None),
                false => Err(TransitionError::AlreadyPending { pending: p.epoch }),
            };
        }
        let expected = self.current.as_ref().map_or(1, |c| c.epoch + 1);
        if map.epoch != expected {
            return Err(TransitionError::WrongEpoch {
                got: map.epoch,
                expected,
            });
        }
        if let Some(c) = &self.current {
            if c.partitions != map.partitions {
                return Err(TransitionError::PartitionCount {
                    got: map.partitions,
                    expected: c.partitions,
                });
            }
        }
        Ok(Some(MapState {
            version: self.version + 1,
            current: self.current.clone(),
            pending: Some(map),
        }))
    }

    /// The state after putting pending `epoch` in force: `Ok(None)` if it already is.
    /// Whether every move is done is the caller's to check.
    pub fn finalize(&self, epoch: u64) -> Result<Option<MapState>, TransitionError> {
        match &self.pending {
            Some(p) if p.epoch == epoch => Ok(Some(MapState {
                version: self.version + 1,
                current: Some(p.clone()),
                pending: None,
            })),
            _ if self.current.as_ref().is_some_and(|c| c.epoch == epoch) => Ok(None),
            _ => Err(TransitionError::NotPending(epoch)),
        }
    }

    /// The state after dropping pending `epoch`: None if it is not pending (idempotent).
    /// The first map of a new cluster cannot be aborted: it is the only one.
    pub fn abort(&self, epoch: u64) -> Option<MapState> {
        let p = self.pending.as_ref()?;
        (p.epoch == epoch && self.current.is_some()).then(|| MapState {
            version: self.version + 1,
            current: self.current.clone(),
            pending: None,
        })
    }

    /// Whether this state should replace `other` on a node holding `other`: a higher
    /// version, or the same version and a lower digest (two states of one version should
    /// never exist; if they do, every node picks the same one).
    pub fn supersedes(&self, other: &MapState) -> bool {
        match self.version.cmp(&other.version) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self != other && self.digest() < other.digest(),
        }
    }

    /// A hash of the state: what it places where (every field but the members'
    /// addresses).
    pub fn digest(&self) -> u64 {
        let mut bytes = self.version.to_be_bytes().to_vec();
        for m in [&self.current, &self.pending] {
            match m {
                None => bytes.push(0),
                Some(m) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&m.epoch.to_be_bytes());
                    bytes.extend_from_slice(&m.partitions.to_be_bytes());
                    bytes.extend_from_slice(&m.replication.to_be_bytes());
                    // Not the addresses: nodes may reach one member at different
                    // addresses (proxies, NAT; the partition test's nodes do), and a
                    // digest of them would make such nodes swap states forever.
                    for member in &m.members {
                        bytes.extend_from_slice(member.id.as_bytes());
                        bytes.push(0);
                        bytes.extend_from_slice(member.zone.as_deref().unwrap_or("").as_bytes());
                        bytes.push(0);
                    }
                    for o in &m.owners {
                        bytes.extend_from_slice(&o.to_be_bytes());
                    }
                }
            }
        }
        key_hash(&bytes)
    }

    /// The partition replicas the pending map places on nodes that do not replicate them
    /// under the map in force (none without both maps).
    pub fn moves(&self) -> Vec<Move> {
        let (Some(old), Some(new)) = (&self.current, &self.pending) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in 0..new.partitions {
            let olds: Vec<&NodeId> = old.preference_list(p).map(|m| &m.id).collect();
            let news: Vec<&NodeId> = new.preference_list(p).map(|m| &m.id).collect();
            let mut leaving = olds.iter().filter(|id| !news.contains(id));
            for to in news.iter().filter(|id| !olds.contains(id)) {
                out.push(Move {
                    partition: p,
                    to: (*to).clone(),
                    from: leaving.next().map(|id| (*id).clone()),
                    sources: olds.iter().map(|id| (*id).clone()).collect(),
                });
            }
        }
        out
    }

    /// The replicas a write of partition `p` goes to: the old list, then the members of
    /// the new list that are not in it, with the lists they count for.
    pub fn intended(&self, p: PartitionId) -> Intended<'_> {
        let mut members: Vec<&Member> = Vec::new();
        let mut lists = Vec::new();
        for map in self.live() {
            let mut list = Vec::new();
            for m in map.preference_list(p) {
                let i = match members.iter().position(|x| x.id == m.id) {
                    Some(i) => i,
                    None => {
                        members.push(m);
                        members.len() - 1
                    }
                };
                list.push(i);
            }
            lists.push(list);
        }
        Intended { members, lists }
    }
}

/// The intended replicas of a write: one entry per distinct node, and for each live map
/// the positions of its preference list among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intended<'a> {
    pub members: Vec<&'a Member>,
    pub lists: Vec<Vec<usize>>,
}

impl Intended<'_> {
    /// The position of node `id`, if it is intended.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }
}

/// Coverage of a write's intended replicas: it succeeds when, in every live map's
/// preference list, W intended replicas (or all, if the list is shorter) are covered.
#[derive(Debug, Clone)]
pub struct WriteQuorum {
    lists: Vec<Vec<usize>>,
    needed: usize,
    covered: Vec<bool>,
    acks: usize,
}

impl WriteQuorum {
    /// A write meant for `intended`, W = `needed`.
    pub fn new(intended: &Intended<'_>, needed: usize) -> Self {
        Self {
            lists: intended.lists.clone(),
            needed,
            covered: vec![false; intended.members.len()],
            acks: 0,
        }
    }

    /// One list of `intended` replicas (positions `0..intended`), W = `needed`.
    pub fn single(intended: usize, needed: usize) -> Self {
        Self {
            lists: vec![(0..intended).collect()],
            needed,
            covered: vec![false; intended],
            acks: 0,
        }
    }

    /// Records that intended replica `i` is covered. Returns true if that reached the
    /// quorum now.
    pub fn ack(&mut self, i: usize) -> bool {
        let before = self.reached();
        if let Some(c) = self.covered.get_mut(i) {
            if !*c {
                *c = true;
                self.acks += 1;
            }
        }
        !before && self.reached()
    }

    /// Whether every list has W covered replicas (or all of its own).
    pub fn reached(&self) -> bool {
        self.lists.iter().all(|list| {
            let covered = list.iter().filter(|&&i| self.covered[i]).count();
            covered >= self.needed.min(list.len())
        })
    }

    /// Distinct intended replicas covered.
    pub fn acks(&self) -> usize {
        self.acks
    }

    /// Covered replicas of the list that has the fewest.
    pub fn weakest(&self) -> usize {
        self.lists
            .iter()
            .map(|list| list.iter().filter(|&&i| self.covered[i]).count())
            .min()
            .unwrap_or(0)
    }

    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Intended replicas nobody acknowledged for.
    pub fn uncovered(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.covered.len()).filter(|&i| !self.covered[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::plan;
    use proptest::prelude::*;

    fn members(ids: impl IntoIterator<Item = usize>) -> Vec<Member> {
        ids.into_iter()
            .map(|i| Member::new(format!("node-{i:02}"), format!("h{i}:1")))
            .collect()
    }

    fn state(from: usize, to: usize, q: u32) -> MapState {
        let old = plan(None, &members(0..from), q, 3).unwrap();
        let new = plan(Some(&old), &members(0..to), q, 3).unwrap();
        MapState::in_force(old).commit(new).unwrap().unwrap()
    }

    #[test]
    fn a_member_left_once_the_change_that_removes_it_is_finalized() {
        let shrinking = state(4, 3, 16);
        let before = MapState::in_force(shrinking.current.clone().unwrap());
        assert!(shrinking.left_since(&before).is_empty(), "still pending");
        let done = shrinking.finalize(2).unwrap().unwrap();
        assert_eq!(done.left_since(&shrinking), ["node-03"]);
        assert_eq!(done.left_since(&before), ["node-03"], "learned in one step");
        // An aborted addition: the newcomer never joined.
        let growing = state(3, 4, 16);
        let aborted = growing.abort(2).unwrap();
        assert!(aborted.left_since(&growing).is_empty());
    }

    #[test]
    fn transitions_compare_and_set_the_epoch() {
        let old = plan(None, &members(0..3), 16, 3).unwrap();
        let s = MapState::in_force(old.clone());
        let a = plan(Some(&old), &members(0..4), 16, 3).unwrap();
        let b = plan(Some(&old), &members(0..5), 16, 3).unwrap();
        let committed = s.commit(a.clone()).unwrap().unwrap();
        assert_eq!(committed.version, 2);
        assert_eq!(committed.commit(a.clone()).unwrap(), None, "idempotent");
        assert_eq!(
            committed.commit(b.clone()).unwrap_err(),
            TransitionError::AlreadyPending { pending: 2 },
            "the loser of a race is told"
        );
        let stale = plan(None, &members(0..4), 16, 3).unwrap();
        assert_eq!(
            s.commit(stale).unwrap_err(),
            TransitionError::WrongEpoch {
                got: 1,
                expected: 2
            }
        );
        assert_eq!(s.finalize(2).unwrap_err(), TransitionError::NotPending(2));
        let done = committed.finalize(2).unwrap().unwrap();
        assert_eq!((done.version, done.current.as_ref()), (3, Some(&a)));
        assert_eq!(done.finalize(2).unwrap(), None, "idempotent");
        let aborted = committed.abort(2).unwrap();
        assert_eq!((aborted.version, aborted.pending.as_ref()), (3, None));
        assert_eq!(aborted.abort(2), None, "idempotent");
        // After an abort, the same epoch may be committed again, at a higher version.
        let again = aborted.commit(b).unwrap().unwrap();
        assert_eq!(again.version, 4);
        assert!(again.supersedes(&committed) && !committed.supersedes(&again));
    }

    #[test]
    fn the_first_map_is_pending_until_finalized_and_cannot_be_aborted() {
        let first = plan(None, &members(0..3), 16, 3).unwrap();
        let s = MapState::default().commit(first.clone()).unwrap().unwrap();
        assert_eq!(s.reads(), Some(&first));
        assert!(!s.changing() && s.moves().is_empty());
        assert_eq!(s.claimant().unwrap().id, "node-00");
        let claimant = |down: &[&str]| {
            let down: Vec<String> = down.iter().map(|d| d.to_string()).collect();
            s.acting_claimant(|id| down.iter().any(|d| d == id))
                .unwrap()
                .id
                .clone()
        };
        assert_eq!(claimant(&[]), "node-00");
        assert_eq!(
            claimant(&["node-00"]),
            "node-01",
            "a dead claimant is stood in for"
        );
        assert_eq!(claimant(&["node-00", "node-01"]), "node-02");
        assert_eq!(claimant(&["node-01"]), "node-00");
        assert_eq!(claimant(&["node-00", "node-01", "node-02"]), "node-00");
        assert_eq!(s.abort(1), None);
        assert_eq!(s.finalize(1).unwrap().unwrap().current, Some(first));
    }

    #[test]
    fn states_of_one_version_resolve_the_same_way_everywhere() {
        let a = state(3, 4, 16);
        let b = state(3, 5, 16);
        assert_eq!(a.version, b.version);
        assert!(a.supersedes(&b) != b.supersedes(&a));
        assert!(!a.supersedes(&a));
    }

    #[test]
    fn state_round_trips_through_serde() {
        let s = state(3, 4, 64);
        let json = serde_json::to_string(&s).unwrap();
        let back: MapState = serde_json::from_str(&json).unwrap();
        let back = back.rebuild().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.intended(5), s.intended(5));
    }

    #[test]
    fn moves_pair_new_replicas_with_the_ones_they_replace() {
        let s = state(3, 4, 64);
        let moves = s.moves();
        let (old, new) = (s.current.as_ref().unwrap(), s.pending.as_ref().unwrap());
        for mv in &moves {
            assert!(new.is_replica(mv.partition, &mv.to));
            assert!(!old.is_replica(mv.partition, &mv.to));
            let from = mv.from.as_ref().unwrap();
            assert!(old.is_replica(mv.partition, from) && !new.is_replica(mv.partition, from));
        }
        let added: usize = (0..64)
            .map(|p| {
                new.preference_list(p)
                    .filter(|m| !old.is_replica(p, &m.id))
                    .count()
            })
            .sum();
        assert_eq!(moves.len(), added);
        assert!(!moves.is_empty());
    }

    #[test]
    fn a_single_list_quorum_counts_distinct_replicas() {
        let mut q = WriteQuorum::single(3, 2);
        assert!(!q.ack(0));
        assert!(
            !q.ack(0),
            "a second ack from the same replica does not count"
        );
        assert!(!q.ack(7), "a stranger does not count");
        assert_eq!(q.uncovered().collect::<Vec<_>>(), [1, 2]);
        assert!(q.ack(2));
        assert!(!q.ack(1), "reaching it again is not news");
        assert_eq!(q.acks(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// With two live maps, a write acknowledged under the rule (W in the old list and
        /// W in the new one) is on W replicas of whichever map ends up in force, whatever
        /// replicas acknowledged and in whatever order.
        #[test]
        fn a_write_acknowledged_under_both_maps_survives_either_outcome(
            from in 3usize..7,
            to in 3usize..7,
            p in 0u32..64,
            w in 1usize..=3,
            order in proptest::collection::vec(0usize..16, 0..16),
        ) {
            let s = state(from, to, 64);
            let intended = s.intended(p);
            let mut q = WriteQuorum::new(&intended, w);
            let mut acked = BTreeSet::new();
            for i in order {
                if q.reached() {
                    break;
                }
                let i = i % intended.members.len();
                acked.insert(intended.members[i].id.clone());
                q.ack(i);
            }
            if q.reached() {
                let finalized = s.finalize(s.pending.as_ref().unwrap().epoch).unwrap().unwrap();
                let aborted = s.abort(s.pending.as_ref().unwrap().epoch).unwrap();
                for outcome in [finalized, aborted] {
                    let map = outcome.current.unwrap();
                    let on = map.preference_list(p).filter(|m| acked.contains(&m.id)).count();
                    prop_assert!(on >= w, "{on} of W={w} replicas in epoch {}", map.epoch);
                }
            }
        }
    }
}
