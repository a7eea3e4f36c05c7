//! Helpers shared by the in-process cluster tests: starting a node on the loopback
//! transport, and the set workload (elements kept in a key's siblings) with what its
//! clients saw.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::map_state::MapState;
use dynamo_core::{planner, Member};
use dynamo_node::clock::SystemClock;
use dynamo_node::config::{NodeConfig, Replication};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::Engine;
use dynamo_node::store::Store;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{GetResponse, PutRequest};
use tonic::Request;

/// Partitions of every test cluster.
pub const Q: u32 = 16;

/// Members `n1`..`n<s>`.
pub fn members(s: usize) -> Vec<Member> {
    (1..=s)
        .map(|i| Member::new(format!("n{i}"), format!("mem:{i}")))
        .collect()
}

/// How a test node runs.
#[derive(Clone, Debug)]
pub struct Spec {
    pub n: u32,
    pub w: u32,
    pub request_timeout_ms: u64,
    /// `None`: writes are not synced; `Some(window)`: the `always` policy with that group
    /// window.
    pub sync_window: Option<Duration>,
    /// Largest value and largest sibling set a put may leave.
    pub max_value_bytes: usize,
    pub max_set_bytes: usize,
    /// Milliseconds between gossip rounds (gossip runs only where a test starts it).
    pub gossip_interval_ms: u64,
    /// Milliseconds of silence after which the failure detector holds a peer down.
    pub down_after_ms: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            n: 3,
            w: 2,
            request_timeout_ms: 500,
            sync_window: None,
            max_value_bytes: NodeConfig::default().max_value_bytes,
            max_set_bytes: NodeConfig::default().max_set_bytes,
            gossip_interval_ms: NodeConfig::default().gossip_interval_ms,
            down_after_ms: NodeConfig::default().down_after_ms,
        }
    }
}

/// Starts member `i` on `engine`, as the node binary does, and makes it reachable on
/// `net` (handoff is not started: a test runs it, or rounds of it, itself).
pub fn start_node(
    net: &Arc<LoopbackNet>,
    members: &[Member],
    i: usize,
    engine: Arc<dyn Engine>,
    spec: &Spec,
) -> Arc<Node> {
    let map = planner::plan(None, members, Q, spec.n).unwrap();
    start_node_with(net, members, i, engine, spec, MapState::in_force(map))
}

/// Starts member `i` as [`start_node`] does, holding `state` (unless its engine holds a
/// map state already, as a restarted node would).
pub fn start_node_with(
    net: &Arc<LoopbackNet>,
    members: &[Member],
    i: usize,
    engine: Arc<dyn Engine>,
    spec: &Spec,
    state: MapState,
) -> Arc<Node> {
    let m = &members[i];
    let cfg = NodeConfig {
        node_id: m.id.clone(),
        advertise: Some(m.addr.clone()),
        cluster_id: "test-cluster".into(),
        cluster_secret: "test-cluster-secret-0123456789".into(),
        members: members.to_vec(),
        replication: Replication {
            n: spec.n,
            r: 2.min(spec.n),
            w: spec.w,
        },
        partitions: Q,
        request_timeout_ms: spec.request_timeout_ms,
        max_value_bytes: spec.max_value_bytes,
        max_set_bytes: spec.max_set_bytes,
        gossip_interval_ms: spec.gossip_interval_ms,
        down_after_ms: spec.down_after_ms,
        ..NodeConfig::default()
    };
    let store = |engine| match spec.sync_window {
        None => Store::new(engine, Q, false),
        Some(window) => Store::synced(engine, Q, window),
    };
    net.start_node(cfg, engine, store, Arc::new(SystemClock), || state)
        .unwrap()
}

#[allow(unused_imports)] // each test binary uses its own part of this module
pub use dynamo_client::set_workload::{elements, values};

/// The value and context of a put that adds `element` to the set `read` holds: the
/// union of its siblings plus `element`, superseding what `read` saw.
pub fn with_element(read: GetResponse, element: &str) -> (String, Vec<u8>) {
    let mut set = elements(&read);
    set.insert(element.to_owned());
    (set.into_iter().collect::<Vec<_>>().join(","), read.context)
}

/// A client of the set workload that never reads: each put of a key is its every element
/// of that key so far, with the context its previous acknowledged put of the key
/// returned. Other clients' concurrent elements are not in its value, so they survive
/// only if a returned context covers no more than its own writes.
#[derive(Default)]
pub struct Chain {
    keys: BTreeMap<String, (Vec<u8>, BTreeSet<String>)>,
}

impl Chain {
    /// The value and context of the put that adds `element` to `key`.
    pub fn next(&mut self, key: &str, element: &str) -> (String, Vec<u8>) {
        let (context, mine) = self.keys.entry(key.to_owned()).or_default();
        mine.insert(element.to_owned());
        (
            mine.iter().cloned().collect::<Vec<_>>().join(","),
            context.clone(),
        )
    }

    /// Records the context the put of `key` returned.
    pub fn returned(&mut self, key: &str, context: Vec<u8>) {
        if let Some(k) = self.keys.get_mut(key) {
            k.0 = context;
        }
    }
}

/// Elements per key.
pub type Sets = BTreeMap<String, BTreeSet<String>>;

/// What the clients of the set workload saw.
#[derive(Default)]
pub struct Outcome {
    /// Elements whose put was acknowledged.
    pub acked: Sets,
    /// Every element a put tried to add, acknowledged or not.
    pub tried: Sets,
}

impl Outcome {
    /// Puts `value` (which adds `element` to `key`'s set) with `context` through `kv`,
    /// recording the element as tried, and as acknowledged if the put succeeds.
    /// Returns the context the put returned, if it was acknowledged.
    pub async fn put(
        &mut self,
        kv: &KvService,
        key: String,
        element: String,
        value: String,
        context: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let put = PutRequest {
            key: key.clone().into_bytes(),
            value: value.into_bytes(),
            context,
            w: None,
        };
        self.tried
            .entry(key.clone())
            .or_default()
            .insert(element.clone());
        let returned = kv.put(Request::new(put)).await.ok()?.into_inner().context;
        self.acked.entry(key).or_default().insert(element);
        Some(returned)
    }

    pub fn absorb(&mut self, other: Outcome) {
        merge(&mut self.acked, other.acked);
        merge(&mut self.tried, other.tried);
    }

    /// Panics unless `stored` (what a read of `key` from every replica holds) has every
    /// acknowledged element of `key` and nothing never tried.
    pub fn check(&self, key: &str, stored: &BTreeSet<String>) {
        let none = BTreeSet::new();
        let lost: Vec<_> = self
            .acked
            .get(key)
            .unwrap_or(&none)
            .difference(stored)
            .collect();
        assert!(
            lost.is_empty(),
            "{key}: {} acknowledged elements lost: {lost:?}",
            lost.len()
        );
        let invented: Vec<_> = stored
            .difference(self.tried.get(key).unwrap_or(&none))
            .collect();
        assert!(invented.is_empty(), "{key}: never added: {invented:?}");
    }
}

/// Panics if one dot carries different bytes on two of `nodes` for any of `keys`: a
/// reused dot (Riak's KV679) loses a version silently on every join, even when no
/// element of a set workload went missing.
pub fn assert_dots_unique(nodes: &[Arc<Node>], keys: &[String]) {
    for key in keys {
        let mut seen: BTreeMap<String, (String, Option<bytes::Bytes>)> = BTreeMap::new();
        for node in nodes {
            let set = node.store.read(key.as_bytes()).unwrap();
            for s in set.siblings() {
                let at = (node.id().to_owned(), s.value.clone());
                match seen.get(&s.dot.to_string()) {
                    Some((first, v)) => assert_eq!(
                        v,
                        &s.value,
                        "{key}: dot {} carries different bytes on {first} and {}",
                        s.dot,
                        node.id()
                    ),
                    None => {
                        seen.insert(s.dot.to_string(), at);
                    }
                }
            }
        }
    }
}

pub fn merge(into: &mut Sets, from: Sets) {
    for (k, e) in from {
        into.entry(k).or_default().extend(e);
    }
}

/// Puts `value` blind through `node` with write quorum `w`; the returned context.
pub async fn put_w(node: &Arc<Node>, key: &str, value: &str, w: u32) -> Vec<u8> {
    let req = PutRequest {
        key: key.into(),
        value: value.into(),
        context: Vec::new(),
        w: Some(w),
    };
    KvService::new(node.clone())
        .put(Request::new(req))
        .await
        .unwrap_or_else(|s| panic!("put {key}: {s:?}"))
        .into_inner()
        .context
}
