//! The admin side over the nodes' own gRPC Admin API (`dynamo.v1.Admin`, see
//! `proto/dynamo/v1/admin.proto`): the nodes keep the map state, the operator only asks
//! and requests transitions.
//!
//! - `members`: the node ids whose `NodeInfo` answers within the probe timeout (every
//!   node asked at once). A node started from seeds answers before it holds any map.
//! - `maps`: the state with the highest version among the nodes' `Maps` answers (nodes
//!   spread states by gossip, so a node may lag; none may be ahead of the claimant).
//!   No node to ask (no pods at all) is "no map"; nodes that all fail to answer is
//!   [`AdminError::Unavailable`], never "no map": that would start a new cluster's map.
//! - `commit`, `progress`, `drained`, `finalize`, `abort`: sent to the first node that
//!   answers, in address order; any node passes transitions on to the claimant. The
//!   transitions are idempotent on the nodes, so trying the next node after a node failed
//!   is safe. ABORTED and FAILED_PRECONDITION (another map pending, a wrong epoch, moves
//!   left before finalize) are [`AdminError::EpochConflict`]; the rest is `Unavailable`.
//!
//! Where the nodes are comes from a [`NodeAddresses`]: in a cluster, the pods of the
//! StatefulSet by their stable DNS names ([`PodAddresses`]); in tests, loopback addresses.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::ring::{NodeId, PartitionMap};
use dynamo_proto::cork;
use dynamo_proto::maps::{map_to_proto, state_from_proto};
use dynamo_proto::tls::ClientTls;
use dynamo_proto::v1::admin_client::AdminClient;
use dynamo_proto::v1::{
    AbortRequest, CommitRequest, DrainedRequest, FinalizeRequest, MapsRequest, NodeInfoRequest,
    ProgressRequest,
};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

use super::{AdminError, ClusterAdmin, MapState, MoveProgress};
use crate::desired::{selector_string, Names};

/// Largest admin answer accepted: a progress report lists every move of a change.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Where the nodes' gRPC endpoints are.
pub trait NodeAddresses: Send + Sync {
    /// `host:port` of every node that may answer, in the order to try them.
    fn addresses(&self) -> impl Future<Output = Result<Vec<String>, AdminError>> + Send;
}

/// A fixed list of addresses (tests, local clusters of node processes).
impl NodeAddresses for Vec<String> {
    async fn addresses(&self) -> Result<Vec<String>, AdminError> {
        Ok(self.clone())
    }
}

/// `host:port` of the node of a pod ordinal.
type AddressOf = dyn Fn(&Names, u32) -> String + Send + Sync;

/// How the operator reaches the node of a pod ordinal.
#[derive(Clone)]
pub struct PodAddressing(Arc<AddressOf>);

impl PodAddressing {
    /// Any other way (tests: fake nodes on loopback).
    pub fn new(f: impl Fn(&Names, u32) -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

/// The pod's stable DNS name, `<pod>.<cluster>-peers.<ns>.svc:<grpc port>`: the headless
/// Service publishes not-ready addresses, so a node without a map yet resolves.
impl Default for PodAddressing {
    fn default() -> Self {
        Self::new(Names::peer_addr)
    }
}

impl std::fmt::Debug for PodAddressing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodAddressing")
    }
}

/// The nodes of the pods of a cluster's StatefulSet that exist now, lowest ordinal first.
pub struct PodAddresses {
    pods: Api<Pod>,
    names: Names,
    addressing: PodAddressing,
}

impl PodAddresses {
    pub fn new(client: kube::Client, names: &Names, addressing: PodAddressing) -> Self {
        Self {
            pods: Api::namespaced(client, &names.namespace),
            names: names.clone(),
            addressing,
        }
    }
}

impl NodeAddresses for PodAddresses {
    async fn addresses(&self) -> Result<Vec<String>, AdminError> {
        let lp = ListParams::default().labels(&selector_string(&self.names));
        let pods = self
            .pods
            .list(&lp)
            .await
            .map_err(|e| AdminError::Unavailable(format!("listing the node pods: {e}")))?;
        let mut ordinals: Vec<u32> = pods
            .items
            .iter()
            .filter_map(|p| self.names.ordinal_of(&p.name_any()))
            .collect();
        ordinals.sort_unstable();
        Ok(ordinals
            .into_iter()
            .map(|o| (self.addressing.0)(&self.names, o))
            .collect())
    }
}

/// gRPC channels to nodes by address, opened lazily and kept across reconciles (a channel
/// reconnects, resolving the name again, after its connection breaks). Cloning shares them.
/// A channel is made for TLS or plaintext, and kept for that.
#[derive(Clone, Default, Debug)]
pub struct Channels {
    by_addr: Arc<Mutex<HashMap<(String, bool), Channel>>>,
}

impl Channels {
    fn client(
        &self,
        addr: &str,
        connect_timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<AdminClient<Channel>, Status> {
        let mut by_addr = self.by_addr.lock();
        let key = (addr.to_owned(), tls.is_some());
        let channel = match by_addr.get(&key) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
                    Status::invalid_argument(format!("bad node address {addr}: {e}"))
                })?;
                let channel = endpoint
                    .connect_timeout(connect_timeout)
                    .connect_with_connector_lazy(cork::connector(tls.cloned()));
                by_addr.insert(key, channel.clone());
                channel
            }
        };
        Ok(AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// How long the operator waits for nodes.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For `NodeInfo` and `Maps`, asked of every node at once, and for connecting.
    pub probe: Duration,
    /// For the other calls (a commit waits for the claimant to push the new state).
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            probe: Duration::from_secs(2),
            call: Duration::from_secs(10),
        }
    }
}

/// The cluster admin side over the nodes' Admin API; see the module docs.
pub struct NodeAdmin<S> {
    addresses: S,
    channels: Channels,
    timeouts: Timeouts,
    tls: Option<ClientTls>,
}

impl<S: NodeAddresses> NodeAdmin<S> {
    pub fn new(addresses: S, channels: Channels) -> Self {
        Self {
            addresses,
            channels,
            timeouts: Timeouts::default(),
            tls: None,
        }
    }

    /// Calls the nodes over TLS with `tls` (the operator's admin certificate of the
    /// cluster, accepting only the cluster's node certificates).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// One call to the node at `addr`, bounded by `timeout`.
    async fn call<T, F, Fut>(&self, addr: &str, timeout: Duration, f: &F) -> Result<T, Status>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let client = self
            .channels
            .client(addr, self.timeouts.probe, self.tls.as_ref())?;
        match tokio::time::timeout(timeout, f(client)).await {
            Ok(answer) => answer.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// The same call to every node at once, with the probe timeout: (address, answer).
    async fn ask_all<T, F, Fut>(&self, f: F) -> Result<Vec<(String, Result<T, Status>)>, AdminError>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let addrs = self.addresses.addresses().await?;
        let answers = join_all(addrs.iter().map(|a| self.call(a, self.timeouts.probe, &f))).await;
        Ok(addrs.into_iter().zip(answers).collect())
    }

    /// The call to the first node that answers it, in address order; see the module docs
    /// for which errors move on to the next node.
    async fn ask_one<T, F, Fut>(&self, what: &str, f: F) -> Result<T, AdminError>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut failures = Vec::new();
        for addr in self.addresses.addresses().await? {
            match self.call(&addr, self.timeouts.call, &f).await {
                Ok(answer) => return Ok(answer),
                Err(s) => match admin_error(&s) {
                    Failure::Conflict => {
                        return Err(AdminError::EpochConflict(format!(
                            "{what} refused by {addr}: {}",
                            s.message()
                        )))
                    }
                    Failure::Node => failures.push(format!("{addr}: {}", describe(&s))),
                    Failure::Request => {
                        return Err(AdminError::Unavailable(format!(
                            "{what} failed on {addr}: {}",
                            describe(&s)
                        )))
                    }
                },
            }
        }
        Err(AdminError::Unavailable(match failures.is_empty() {
            true => format!("{what}: there is no node to ask"),
            false => format!("{what}: no node answered ({})", failures.join("; ")),
        }))
    }
}

/// How a failed call is taken.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The nodes refused the transition (epoch conflict, not yet possible).
    Conflict,
    /// This node could not answer; another may.
    Node,
    /// The request itself failed; another node would fail it too.
    Request,
}

fn admin_error(s: &Status) -> Failure {
    match s.code() {
        Code::Aborted | Code::FailedPrecondition => Failure::Conflict,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Unimplemented
        | Code::Internal
        | Code::ResourceExhausted => Failure::Node,
        _ => Failure::Request,
    }
}

fn describe(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

impl<S: NodeAddresses> ClusterAdmin for NodeAdmin<S> {
    async fn members(&self) -> Result<BTreeSet<NodeId>, AdminError> {
        let answers = self
            .ask_all(|mut c| async move { c.node_info(NodeInfoRequest {}).await })
            .await?;
        Ok(answers
            .into_iter()
            .filter_map(|(addr, answer)| match answer {
                Ok(info) if !info.node_id.is_empty() => Some(info.node_id),
                Ok(_) => None,
                Err(s) => {
                    tracing::debug!("node {addr} unreachable: {}", describe(&s));
                    None
                }
            })
            .collect())
    }

    async fn maps(&self) -> Result<MapState, AdminError> {
        let answers = self
            .ask_all(|mut c| async move { c.maps(MapsRequest {}).await })
            .await?;
        if answers.is_empty() {
            // No pod, so no node can hold a map.
            return Ok(MapState::default());
        }
        let mut best: Option<MapState> = None;
        let mut failures = Vec::new();
        for (addr, answer) in answers {
            let state = answer.map_err(|s| describe(&s)).and_then(|a| {
                state_from_proto(a.state.unwrap_or_default())
                    .map_err(|e| format!("invalid map state: {e}"))
            });
            match state {
                Ok(s) if best.as_ref().is_none_or(|b| s.supersedes(b)) => best = Some(s),
                Ok(_) => {}
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        best.ok_or_else(|| {
            AdminError::Unavailable(format!(
                "no node answered for the partition maps ({})",
                failures.join("; ")
            ))
        })
    }

    async fn commit(&self, map: &PartitionMap) -> Result<(), AdminError> {
        let map = map_to_proto(map);
        self.ask_one("commit", |mut c| {
            let map = map.clone();
            async move {
                c.commit(CommitRequest {
                    map: Some(map),
                    forwarded: false,
                })
                .await
            }
        })
        .await
        .map(|_| ())
    }

    async fn progress(&self, epoch: u64) -> Result<MoveProgress, AdminError> {
        let p = self
            .ask_one("progress", |mut c| async move {
                c.progress(ProgressRequest { epoch }).await
            })
            .await?;
        if p.epoch != epoch {
            return Err(AdminError::EpochConflict(format!(
                "epoch {epoch} is not pending (the nodes report {})",
                p.epoch
            )));
        }
        Ok(MoveProgress {
            pending: p.pending,
            done: p.done,
            synced: p.synced.into_iter().collect(),
        })
    }

    async fn drained(&self, node: &str) -> Result<bool, AdminError> {
        let node_id = node.to_string();
        let d = self
            .ask_one("drained", |mut c| {
                let node_id = node_id.clone();
                async move { c.drained(DrainedRequest { node_id }).await }
            })
            .await?;
        if !d.drained {
            tracing::debug!("{node} not drained: {}", d.reason);
        }
        Ok(d.drained)
    }

    async fn finalize(&self, epoch: u64) -> Result<(), AdminError> {
        self.ask_one("finalize", |mut c| async move {
            c.finalize(FinalizeRequest {
                epoch,
                forwarded: false,
            })
            .await
        })
        .await
        .map(|_| ())
    }

    async fn abort(&self, epoch: u64) -> Result<(), AdminError> {
        self.ask_one("abort", |mut c| async move {
            c.abort(AbortRequest {
                epoch,
                forwarded: false,
            })
            .await
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use dynamo_core::ring::Member;

    use super::*;
    use crate::admin::fake_nodes::FakeNodes;
    use crate::admin::memory::MemoryAdmin;

    fn ids(k: u32) -> Vec<NodeId> {
        (0..k).map(|o| format!("kv-{o}")).collect()
    }

    fn first_map(k: u32) -> PartitionMap {
        let members: Vec<Member> = ids(k)
            .into_iter()
            .map(|id| Member::new(id.clone(), format!("{id}:7100")))
            .collect();
        dynamo_core::planner::plan(None, &members, 16, 3).unwrap()
    }

    /// `k` fake nodes, all up.
    async fn nodes(k: u32) -> FakeNodes {
        let memory = MemoryAdmin::new();
        memory.set_up(ids(k));
        FakeNodes::start(memory, ids(k)).await
    }

    fn quick() -> Timeouts {
        Timeouts {
            probe: Duration::from_millis(300),
            call: Duration::from_millis(300),
        }
    }

    fn admin(addrs: Vec<String>) -> NodeAdmin<Vec<String>> {
        NodeAdmin::new(addrs, Channels::default()).with_timeouts(quick())
    }

    /// An address where nothing listens.
    async fn refused() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    }

    /// An address that accepts connections and never answers; keep the listener alive.
    async fn hung() -> (tokio::net::TcpListener, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    #[tokio::test]
    async fn members_are_the_nodes_that_answer_asked_at_once() {
        let f = nodes(4).await;
        f.admin.set_up(ids(3)); // kv-3 is down
        let (_hung, hung_addr) = hung().await;
        let mut addrs = vec![refused().await, hung_addr];
        addrs.extend(f.addresses());
        let started = Instant::now();
        let members = admin(addrs).members().await.unwrap();
        assert_eq!(members, ids(3).into_iter().collect());
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "the hung node is waited for once, not per node: {:?}",
            started.elapsed()
        );
        assert!(admin(vec![]).members().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn maps_is_the_newest_state_any_node_holds() {
        let f = nodes(3).await;
        let a = admin(f.addresses());
        assert_eq!(a.maps().await.unwrap(), MapState::default());
        let old = MapState::in_force(first_map(3));
        let mut next = first_map(3);
        next.epoch = 2;
        let newer = old.commit(next).unwrap();
        f.set_maps("kv-0", old.clone());
        f.set_maps("kv-2", old.clone());
        f.set_maps("kv-1", newer.clone().unwrap());
        assert_eq!(a.maps().await.unwrap(), newer.unwrap());
        // A node that does not answer is skipped; none answering is no answer, not "no map".
        f.admin.set_up(["kv-0".to_string()]);
        assert_eq!(a.maps().await.unwrap(), old);
        f.admin.set_up([]);
        assert!(matches!(a.maps().await, Err(AdminError::Unavailable(_))));
        // No node at all (no pods yet): no map.
        assert_eq!(admin(vec![]).maps().await.unwrap(), MapState::default());
    }

    #[tokio::test]
    async fn a_first_map_is_committed_moved_and_finalized_through_any_node() {
        let f = nodes(3).await;
        let mut addrs = vec![refused().await];
        addrs.extend(f.addresses());
        let a = admin(addrs);
        let map = first_map(3);
        a.commit(&map).await.unwrap();
        a.commit(&map).await.unwrap(); // idempotent
        let maps = a.maps().await.unwrap();
        assert_eq!((maps.version, maps.pending.as_ref()), (1, Some(&map)));
        let p = a.progress(1).await.unwrap();
        assert_eq!((p.pending, p.synced.len()), (0, 3));
        assert!(a.drained("kv-2").await.unwrap());
        a.finalize(1).await.unwrap();
        a.abort(1).await.unwrap(); // idempotent: nothing pending
        let maps = a.maps().await.unwrap();
        assert_eq!((maps.version, maps.current), (2, Some(map)));
        let transitions: Vec<String> = f.transitions().into_iter().map(|c| c.1).collect();
        assert_eq!(
            transitions,
            [
                "commit 1",
                "commit 1",
                "progress 1",
                "drained kv-2",
                "finalize 1",
                "abort 1"
            ]
        );
        assert!(
            f.transitions().iter().all(|(node, _)| node == "kv-0"),
            "the first node that answers takes the calls"
        );
    }

    #[tokio::test]
    async fn refusals_are_epoch_conflicts_and_node_failures_move_on() {
        let f = nodes(3).await;
        let a = admin(f.addresses());
        let map = first_map(3);
        // Another map pending (the loser of a race): ABORTED from the claimant.
        let mut other = first_map(4);
        other.epoch = 1;
        f.admin.commit(&other).await.unwrap();
        let e = a.commit(&map).await.unwrap_err();
        assert!(matches!(e, AdminError::EpochConflict(_)), "{e:?}");
        // Moves left: FAILED_PRECONDITION, "not yet".
        f.fail("finalize", Code::FailedPrecondition, "3 moves left");
        let e = a.finalize(1).await.unwrap_err();
        assert!(matches!(e, AdminError::EpochConflict(ref m) if m.contains("3 moves left")));
        assert_eq!(f.transitions().len(), 2, "a refusal is final");
        // The claimant unreachable: UNAVAILABLE from every node, all of them tried.
        f.fail("abort", Code::Unavailable, "claimant kv-0 unreachable");
        let e = a.abort(1).await.unwrap_err();
        assert!(matches!(e, AdminError::Unavailable(ref m) if m.contains("kv-0 unreachable")));
        assert_eq!(f.transitions().len(), 5);
        // A bad request is not sent to every node.
        f.fail("drained", Code::InvalidArgument, "no such node");
        let e = a.drained("kv-9").await.unwrap_err();
        assert!(matches!(e, AdminError::Unavailable(_)));
        assert_eq!(f.transitions().len(), 6);
        // Progress of an epoch that is not pending.
        let e = a.progress(7).await.unwrap_err();
        assert!(matches!(e, AdminError::EpochConflict(_)), "{e:?}");
        f.heal("finalize");
        assert!(matches!(
            admin(vec![]).finalize(1).await,
            Err(AdminError::Unavailable(m)) if m.contains("no node to ask")
        ));
    }
}
