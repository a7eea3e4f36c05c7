//! An in-process [`Transport`]: nodes of one test talk through direct calls, and a test
//! can take any node "down" (calls to it fail at once, as to a refused connection),
//! partition the nodes (calls across the cut get no answer: each waits out its timeout,
//! as on a network that drops packets) and heal them.
//!
//! This runs the real coordinator, store and handoff logic of several nodes in one
//! process without sockets, for fast tests of quorum and handoff behaviour.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::map_state::MapState;
use dynamo_core::Member;
use dynamo_proto::v1::{
    DeleteResponse, FetchRequest, FetchResponse, GossipRequest, GossipResponse, PutResponse,
};
use parking_lot::Mutex;

use super::{
    ChangeCall, ChangeReply, Forward, ForwardError, Forwarded, PeerError, Transport, WriteEntry,
};
use crate::antientropy::{self, TreeAnswer, TreeQuery};
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::coordinator;
use crate::identity;
use crate::node::Node;
use crate::service::kv::get_response;
use crate::storage::Engine;
use crate::store::Store;

/// The nodes of one in-process cluster.
#[derive(Default)]
pub struct LoopbackNet {
    nodes: Mutex<HashMap<String, Weak<Node>>>,
    down: Mutex<HashSet<String>>,
    /// Links cut by a partition, each as (lower id, higher id).
    cut: Mutex<HashSet<(String, String)>>,
    /// How long every call takes to reach its node.
    latency: Mutex<Duration>,
    /// What happens to each call, if a simulation decides it (see [`Faults`]).
    faults: Mutex<Option<Arc<dyn Faults>>>,
}

/// What happens to one call from a node to another.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// How long the request takes to arrive.
    pub delay: Duration,
    /// The request is lost: the caller waits out its timeout.
    pub lose_request: bool,
    /// The call runs, but its reply is lost: the caller waits out its timeout.
    pub lose_reply: bool,
    /// The request arrives once more, this long after the first (replica writes only).
    pub duplicate: Option<Duration>,
}

/// Decides the fate of every call on a [`LoopbackNet`] (a deterministic simulation's
/// network: delays, loss, duplication, one-way partitions), and sees each one.
pub trait Faults: Send + Sync {
    /// The fate of a call of `method` from node `from` to node `to`.
    fn deliver(&self, from: &str, to: &str, method: &'static str) -> Delivery;
}

/// Why a call did not reach its node.
enum Unreached {
    /// Down: refused at once; the node never saw the call.
    Refused(PeerError),
    /// Across a partition: no answer until the caller's timeout.
    Dropped,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl LoopbackNet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes `node` reachable under its id.
    pub fn register(&self, node: &Arc<Node>) {
        self.nodes
            .lock()
            .insert(node.id().to_owned(), Arc::downgrade(node));
    }

    /// Starts a node on this network as the node binary starts one on a real network:
    /// its identity opened on `engine` (a new incarnation unless its last stop was
    /// clean), the map state the engine holds (else `state()`, what a new node learns
    /// from its seeds), its store made by `store`, and reachable under its id.
    pub fn start_node(
        self: &Arc<Self>,
        cfg: NodeConfig,
        engine: Arc<dyn Engine>,
        store: impl FnOnce(Arc<dyn Engine>) -> Store,
        clock: Arc<dyn Clock>,
        state: impl FnOnce() -> MapState,
    ) -> anyhow::Result<Arc<Node>> {
        cfg.validate()?;
        let identity = identity::open(&*engine, &cfg.node_id, &cfg.cluster_id)?;
        let state = match crate::maps::load(&*engine)? {
            Some(stored) => stored,
            None => state(),
        };
        let transport = Arc::new(LoopbackTransport::new(self.clone(), cfg.node_id.clone()));
        let node = Arc::new(Node::new(
            cfg,
            identity,
            state,
            store(engine),
            transport,
            clock,
        ));
        self.register(&node);
        Ok(node)
    }

    /// Takes `id` down (true) or brings it back (false).
    pub fn set_down(&self, id: &str, down: bool) {
        if down {
            self.down.lock().insert(id.to_owned());
        } else {
            self.down.lock().remove(id);
        }
    }

    /// Cuts every link between nodes on different `sides` (nodes on no side keep all
    /// their links), replacing any earlier partition.
    pub fn partition(&self, sides: &[&[&str]]) {
        let mut cut = self.cut.lock();
        cut.clear();
        for (i, a_side) in sides.iter().enumerate() {
            for b_side in &sides[i + 1..] {
                for a in *a_side {
                    for b in *b_side {
                        cut.insert(link(a, b));
                    }
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        self.cut.lock().clear();
    }

    /// Lets `faults` decide the fate of every later call.
    pub fn set_faults(&self, faults: Arc<dyn Faults>) {
        *self.faults.lock() = Some(faults);
    }

    fn delivery(&self, from: &str, to: &str, method: &'static str) -> Delivery {
        match &*self.faults.lock() {
            Some(f) => f.deliver(from, to, method),
            None => Delivery::default(),
        }
    }

    /// Makes every call take `latency` to reach its node (none at first).
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }

    fn reach(&self, from: &str, to: &str) -> Result<Arc<Node>, Unreached> {
        let cut = self.cut.lock();
        // No partition (the usual case): nothing to look up, nothing to allocate.
        if !cut.is_empty() && cut.contains(&link(from, to)) {
            return Err(Unreached::Dropped);
        }
        drop(cut);
        self.reach_node(to).map_err(Unreached::Refused)
    }

    /// The id of the node whose own address (in its map, else in its gossip entry) is
    /// `addr`.
    fn id_at(&self, addr: &str) -> Option<String> {
        let nodes: Vec<(String, Arc<Node>)> = self
            .nodes
            .lock()
            .iter()
            .filter_map(|(id, n)| Some((id.clone(), n.upgrade()?)))
            .collect();
        nodes
            .into_iter()
            .find(|(id, n)| {
                let own = n
                    .member(id)
                    .map(|m| m.addr)
                    .or_else(|| n.gossip.entry(id).map(|e| e.addr));
                own.as_deref() == Some(addr)
            })
            .map(|(id, _)| id)
    }

    fn reach_node(&self, id: &str) -> Result<Arc<Node>, PeerError> {
        if self.down.lock().contains(id) {
            return Err(PeerError::Status(tonic::Status::unavailable(format!(
                "{id} is down"
            ))));
        }
        self.nodes
            .lock()
            .get(id)
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                PeerError::Status(tonic::Status::unavailable(format!("{id} is not running")))
            })
    }
}

/// One node's view of a [`LoopbackNet`].
pub struct LoopbackTransport {
    net: Arc<LoopbackNet>,
    /// The node this transport sends from.
    from: String,
    /// The newest map epoch the sending node holds, sent with every replica call as the
    /// gRPC transport sends it.
    map_epoch: AtomicU64,
}

impl LoopbackTransport {
    pub fn new(net: Arc<LoopbackNet>, from: impl Into<String>) -> Self {
        Self {
            net,
            from: from.into(),
            map_epoch: AtomicU64::new(0),
        }
    }

    /// The node `to`, or the error a call to it ends with (after `timeout` when the
    /// call is dropped by a partition or lost).
    async fn reach(
        &self,
        to: &str,
        timeout: Duration,
        delivery: &Delivery,
    ) -> Result<Arc<Node>, PeerError> {
        let latency = *self.net.latency.lock() + delivery.delay;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match self.net.reach(&self.from, to) {
            Ok(_) if delivery.lose_request => {
                tokio::time::sleep(timeout).await;
                Err(PeerError::Timeout(timeout))
            }
            Ok(node) => Ok(node),
            Err(Unreached::Refused(e)) => Err(e),
            Err(Unreached::Dropped) => {
                tokio::time::sleep(timeout).await;
                Err(PeerError::Timeout(timeout))
            }
        }
    }

    /// Runs `f` on node `to` as a call of `method` would reach it, with the fate the
    /// network gives the call.
    async fn call<T, Fut>(
        &self,
        to: &str,
        method: &'static str,
        timeout: Duration,
        f: impl FnOnce(Arc<Node>) -> Fut,
    ) -> Result<T, PeerError>
    where
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let delivery = self.net.delivery(&self.from, to, method);
        let node = self.reach(to, timeout, &delivery).await?;
        let answer = f(node).await;
        if delivery.lose_reply {
            tokio::time::sleep(timeout).await;
            return Err(PeerError::Timeout(timeout));
        }
        answer
    }

    /// The id of the node at `addr`.
    fn id_at(&self, addr: &str) -> Result<String, PeerError> {
        self.net.id_at(addr).ok_or_else(|| {
            PeerError::Status(tonic::Status::unavailable(format!("nothing at {addr}")))
        })
    }
}

fn status(e: PeerError) -> tonic::Status {
    tonic::Status::unavailable(e.to_string())
}

/// The refusal `node` answers a replica call made under map epoch `epoch` with, writing
/// `entries` (see [`crate::maps::refused`]), as the gRPC replica service answers it.
fn refuse(node: &Node, epoch: u64, entries: &[WriteEntry]) -> Result<(), PeerError> {
    let written = entries.iter().filter(|e| e.hint_for.is_none());
    let held = &node.live().state;
    match crate::maps::refused(held, epoch, node.id(), written.map(|e| e.key.as_ref())) {
        Some(why) => Err(PeerError::Status(tonic::Status::failed_precondition(why))),
        None => Ok(()),
    }
}

fn internal(e: impl std::fmt::Display) -> PeerError {
    PeerError::Status(tonic::Status::internal(e.to_string()))
}

#[async_trait]
impl Transport for LoopbackTransport {
    fn set_map_epoch(&self, epoch: u64) {
        self.map_epoch.store(epoch, Ordering::Relaxed);
    }

    async fn read(&self, peer: &Member, key: Bytes, timeout: Duration) -> Result<Bytes, PeerError> {
        let epoch = self.map_epoch.load(Ordering::Relaxed);
        self.call(&peer.id, "read", timeout, |node| async move {
            refuse(&node, epoch, &[])?;
            Ok(node
                .store
                .read_raw(&key)
                .map_err(internal)?
                .unwrap_or_default())
        })
        .await
    }

    async fn write(
        &self,
        peer: &Member,
        entries: Vec<WriteEntry>,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let delivery = self.net.delivery(&self.from, &peer.id, "write");
        let epoch = self.map_epoch.load(Ordering::Relaxed);
        if let Some(after) = delivery.duplicate {
            // The same request arrives (again) later, if the link is up then; joins are
            // idempotent. With the request itself lost, this is its only, late, arrival.
            let (net, from, to) = (self.net.clone(), self.from.clone(), peer.id.clone());
            let twin = entries.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Ok(node) = net.reach(&from, &to) {
                    if refuse(&node, epoch, &twin).is_ok() {
                        let _ = node.accept(twin).await;
                    }
                }
            });
        }
        let node = self.reach(&peer.id, timeout, &delivery).await?;
        let answer = match refuse(&node, epoch, &entries) {
            Ok(()) => node.accept(entries).await.map_err(internal),
            Err(refused) => Err(refused),
        };
        if delivery.lose_reply {
            tokio::time::sleep(timeout).await;
            return Err(PeerError::Timeout(timeout));
        }
        answer
    }

    async fn tree(
        &self,
        peer: &Member,
        query: TreeQuery,
        timeout: Duration,
    ) -> Result<TreeAnswer, PeerError> {
        self.call(&peer.id, "tree", timeout, |node| async move {
            crate::determinism::blocking(move || antientropy::answer::answer(&node, query))
                .await
                .map_err(internal)?
                .map_err(internal)
        })
        .await
    }

    async fn purge(
        &self,
        peer: &Member,
        partition: dynamo_core::PartitionId,
        keys: Vec<(Bytes, u64)>,
        commit: bool,
        timeout: Duration,
    ) -> Result<Vec<bool>, PeerError> {
        self.call(&peer.id, "purge", timeout, |node| async move {
            antientropy::purge::answer(&node, partition, keys, commit)
                .await
                .map_err(internal)
        })
        .await
    }

    async fn gossip(
        &self,
        addr: &str,
        req: GossipRequest,
        timeout: Duration,
    ) -> Result<GossipResponse, PeerError> {
        let id = self.id_at(addr)?;
        self.call(&id, "gossip", timeout, |node| async move {
            crate::gossip::answer(&node, req).map_err(PeerError::Status)
        })
        .await
    }

    async fn change(
        &self,
        addr: &str,
        call: ChangeCall,
        timeout: Duration,
    ) -> Result<ChangeReply, PeerError> {
        let id = self.id_at(addr)?;
        self.call(&id, "change", timeout, |node| async move {
            crate::change::answer(&node, call)
                .await
                .map_err(|e| PeerError::Status(e.into()))
        })
        .await
    }

    async fn fetch(
        &self,
        peer: &Member,
        req: FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, PeerError> {
        self.call(&peer.id, "fetch", timeout, |node| async move {
            crate::change::transfer::serve_fetch(node, req)
                .await
                .map_err(|e| PeerError::Status(e.into()))
        })
        .await
    }

    async fn forward(
        &self,
        peer: &Member,
        req: Forward,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let timed_out = || ForwardError::TimedOut(status(PeerError::Timeout(timeout)));
        // As over gRPC, the timeout covers the trip there: a coordinator that does not
        // answer in time may have seen the request.
        let delivery = self.net.delivery(&self.from, &peer.id, "forward");
        let call = async {
            let node = match self.reach(&peer.id, timeout, &delivery).await {
                Ok(node) => node,
                Err(PeerError::Timeout(_)) => return Err(timed_out()),
                Err(e) => return Err(ForwardError::Unreachable(status(e))),
            };
            let answer = coordinate(&node, req).await.map_err(ForwardError::Failed);
            if delivery.lose_reply {
                tokio::time::sleep(timeout).await;
                return Err(timed_out());
            }
            answer
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

/// Runs a forwarded request on `node`, as its Kv service would.
async fn coordinate(node: &Arc<Node>, req: Forward) -> Result<Forwarded, tonic::Status> {
    Ok(match req {
        Forward::Get(r) => {
            let read = coordinator::read(node, Bytes::from(r.key), r.r).await?;
            Forwarded::Get(get_response(node, &read.set, read.replies))
        }
        Forward::Put(r) => {
            let value = Some(Bytes::from(r.value));
            let w = coordinator::write(node, Bytes::from(r.key), value, &r.context, r.w).await?;
            Forwarded::Put(PutResponse {
                context: w.context,
                acks: w.acks as u32,
            })
        }
        Forward::Delete(r) => {
            let w = coordinator::write(node, Bytes::from(r.key), None, &r.context, r.w).await?;
            Forwarded::Delete(DeleteResponse {
                context: w.context,
                acks: w.acks as u32,
            })
        }
    })
}
