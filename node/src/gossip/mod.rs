//! Gossip: how nodes learn of each other, of each other's heartbeats and of the newest
//! partition map, with no node in charge.
//!
//! Every node keeps a [`state::View`]: one entry per node it knows of, itself included.
//! Once a round (`gossip_interval_ms`, 1 s by default) it counts its own heartbeat up and
//! exchanges with `gossip_fanout` random peers ([`peers::choose`]): it pushes all its
//! entries (an entry is about as small as a digest of it would be) and pulls back the
//! ones the peer has newer. The map state's version rides along: the side with the older
//! state gets the newer one, and installs it only if it is of the same cluster with a
//! higher version ([`state::adopt`]); a node that made a transition pushes it to every
//! node at once ([`push_state`]). Every heartbeat seen to advance is an arrival for the failure
//! detector ([`crate::health`]), whose verdicts decide which replicas coordinators skip
//! and when hints are delivered. Membership stays explicit: gossip tells who is alive and
//! spreads committed map states, it never moves a partition by itself.
//!
//! A node may start from `seeds` (addresses) alone: [`bootstrap`] asks them until one
//! answers with a map. A (re)started node's first round talks to every node and seed it
//! knows, so it is trusted again everywhere within one round; a node stopping cleanly
//! says so ([`farewell`]), so peers believe it down at once.
//!
//! The exchange is the `Gossip.Exchange` RPC on the node's gRPC port
//! (`proto/dynamo/v1/gossip.proto`, served by [`crate::service::gossip`]).

pub mod peers;
pub mod state;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::map_state::MapState;
use dynamo_proto::maps;
use dynamo_proto::v1::{GossipRequest, GossipResponse};
use parking_lot::Mutex;
use rand::SeedableRng;

use crate::failure_detection::Verdict;
use crate::network::{PeerError, Transport};
use crate::node::Node;
use peers::Peer;
use state::{Entry, View};

/// How long one exchange may take: a peer that answers later is as good as silent.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a node without a map asks its seeds again.
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(500);
/// Verdicts are recomputed this many times a round.
const REFRESHES_PER_ROUND: u32 = 10;

/// This node's gossip state.
pub struct Gossip {
    me: String,
    view: Mutex<View>,
    seeds: Vec<String>,
    interval: Duration,
    fanout: usize,
}

impl Gossip {
    /// The gossip of a node whose own entry is `me`.
    pub fn new(me: Entry, seeds: Vec<String>, interval: Duration, fanout: usize) -> Self {
        Self {
            me: me.node_id.clone(),
            view: Mutex::new(View::new(me)),
            seeds,
            interval,
            fanout,
        }
    }

    /// Every entry known, this node's own included.
    pub fn entries(&self) -> Vec<Entry> {
        self.view.lock().entries().cloned().collect()
    }

    /// Records the map-state version this node holds, for its next exchanges.
    pub fn set_map_version(&self, me: &str, version: u64) {
        self.view.lock().set_map_version(me, version);
    }

    /// Forgets node `id`, which left the cluster (see [`View::forget`]).
    pub fn forget(&self, id: &str, now_ms: u64) {
        self.view.lock().forget(id, now_ms);
    }

    /// The address of node `id`: from its entry, or the last known one if it left.
    pub fn addr_of(&self, id: &str) -> Option<String> {
        let view = self.view.lock();
        match view.get(id) {
            Some(e) => Some(e.addr.clone()),
            None => view.left_addr(id).map(str::to_owned),
        }
    }

    /// The entry of node `id`, if known.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.view.lock().get(id).cloned()
    }

    fn request(&self, cluster_id: &str, state: &MapState, with_state: bool) -> GossipRequest {
        GossipRequest {
            cluster_id: cluster_id.to_owned(),
            entries: self.entries().iter().map(wire::entry_to_proto).collect(),
            state_version: state.version,
            state: with_state.then(|| maps::state_to_proto(state)),
            state_digest: state.digest(),
        }
    }
}

/// Merges gossiped entries into the node's view and tells the failure detector of every
/// heartbeat that advanced. Entries about this node itself are not taken (only it writes
/// its own), but one newer than its own is outranked.
fn absorb(node: &Node, entries: impl IntoIterator<Item = Entry>) {
    let me = &node.gossip.me;
    let (mine, theirs): (Vec<Entry>, Vec<Entry>) =
        entries.into_iter().partition(|e| &e.node_id == me);
    let advanced = {
        let mut view = node.gossip.view.lock();
        for ghost in &mine {
            if view.outrank(me, ghost) {
                tracing::warn!(
                    generation = ghost.generation,
                    "gossip: peers held a newer entry of this node (an earlier process's \
                     clock ran ahead); this process's generation now outranks it"
                );
            }
        }
        view.merge(theirs)
    };
    for a in advanced {
        if a.new {
            tracing::info!(peer = %a.node_id, addr = %a.entry.addr, "gossip: learned of a node");
        } else if a.restarted {
            tracing::info!(peer = %a.node_id, incarnation = a.entry.incarnation, "gossip: node restarted");
        }
        let stopping = a.entry.status == state::Status::Stopping;
        if let Some(change) = node
            .health
            .heartbeat(&a.node_id, a.entry.generation, stopping)
        {
            on_change(node, &change);
        }
    }
}

/// Logs and counts a verdict change; a peer alive again wakes hinted handoff.
fn on_change(node: &Node, c: &crate::health::Change) {
    tracing::info!(peer = %c.peer, from = c.from.as_str(), to = c.to.as_str(), "failure detector");
    node.metrics.peer_state_changes.inc();
    if c.to == Verdict::Alive {
        node.handoff_wakeup.notify_one();
    }
}

/// Takes a gossiped map state if [`state::adopt`] allows it.
fn offer_state(node: &Node, proto: dynamo_proto::v1::MapState) {
    let incoming = match maps::state_from_proto(proto) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "gossip: refused an invalid map state");
            return;
        }
    };
    let held = node.live();
    let cluster = &node.cfg.cluster_id;
    // Exchanges are refused across clusters, so a state that reached us is of ours.
    let q = node.store.partitions();
    match state::adopt(cluster, &held.state, q, cluster, &incoming) {
        Ok(()) => match node.install(incoming) {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "gossip: could not install a map state"),
        },
        Err(state::Refused::NotNewer { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "gossip: refused a map state"),
    }
}

/// Answers a peer's exchange: takes its newer entries (and its map, if sent and newer),
/// and returns what it lacks.
pub fn answer(node: &Node, req: GossipRequest) -> Result<GossipResponse, tonic::Status> {
    if req.cluster_id != node.cfg.cluster_id {
        return Err(tonic::Status::failed_precondition(format!(
            "gossip from cluster {:?} refused by a node of cluster {:?}",
            req.cluster_id, node.cfg.cluster_id
        )));
    }
    let theirs: Vec<Entry> = req
        .entries
        .into_iter()
        .map(wire::entry_from_proto)
        .collect();
    absorb(node, theirs.iter().cloned());
    if let Some(state) = req.state {
        offer_state(node, state);
    }
    let live = node.live();
    let entries = node.gossip.view.lock().newer_than(&theirs);
    let (send, want) = compare_states(&live.state, req.state_version, req.state_digest);
    Ok(GossipResponse {
        entries: entries.iter().map(wire::entry_to_proto).collect(),
        state: send.then(|| maps::state_to_proto(&live.state)),
        state_wanted: want,
    })
}

/// Whether to send `ours` to a peer holding the state of `version` and `digest`, and
/// whether to ask for the peer's. By version; at equal versions, when the digests differ
/// (two claimants committed one version, each on its own side of a partition), both
/// ways: the receiver keeps the state with the lower digest ([`MapState::supersedes`]),
/// so every node ends with the same one. Without this, the two sides held their states
/// forever (found by the simulation, seeds 671 and 751).
pub fn compare_states(ours: &MapState, version: u64, digest: u64) -> (bool, bool) {
    match ours.version.cmp(&version) {
        std::cmp::Ordering::Greater => (true, false),
        std::cmp::Ordering::Less => (false, true),
        std::cmp::Ordering::Equal => {
            let differ = digest != 0 && ours.version > 0 && digest != ours.digest();
            (differ, differ)
        }
    }
}

/// The peers this node knows: members of its map (at the address the map gives, which is
/// how this node was told to reach them) and nodes known by gossip only.
fn known_peers(node: &Node) -> Vec<Peer> {
    let live = node.live();
    let members = live.state.members();
    let mut known: Vec<Peer> = members
        .iter()
        .filter(|m| m.id != node.id())
        .map(|m| Peer {
            id: Some(m.id.clone()),
            addr: m.addr.clone(),
        })
        .collect();
    for e in node.gossip.view.lock().entries() {
        if e.node_id != node.id() && live.state.member(&e.node_id).is_none() {
            known.push(Peer {
                id: Some(e.node_id.clone()),
                addr: e.addr.clone(),
            });
        }
    }
    known
}

/// One exchange with `peer`: push, pull, and the map whichever way it is newer.
async fn exchange(node: &Node, peer: &Peer, push: bool) -> Result<(), PeerError> {
    let live = node.live();
    let mut req = node.gossip.request(&node.cfg.cluster_id, &live.state, push);
    let resp = node
        .transport
        .gossip(&peer.addr, req.clone(), EXCHANGE_TIMEOUT)
        .await?;
    absorb(node, resp.entries.into_iter().map(wire::entry_from_proto));
    if let Some(state) = resp.state {
        offer_state(node, state);
    }
    if resp.state_wanted && !push {
        req.state = Some(maps::state_to_proto(&live.state));
        node.transport
            .gossip(&peer.addr, req, EXCHANGE_TIMEOUT)
            .await?;
    }
    Ok(())
}

/// One round: count the heartbeat up, exchange with the chosen peers.
pub async fn round(node: &Node, first: bool) {
    node.gossip.view.lock().beat(node.id());
    let chosen = {
        let known = known_peers(node);
        peers::choose(
            &known,
            &node.gossip.seeds,
            node.gossip.fanout,
            first,
            &mut rand::rngs::StdRng::seed_from_u64(crate::determinism::random_u64()),
        )
    };
    let exchanges = chosen.iter().map(|p| async move {
        if let Err(e) = exchange(node, p, false).await {
            tracing::debug!(peer = ?p.id, addr = %p.addr, error = %e, "gossip exchange failed");
        }
    });
    futures::future::join_all(exchanges).await;
}

/// Gossips and refreshes the failure detector's verdicts until the node is stopping.
pub async fn run(node: Arc<Node>) {
    for m in node.live().state.members() {
        if m.id != node.id() {
            node.health.watch(&m.id);
        }
    }
    let stopping = node.stopping();
    tokio::pin!(stopping);
    let mut rounds = tokio::time::interval(node.gossip.interval);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(node.gossip.interval / REFRESHES_PER_ROUND);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopping => return,
            _ = rounds.tick() => {
                // A round runs beside the refreshes: a slow peer must not stall verdicts.
                let node = node.clone();
                tokio::spawn(async move { round(&node, first).await });
                first = false;
            }
            _ = refresh.tick() => {
                for change in node.health.refresh() {
                    on_change(&node, &change);
                }
            }
        }
    }
}

/// Tells every known peer that this node is stopping (best effort, one short exchange
/// each), so that they stop sending it requests at once.
pub async fn farewell(node: &Node) {
    node.gossip.view.lock().stopping(node.id());
    let known = known_peers(node);
    let exchanges = known.iter().map(|p| exchange(node, p, false));
    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, futures::future::join_all(exchanges)).await;
}

/// Pushes this node's map state to every node it knows (after a transition it made), so
/// that it does not wait for gossip to spread. Returns the ids of those that did not
/// answer.
pub async fn push_state(node: &Node) -> Vec<String> {
    let known = known_peers(node);
    let exchanges = known.iter().map(|p| async move {
        match exchange(node, p, true).await {
            Ok(()) => None,
            Err(e) => {
                tracing::info!(peer = ?p.id, error = %e, "could not push the map state");
                Some(p.id.clone().unwrap_or_else(|| p.addr.clone()))
            }
        }
    });
    futures::future::join_all(exchanges)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// For a node that holds no map yet: asks `seeds` for the cluster's map state, up to
/// `rounds` times over (forever with `None`), until one answers with a map. Returns the
/// state (if one answered) and the entries learned.
pub async fn bootstrap(
    transport: &dyn Transport,
    cluster_id: &str,
    me: &Entry,
    seeds: &[String],
    rounds: Option<usize>,
) -> (Option<MapState>, Vec<Entry>) {
    let req = GossipRequest {
        cluster_id: cluster_id.to_owned(),
        entries: vec![wire::entry_to_proto(me)],
        state_version: 0,
        state: None,
        state_digest: 0,
    };
    let mut learned = Vec::new();
    let mut round = 0;
    loop {
        for seed in seeds {
            match transport.gossip(seed, req.clone(), EXCHANGE_TIMEOUT).await {
                Ok(resp) => {
                    learned.extend(resp.entries.into_iter().map(wire::entry_from_proto));
                    match resp.state.map(maps::state_from_proto) {
                        Some(Ok(state)) if state.reads().is_some() => {
                            tracing::info!(seed = %seed, version = state.version, "learned the map state from a seed");
                            return (Some(state), learned);
                        }
                        Some(Ok(_)) | None => tracing::info!(seed = %seed, "seed has no map yet"),
                        Some(Err(e)) => {
                            tracing::warn!(seed = %seed, error = %e, "seed sent an invalid map state")
                        }
                    }
                }
                Err(e) => tracing::info!(seed = %seed, error = %e, "seed did not answer"),
            }
        }
        round += 1;
        if rounds.is_some_and(|r| round >= r) {
            return (None, learned);
        }
        tokio::time::sleep(BOOTSTRAP_RETRY).await;
    }
}

/// Takes the entries a bootstrap learned (see [`bootstrap`]).
pub fn seed_view(node: &Node, entries: Vec<Entry>) {
    absorb(node, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::{planner, Member};

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            addr: format!("{id}:1"),
            zone: None,
        }
    }

    /// Two claimants' states of one version: each side sends its state and asks for the
    /// other's, and only the one with the lower digest supersedes the other.
    #[test]
    fn two_states_of_one_version_are_exchanged_and_the_lower_digest_wins() {
        let five: Vec<Member> = ["n1", "n2", "n3", "n4", "n5"].map(member).into();
        let first = MapState::in_force(planner::plan(None, &five, 16, 3).expect("a map"));
        let commit = |members: &[Member]| {
            let map = planner::plan(first.current.as_ref(), members, 16, 3).expect("a map");
            first.commit(map).expect("commits").expect("a new state")
        };
        let a = commit(&five[1..]);
        let b = commit(&[five.clone(), vec![member("n6")]].concat());
        assert_eq!(a.version, b.version);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(compare_states(&a, b.version, b.digest()), (true, true));
        assert_eq!(compare_states(&b, a.version, a.digest()), (true, true));
        assert_ne!(a.supersedes(&b), b.supersedes(&a), "exactly one wins");
        // The same state, a newer or older one, and a peer that sends no digest.
        assert_eq!(compare_states(&a, a.version, a.digest()), (false, false));
        assert_eq!(compare_states(&a, a.version + 1, 7), (false, true));
        assert_eq!(
            compare_states(&a, first.version, first.digest()),
            (true, false)
        );
        assert_eq!(compare_states(&a, a.version, 0), (false, false));
        // The same state as another node reaches the members (through proxies): nothing
        // to exchange, and neither replaces the other.
        let mut proxied = a.clone();
        for m in proxied
            .pending
            .iter_mut()
            .flat_map(|m| m.members.iter_mut())
        {
            m.addr = format!("proxy-{}", m.addr);
        }
        assert_eq!(
            compare_states(&a, proxied.version, proxied.digest()),
            (false, false)
        );
        assert!(!proxied.supersedes(&a) && !a.supersedes(&proxied));
    }
}
