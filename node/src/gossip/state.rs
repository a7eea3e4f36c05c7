//! The gossiped membership state, and how two views of it merge. Pure logic.
//!
//! Every node has one [`Entry`] per node it knows of. Only a node itself changes its own
//! entry, and every change makes it larger in the entries' order, whose first keys are
//! the version (`generation`, `heartbeat`): the generation grows on every process start,
//! the heartbeat once a gossip round. Merging keeps, for each node, the largest entry
//! either side has; that is a join (commutative, associative, idempotent), so views that
//! exchanged the same entries in any order and any number of times agree.
//!
//! The map state travels with gossip too; [`adopt`] says when a node takes a peer's.

use std::collections::BTreeMap;

use dynamo_core::map_state::MapState;

/// What a node says of itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Running.
    Alive,
    /// Shutting down cleanly: believe it down at once rather than after a silence.
    Stopping,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Alive => "alive",
            Status::Stopping => "stopping",
        }
    }

    /// Reads a gossiped status; anything unknown is taken as alive.
    pub fn parse(s: &str) -> Self {
        match s {
            "stopping" => Status::Stopping,
            _ => Status::Alive,
        }
    }
}

/// One node's gossiped entry. Field order matters: the derived order compares the
/// version first, and the rest only breaks ties (deterministically) between entries no
/// node should ever make with one version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Grows on every start of the node's process.
    pub generation: u64,
    /// Counted up by the node once a gossip round.
    pub heartbeat: u64,
    pub node_id: String,
    /// Address of the node's peer API.
    pub addr: String,
    /// Address of the node's client API; empty when it is `addr`.
    pub client_addr: String,
    pub zone: Option<String>,
    /// The node's actor incarnation.
    pub incarnation: u64,
    pub status: Status,
    /// The version of the map state the node holds.
    pub map_version: u64,
}

impl Entry {
    /// The version an entry is ordered by.
    pub fn version(&self) -> (u64, u64) {
        (self.generation, self.heartbeat)
    }
}

/// A change merging brought: the entry of `node_id` is newer than before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advanced {
    pub node_id: String,
    /// The node was not known before.
    pub new: bool,
    /// The node's process restarted (its generation changed).
    pub restarted: bool,
    pub entry: Entry,
}

/// Every entry a node knows, by node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    entries: BTreeMap<String, Entry>,
    /// Nodes that left the cluster (see [`View::forget`]).
    left: BTreeMap<String, Left>,
}

/// What a view keeps of a node that left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Left {
    /// Entries of processes started before this (generations are start times), still
    /// gossiped by peers that have not forgotten the node yet, are not taken back.
    generation: u64,
    /// Its last known address, to ask it whether it still holds hints.
    addr: Option<String>,
}

impl View {
    /// A view knowing only `me`.
    pub fn new(me: Entry) -> Self {
        let mut v = Self::default();
        v.entries.insert(me.node_id.clone(), me);
        v
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes every incoming entry larger than the one known, and says which advanced.
    pub fn merge(&mut self, incoming: impl IntoIterator<Item = Entry>) -> Vec<Advanced> {
        let mut advanced = Vec::new();
        for e in incoming {
            if let Some(gone) = self.left.get(&e.node_id) {
                if e.generation <= gone.generation {
                    continue;
                }
                // A new process under the id of a node that left: a node that may be
                // added again, known like any other.
                self.left.remove(&e.node_id);
            }
            let (new, restarted) = match self.entries.get(&e.node_id) {
                Some(known) if *known >= e => continue,
                Some(known) => (false, known.generation != e.generation),
                None => (true, false),
            };
            advanced.push(Advanced {
                node_id: e.node_id.clone(),
                new,
                restarted,
                entry: e.clone(),
            });
            self.entries.insert(e.node_id.clone(), e);
        }
        advanced
    }

    /// The entries a peer that sent `theirs` lacks or has older.
    pub fn newer_than(&self, theirs: &[Entry]) -> Vec<Entry> {
        let known: BTreeMap<&str, &Entry> =
            theirs.iter().map(|e| (e.node_id.as_str(), e)).collect();
        self.entries
            .values()
            .filter(|e| known.get(e.node_id.as_str()).is_none_or(|k| *k < *e))
            .cloned()
            .collect()
    }

    /// Drops node `id`, which left the cluster, at wall-clock time `now_ms`: it is no
    /// longer listed, gossiped or contacted, and entries of a process of it started
    /// before (generations are start times) that peers still hold are not taken back. A
    /// process started later under the same id (a scale-out reusing the name) is taken as
    /// a new node.
    pub fn forget(&mut self, id: &str, now_ms: u64) {
        let known = self.entries.remove(id);
        let gone = self.left.entry(id.to_owned()).or_default();
        gone.generation = gone
            .generation
            .max(known.as_ref().map_or(0, |e| e.generation))
            .max(now_ms);
        if let Some(e) = known {
            gone.addr = Some(e.addr);
        }
    }

    /// The last known address of node `id`, which left the cluster.
    pub fn left_addr(&self, id: &str) -> Option<&str> {
        self.left.get(id)?.addr.as_deref()
    }

    /// Counts `id`'s heartbeat up (this node's own entry) and returns its new value.
    pub fn beat(&mut self, id: &str) -> u64 {
        let e = self.entries.get_mut(id).expect("a view knows its own node");
        e.heartbeat += 1;
        e.heartbeat
    }

    /// Makes `id`'s own entry outrank `ghost`, an entry about this node that some peer
    /// holds newer than the node's own: left by an earlier process whose clock ran ahead
    /// (generations are wall-clock times). Without this, peers would take the ghost over
    /// every heartbeat of this process, and suspect it forever. Returns whether it did.
    pub fn outrank(&mut self, id: &str, ghost: &Entry) -> bool {
        let e = self.entries.get_mut(id).expect("a view knows its own node");
        if ghost.node_id != id || ghost.version() <= e.version() {
            return false;
        }
        e.generation = ghost.generation + 1;
        e.heartbeat = 0;
        true
    }

    /// Records the map-state version `id` (this node) holds, and counts its heartbeat up
    /// so that the change spreads.
    pub fn set_map_version(&mut self, id: &str, version: u64) {
        let e = self.entries.get_mut(id).expect("a view knows its own node");
        if e.map_version != version {
            e.map_version = version;
            e.heartbeat += 1;
        }
    }

    /// Marks `id`'s own entry as stopping (and counts its heartbeat up, so that it spreads).
    pub fn stopping(&mut self, id: &str) {
        let e = self.entries.get_mut(id).expect("a view knows its own node");
        e.status = Status::Stopping;
        e.heartbeat += 1;
    }
}

/// Why a gossiped map state is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it is of cluster {theirs:?}, not {ours:?}")]
    OtherCluster { ours: String, theirs: String },
    #[error("its version {theirs} does not supersede {ours}")]
    NotNewer { ours: u64, theirs: u64 },
    #[error("it has {theirs} partitions, not {ours}: Q is fixed when a cluster is made")]
    OtherPartitionCount { ours: u32, theirs: u32 },
    #[error("it holds no map")]
    Empty,
}

/// Whether a node of cluster `ours_cluster` holding `current` (with `partitions` in its
/// store) takes `incoming`, gossiped by a peer of `theirs_cluster`: only a state of the
/// same cluster and partition count that supersedes its own (see
/// [`MapState::supersedes`]).
pub fn adopt(
    ours_cluster: &str,
    current: &MapState,
    partitions: u32,
    theirs_cluster: &str,
    incoming: &MapState,
) -> Result<(), Refused> {
    if ours_cluster != theirs_cluster {
        return Err(Refused::OtherCluster {
            ours: ours_cluster.to_owned(),
            theirs: theirs_cluster.to_owned(),
        });
    }
    let Some(q) = incoming.partitions() else {
        return Err(Refused::Empty);
    };
    if !incoming.supersedes(current) {
        return Err(Refused::NotNewer {
            ours: current.version,
            theirs: incoming.version,
        });
    }
    if q != partitions || incoming.live().any(|m| m.partitions != q) {
        return Err(Refused::OtherPartitionCount {
            ours: partitions,
            theirs: q,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::{planner, Member};
    use proptest::prelude::*;

    fn entry(id: &str, generation: u64, heartbeat: u64) -> Entry {
        Entry {
            generation,
            heartbeat,
            node_id: id.into(),
            addr: format!("{id}:1"),
            client_addr: String::new(),
            zone: None,
            incarnation: 7,
            status: Status::Alive,
            map_version: 0,
        }
    }

    fn view(entries: &[Entry]) -> View {
        let mut v = View::default();
        v.merge(entries.iter().cloned());
        v
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (0..4usize, 0..3u64, 0..5u64, any::<bool>()).prop_map(|(id, g, h, stopping)| {
            let mut e = entry(["a", "b", "c", "d"][id], g, h);
            if stopping {
                e.status = Status::Stopping;
            }
            e
        })
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            a in prop::collection::vec(arb_entry(), 0..8),
            b in prop::collection::vec(arb_entry(), 0..8),
            c in prop::collection::vec(arb_entry(), 0..8),
        ) {
            let ab = { let mut v = view(&a); v.merge(b.iter().cloned()); v };
            let ba = { let mut v = view(&b); v.merge(a.iter().cloned()); v };
            prop_assert_eq!(&ab, &ba);
            let ab_c = { let mut v = ab.clone(); v.merge(c.iter().cloned()); v };
            let bc = { let mut v = view(&b); v.merge(c.iter().cloned()); v };
            let a_bc = { let mut v = view(&a); v.merge(bc.entries().cloned()); v };
            prop_assert_eq!(&ab_c, &a_bc);
            let mut again = ab.clone();
            prop_assert!(again.merge(b.iter().cloned()).is_empty(), "nothing advances twice");
            prop_assert_eq!(&again, &ab);
        }

        #[test]
        fn a_push_pull_leaves_both_sides_equal(
            a in prop::collection::vec(arb_entry(), 0..8),
            b in prop::collection::vec(arb_entry(), 0..8),
        ) {
            let (mut va, mut vb) = (view(&a), view(&b));
            // a pushes everything; b takes what is newer and answers with what a lacks.
            let pushed: Vec<Entry> = va.entries().cloned().collect();
            vb.merge(pushed.iter().cloned());
            va.merge(vb.newer_than(&pushed));
            prop_assert_eq!(va, vb);
        }
    }

    #[test]
    fn the_higher_version_wins() {
        let mut v = view(&[entry("a", 1, 5)]);
        assert!(v.merge([entry("a", 1, 4)]).is_empty(), "older heartbeat");
        let adv = v.merge([entry("a", 1, 6)]);
        assert_eq!(adv.len(), 1);
        assert!(!adv[0].new && !adv[0].restarted);
        // A restart: a new generation beats any heartbeat of the old one.
        let adv = v.merge([entry("a", 2, 0)]);
        assert!(adv[0].restarted);
        assert_eq!(v.get("a").unwrap().version(), (2, 0));
        assert!(v.merge([entry("a", 1, 1000)]).is_empty());
        let adv = v.merge([entry("b", 1, 0)]);
        assert!(adv[0].new);
    }

    #[test]
    fn newer_than_lists_what_the_peer_lacks() {
        let v = view(&[entry("a", 1, 5), entry("b", 1, 1), entry("c", 2, 0)]);
        let theirs = [entry("a", 1, 5), entry("b", 1, 2)];
        let ids: Vec<String> = v
            .newer_than(&theirs)
            .into_iter()
            .map(|e| e.node_id)
            .collect();
        assert_eq!(ids, ["c"]);
    }

    #[test]
    fn beat_and_stopping_advance_the_own_entry() {
        let mut v = View::new(entry("me", 3, 0));
        assert_eq!(v.beat("me"), 1);
        let before = v.get("me").unwrap().clone();
        v.stopping("me");
        let after = v.get("me").unwrap();
        assert!(*after > before);
        assert_eq!(after.status, Status::Stopping);
    }

    #[test]
    fn a_node_that_left_is_forgotten_until_a_new_process_of_it_appears() {
        let mut v = view(&[entry("me", 1, 0), entry("gone", 5, 9), entry("b", 1, 1)]);
        v.forget("gone", 4);
        assert!(v.get("gone").is_none());
        assert_eq!(
            v.left_addr("gone"),
            Some("gone:1"),
            "still asked for its hints"
        );
        // Peers that have not forgotten it yet keep gossiping its last entries.
        assert!(v
            .merge([entry("gone", 5, 9), entry("gone", 5, 30)])
            .is_empty());
        assert!(v.get("gone").is_none());
        let theirs = [entry("me", 1, 0), entry("b", 1, 1)];
        assert!(v.newer_than(&theirs).is_empty(), "it is not passed on");
        // The same id started again (a scale-out reusing the name) is a new node.
        let adv = v.merge([entry("gone", 6, 0)]);
        assert_eq!(adv.len(), 1);
        assert!(adv[0].new);
        assert_eq!(v.get("gone").unwrap().version(), (6, 0));
        // Forgetting a node never heard of keeps out the processes started before.
        v.forget("never", 10);
        assert!(v.merge([entry("never", 3, 3)]).is_empty());
        assert_eq!(v.merge([entry("never", 11, 0)]).len(), 1);
    }

    #[test]
    fn a_ghost_of_an_earlier_process_is_outranked() {
        let mut v = View::new(entry("me", 100, 3));
        assert!(!v.outrank("me", &entry("me", 100, 3)), "an echo of itself");
        assert!(!v.outrank("me", &entry("me", 90, 50)), "an older process");
        assert!(v.outrank("me", &entry("me", 120, 7)));
        let mine = v.get("me").unwrap().clone();
        assert!(mine > entry("me", 120, 7));
        let mut peer = view(&[entry("me", 120, 7)]);
        assert_eq!(peer.merge([mine]).len(), 1, "peers take it over the ghost");
    }

    fn state(version: u64, q: u32) -> MapState {
        let members: Vec<Member> = (1..=3)
            .map(|i| Member::new(format!("n{i}"), format!("h:{i}")))
            .collect();
        let mut s = MapState::in_force(planner::plan(None, &members, q, 3).unwrap());
        s.version = version;
        s
    }

    #[test]
    fn a_state_is_adopted_only_from_the_same_cluster_when_it_supersedes() {
        let current = state(3, 64);
        assert_eq!(adopt("c", &current, 64, "c", &state(4, 64)), Ok(()));
        let none = MapState::default();
        assert_eq!(
            adopt("c", &none, 64, "c", &state(1, 64)),
            Ok(()),
            "none yet"
        );
        assert_eq!(
            adopt("c", &state(1, 64), 64, "c", &none),
            Err(Refused::Empty)
        );
        assert!(matches!(
            adopt("c", &current, 64, "c", &state(3, 64)),
            Err(Refused::NotNewer { .. })
        ));
        assert!(matches!(
            adopt("c", &current, 64, "c", &state(2, 64)),
            Err(Refused::NotNewer { .. })
        ));
        assert!(matches!(
            adopt("c", &current, 64, "other", &state(9, 64)),
            Err(Refused::OtherCluster { .. })
        ));
        assert!(matches!(
            adopt("c", &current, 64, "c", &state(9, 128)),
            Err(Refused::OtherPartitionCount { .. })
        ));
        assert!(
            matches!(
                adopt("c", &none, 64, "c", &state(1, 128)),
                Err(Refused::OtherPartitionCount { .. })
            ),
            "a node's store is shaped for its configured Q"
        );
    }
}
