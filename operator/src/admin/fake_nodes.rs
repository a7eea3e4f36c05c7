//! Fake nodes for testing [`super::nodes::NodeAdmin`]: one real tonic `dynamo.v1.Admin`
//! server per node id on 127.0.0.1, all answering from one shared [`MemoryAdmin`] (so a
//! test drives real gRPC against a model that moves partitions), with canned answers and
//! injected failures, and every call recorded.
//!
//! A node answers only while the model has it up (else UNAVAILABLE, as an unreachable
//! pod). Errors of the model are mapped as the nodes map theirs: a refused commit is
//! ABORTED, a finalize with moves left or progress of an epoch not pending is
//! FAILED_PRECONDITION.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dynamo_core::ring::NodeId;
use dynamo_proto::maps::{map_from_proto, state_to_proto};
use dynamo_proto::v1::admin_server::{Admin, AdminServer};
use dynamo_proto::v1::*;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tonic::{Code, Request, Response, Status};

use super::memory::MemoryAdmin;
use super::{AdminError, ClusterAdmin, MapState};

#[derive(Default, Debug)]
struct Shared {
    /// (node, call) in order, e.g. `("kv-1", "commit 2")`.
    calls: Vec<(NodeId, String)>,
    /// RPCs (by name, e.g. `"commit"`) that fail on every node, with this status.
    failures: HashMap<String, (Code, String)>,
    /// Canned `Maps` answers by node.
    maps: BTreeMap<NodeId, MapState>,
}

/// Fake nodes on loopback; dropping it stops their servers.
pub struct FakeNodes {
    /// The model the nodes answer from.
    pub admin: MemoryAdmin,
    shared: Arc<Mutex<Shared>>,
    nodes: Vec<(NodeId, String)>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeNodes {
    /// Starts one server per id, answering from `admin`.
    pub async fn start(admin: MemoryAdmin, ids: impl IntoIterator<Item = NodeId>) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (mut nodes, mut tasks) = (Vec::new(), Vec::new());
        for id in ids {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("bound").to_string();
            let node = FakeNode {
                id: id.clone(),
                admin: admin.clone(),
                shared: shared.clone(),
            };
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tasks.push(tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(AdminServer::new(node))
                    .serve_with_incoming(incoming)
                    .await;
            }));
            nodes.push((id, addr));
        }
        Self {
            admin,
            shared,
            nodes,
            tasks,
        }
    }

    /// Every node's address, in start order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, a)| a.clone()).collect()
    }

    /// Makes every call of `rpc` (`"commit"`, `"finalize"`, ...) fail with `code`.
    pub fn fail(&self, rpc: &str, code: Code, message: &str) {
        let failure = (code, message.to_string());
        self.shared.lock().failures.insert(rpc.to_string(), failure);
    }

    /// Stops failing `rpc`.
    pub fn heal(&self, rpc: &str) {
        self.shared.lock().failures.remove(rpc);
    }

    /// Makes `node` answer `Maps` with `state` instead of the model's.
    pub fn set_maps(&self, node: &str, state: MapState) {
        self.shared.lock().maps.insert(node.to_string(), state);
    }

    /// The calls answered or refused so far: (node, call).
    pub fn calls(&self) -> Vec<(NodeId, String)> {
        self.shared.lock().calls.clone()
    }

    /// The calls other than `node_info` and `maps` (which every observe makes).
    pub fn transitions(&self) -> Vec<(NodeId, String)> {
        let calls = self.calls();
        let probe = |c: &str| c == "node_info" || c == "maps";
        calls.into_iter().filter(|(_, c)| !probe(c)).collect()
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One fake node's Admin service.
struct FakeNode {
    id: NodeId,
    admin: MemoryAdmin,
    shared: Arc<Mutex<Shared>>,
}

impl FakeNode {
    /// Records the call; refuses it if the node is down or the RPC is set to fail.
    async fn enter(&self, rpc: &str, call: String) -> Result<(), Status> {
        let up = self.admin.members().await.expect("memory admin");
        if !up.contains(&self.id) {
            return Err(Status::unavailable(format!("{} is down", self.id)));
        }
        let mut shared = self.shared.lock();
        shared.calls.push((self.id.clone(), call));
        match shared.failures.get(rpc) {
            Some((code, message)) => Err(Status::new(*code, message.clone())),
            None => Ok(()),
        }
    }
}

/// The model's error as a node reports it; `refusal` is the code of a refused transition.
fn status(e: AdminError, refusal: Code) -> Status {
    match e {
        AdminError::EpochConflict(m) => Status::new(refusal, m),
        AdminError::Unavailable(m) => Status::unavailable(m),
        AdminError::Plan(e) => Status::invalid_argument(e.to_string()),
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Admin for FakeNode {
    async fn node_info(
        &self,
        _: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        self.enter("node_info", "node_info".into()).await?;
        Ok(Response::new(NodeInfoResponse {
            node_id: self.id.clone(),
            ..Default::default()
        }))
    }

    async fn maps(&self, _: Request<MapsRequest>) -> Result<Response<MapsResponse>, Status> {
        self.enter("maps", "maps".into()).await?;
        let canned = self.shared.lock().maps.get(&self.id).cloned();
        let state = canned.unwrap_or_else(|| self.admin.snapshot());
        Ok(Response::new(MapsResponse {
            node_id: self.id.clone(),
            state: Some(state_to_proto(&state)),
        }))
    }

    async fn commit(&self, r: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        let map = r.into_inner().map.unwrap_or_default();
        self.enter("commit", format!("commit {}", map.epoch))
            .await?;
        let map = map_from_proto(map).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.admin
            .commit(&map)
            .await
            .map_err(|e| status(e, Code::Aborted))?;
        let state = Some(state_to_proto(&self.admin.snapshot()));
        Ok(Response::new(CommitResponse { state }))
    }

    async fn progress(
        &self,
        r: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let epoch = r.into_inner().epoch;
        self.enter("progress", format!("progress {epoch}")).await?;
        let p = self
            .admin
            .progress(epoch)
            .await
            .map_err(|e| status(e, Code::FailedPrecondition))?;
        Ok(Response::new(ProgressResponse {
            epoch,
            pending: p.pending,
            done: p.done,
            synced: p.synced.into_iter().collect(),
            ..Default::default()
        }))
    }

    async fn drained(
        &self,
        r: Request<DrainedRequest>,
    ) -> Result<Response<DrainedResponse>, Status> {
        let node = r.into_inner().node_id;
        self.enter("drained", format!("drained {node}")).await?;
        let drained = self.admin.is_drained(&node);
        let reason = if drained {
            ""
        } else {
            "holds data others lack"
        };
        Ok(Response::new(DrainedResponse {
            drained,
            reason: reason.into(),
        }))
    }

    async fn finalize(
        &self,
        r: Request<FinalizeRequest>,
    ) -> Result<Response<FinalizeResponse>, Status> {
        let epoch = r.into_inner().epoch;
        self.enter("finalize", format!("finalize {epoch}")).await?;
        self.admin
            .finalize(epoch)
            .await
            .map_err(|e| status(e, Code::FailedPrecondition))?;
        let state = Some(state_to_proto(&self.admin.snapshot()));
        Ok(Response::new(FinalizeResponse { state }))
    }

    async fn abort(&self, r: Request<AbortRequest>) -> Result<Response<AbortResponse>, Status> {
        let epoch = r.into_inner().epoch;
        self.enter("abort", format!("abort {epoch}")).await?;
        self.admin
            .abort(epoch)
            .await
            .map_err(|e| status(e, Code::Aborted))?;
        let state = Some(state_to_proto(&self.admin.snapshot()));
        Ok(Response::new(AbortResponse { state }))
    }

    async fn partition_map(
        &self,
        _: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMapResponse>, Status> {
        unimplemented()
    }

    async fn cluster_health(
        &self,
        _: Request<ClusterHealthRequest>,
    ) -> Result<Response<ClusterHealthResponse>, Status> {
        unimplemented()
    }

    async fn hints(&self, _: Request<HintsRequest>) -> Result<Response<HintsResponse>, Status> {
        unimplemented()
    }

    async fn repair(&self, _: Request<RepairRequest>) -> Result<Response<RepairResponse>, Status> {
        unimplemented()
    }

    async fn anti_entropy_state(
        &self,
        _: Request<AntiEntropyStateRequest>,
    ) -> Result<Response<AntiEntropyStateResponse>, Status> {
        unimplemented()
    }

    async fn plan(&self, _: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        unimplemented()
    }

    async fn moves(&self, _: Request<MovesRequest>) -> Result<Response<MovesResponse>, Status> {
        unimplemented()
    }
}
