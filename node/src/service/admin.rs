//! The `dynamo.v1.Admin` service: identity, partition map, health (the failure
//! detector's verdicts on every node known), hints.

use std::sync::Arc;

use dynamo_core::map_state::MapState;
use dynamo_proto::maps;
use dynamo_proto::v1::admin_server::Admin;
use dynamo_proto::v1::{
    AbortRequest, AbortResponse, AntiEntropyStateRequest, AntiEntropyStateResponse,
    ClusterHealthRequest, ClusterHealthResponse, CommitRequest, CommitResponse, DrainedRequest,
    DrainedResponse, FinalizeRequest, FinalizeResponse, HintTarget, HintsRequest, HintsResponse,
    MapMember, MapsRequest, MapsResponse, MemberHealth, MovesRequest, MovesResponse,
    NodeInfoRequest, NodeInfoResponse, PartitionMapRequest, PartitionMapResponse, PlanRequest,
    PlanResponse, ProgressRequest, ProgressResponse, RepairRequest, RepairResponse,
};
use tonic::{Request, Response, Status};

use crate::antientropy;
use crate::change::{self, plan};
use crate::config::FsyncPolicy;
use crate::node::Node;

/// Admin endpoint of a node.
pub struct AdminService {
    node: Arc<Node>,
    /// Whether the calls that change the cluster (commit, finalize, abort, repair) are
    /// served here: on the peer API only (see `NodeConfig::peer_listen`).
    changes: bool,
}

impl AdminService {
    /// Every call (the peer API).
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            changes: true,
        }
    }

    /// The calls that change nothing (the client API, when the peer API has a port of
    /// its own); the others are refused with PERMISSION_DENIED.
    pub fn read_only(node: Arc<Node>) -> Self {
        Self {
            node,
            changes: false,
        }
    }

    /// Refuses `call` unless this endpoint serves the calls that change the cluster.
    fn may_change(&self, call: &str) -> Result<(), Status> {
        match self.changes {
            true => Ok(()),
            false => Err(Status::permission_denied(format!(
                "Admin.{call} changes the cluster: it is served on the node's peer port \
                 ({}), not on the client port",
                self.node.cfg.peer_addr()
            ))),
        }
    }

    /// The address clients reach member `id` at: the client address it gossips, else
    /// its address in the map (one port for both).
    fn client_addr_of(&self, id: &str, map_addr: &str) -> String {
        self.node
            .gossip
            .entry(id)
            .map(|e| e.client_addr)
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| map_addr.to_owned())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn node_info(
        &self,
        _: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        let n = &self.node;
        let r = n.cfg.replication;
        Ok(Response::new(NodeInfoResponse {
            node_id: n.id().to_owned(),
            incarnation: n.identity.incarnation,
            cluster_id: n.cfg.cluster_id.clone(),
            advertise: n.cfg.peer_addr(),
            client_addr: n.cfg.gossiped_client_addr(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            n: n.n(),
            r: r.r,
            w: r.w,
            fsync: match n.cfg.fsync {
                FsyncPolicy::Periodic => "periodic",
                FsyncPolicy::Always => "always",
                FsyncPolicy::Never => "never",
            }
            .to_owned(),
            uptime_seconds: n.started.elapsed().as_secs(),
        }))
    }

    async fn partition_map(
        &self,
        _: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMapResponse>, Status> {
        let map = self.node.try_map().ok_or_else(no_map)?;
        let owned = map.ownership_counts();
        let members = map
            .members
            .iter()
            .zip(owned)
            .map(|(m, (_, owned))| MapMember {
                id: m.id.clone(),
                addr: self.client_addr_of(&m.id, &m.addr),
                zone: m.zone.clone().unwrap_or_default(),
                owned: owned as u32,
                replicated: map.replicated_by(&m.id).count() as u32,
            })
            .collect();
        Ok(Response::new(PartitionMapResponse {
            epoch: map.epoch,
            partitions: map.partitions,
            replication: map.replication,
            members,
            owners: map.owners.clone(),
        }))
    }

    async fn cluster_health(
        &self,
        _: Request<ClusterHealthRequest>,
    ) -> Result<Response<ClusterHealthResponse>, Status> {
        let n = &self.node;
        let live = n.live();
        Ok(Response::new(ClusterHealthResponse {
            node_id: n.id().to_owned(),
            members: member_health(n, &live.state),
            map_epoch: live.reads.as_ref().map_or(0, |m| m.epoch),
        }))
    }

    async fn hints(&self, _: Request<HintsRequest>) -> Result<Response<HintsResponse>, Status> {
        let summary = self
            .node
            .store
            .hint_summary()
            .map_err(|e| Status::internal(e.to_string()))?;
        let now = self.node.clock.now_ms();
        let targets: Vec<HintTarget> = summary
            .into_iter()
            .map(|(node_id, pending, oldest)| HintTarget {
                node_id,
                pending,
                oldest_age_ms: now.saturating_sub(oldest),
            })
            .collect();
        Ok(Response::new(HintsResponse {
            pending: targets.iter().map(|t| t.pending).sum(),
            targets,
        }))
    }

    async fn repair(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        self.may_change("Repair")?;
        let only = request.into_inner().partition;
        if self.node.try_map().is_none() {
            return Err(no_map());
        }
        let q = self.node.store.partitions();
        if let Some(p) = only.filter(|&p| p >= q) {
            return Err(Status::invalid_argument(format!(
                "partition {p} does not exist: the cluster has {q} (0..{q})"
            )));
        }
        let started = std::time::Instant::now();
        let r = antientropy::sweep(&self.node, only, antientropy::Peers::All).await;
        Ok(Response::new(RepairResponse {
            node_id: self.node.id().to_owned(),
            compared: r.compared,
            differing: r.differing,
            leaves: r.leaves,
            pulled: r.pulled,
            pushed: r.pushed,
            bytes: r.bytes,
            errors: r.errors,
            duration_ms: started.elapsed().as_millis() as u64,
        }))
    }

    async fn maps(&self, _: Request<MapsRequest>) -> Result<Response<MapsResponse>, Status> {
        let live = self.node.live();
        Ok(Response::new(MapsResponse {
            node_id: self.node.id().to_owned(),
            state: Some(maps::state_to_proto(&live.state)),
        }))
    }

    async fn plan(&self, request: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        let req = request.into_inner();
        let node = self.node.clone();
        // Off the runtime: it plans every partition and reads engine estimates.
        crate::determinism::blocking(move || plan::preview(&node, req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        self.may_change("Commit")?;
        let req = request.into_inner();
        let map = req
            .map
            .ok_or_else(|| Status::invalid_argument("commit without a map"))?;
        let map = maps::map_from_proto(map)
            .map_err(|e| Status::invalid_argument(format!("invalid map: {e}")))?;
        let state = change::commit(&self.node, map, req.forwarded).await?;
        Ok(Response::new(CommitResponse {
            state: Some(maps::state_to_proto(&state)),
        }))
    }

    async fn progress(
        &self,
        request: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let pending = self.node.live().state.pending.as_ref().map(|m| m.epoch);
        if epoch != 0 && pending != Some(epoch) {
            return Err(Status::aborted(format!(
                "map epoch conflict: epoch {epoch} is not pending (pending: {})",
                pending.map_or("none".to_owned(), |e| e.to_string())
            )));
        }
        Ok(Response::new(change::progress::cluster(&self.node).await))
    }

    async fn moves(&self, _: Request<MovesRequest>) -> Result<Response<MovesResponse>, Status> {
        Ok(Response::new(change::progress::local(&self.node)))
    }

    async fn drained(
        &self,
        request: Request<DrainedRequest>,
    ) -> Result<Response<DrainedResponse>, Status> {
        let id = request.into_inner().node_id;
        let (drained, reason) = match change::progress::drained(&self.node, &id).await {
            Ok(()) => (true, String::new()),
            Err(why) => (false, why),
        };
        Ok(Response::new(DrainedResponse { drained, reason }))
    }

    async fn finalize(
        &self,
        request: Request<FinalizeRequest>,
    ) -> Result<Response<FinalizeResponse>, Status> {
        self.may_change("Finalize")?;
        let req = request.into_inner();
        let state = change::finalize(&self.node, req.epoch, req.forwarded).await?;
        Ok(Response::new(FinalizeResponse {
            state: Some(maps::state_to_proto(&state)),
        }))
    }

    async fn abort(
        &self,
        request: Request<AbortRequest>,
    ) -> Result<Response<AbortResponse>, Status> {
        self.may_change("Abort")?;
        let req = request.into_inner();
        let state = change::abort(&self.node, req.epoch, req.forwarded).await?;
        Ok(Response::new(AbortResponse {
            state: Some(maps::state_to_proto(&state)),
        }))
    }

    async fn anti_entropy_state(
        &self,
        _: Request<AntiEntropyStateRequest>,
    ) -> Result<Response<AntiEntropyStateResponse>, Status> {
        let node = &self.node;
        let last = node.anti_entropy.lock().clone();
        let now = node.clock.now_ms();
        Ok(Response::new(AntiEntropyStateResponse {
            interval_ms: node.cfg.anti_entropy_interval_ms,
            tombstone_grace_ms: node.cfg.tombstone_grace_ms,
            swept: last.is_some(),
            last_sweep_age_ms: last.as_ref().map_or(0, |l| now.saturating_sub(l.at_ms)),
            last: last.map(|l| RepairResponse {
                node_id: node.id().to_owned(),
                compared: l.report.compared,
                differing: l.report.differing,
                leaves: l.report.leaves,
                pulled: l.report.pulled,
                pushed: l.report.pushed,
                bytes: l.report.bytes,
                errors: l.report.errors,
                duration_ms: 0,
            }),
            background_rate_bytes_per_sec: node.budget.rate(),
        }))
    }
}

fn no_map() -> Status {
    Status::unavailable(
        "this node holds no partition map yet: commit the cluster's first map \
         (dynamoctl cluster commit, or the operator does)",
    )
}

/// Every node this one knows of, from its map or by gossip, as its failure detector sees
/// it: members of the map first (in id order), then nodes known by gossip only.
fn member_health(n: &Node, state: &MapState) -> Vec<MemberHealth> {
    let entries = n.gossip.entries();
    let mut ids: Vec<&str> = state.members().iter().map(|m| m.id.as_str()).collect();
    ids.extend(
        entries
            .iter()
            .map(|e| e.node_id.as_str())
            .filter(|id| state.member(id).is_none()),
    );
    ids.into_iter()
        .map(|id| {
            let entry = entries.iter().find(|e| e.node_id == id);
            let member = state.member(id);
            let view = n.health.view(id);
            let state = if id == n.id() {
                "self"
            } else {
                view.as_ref().map_or("alive", |v| v.verdict.as_str())
            };
            MemberHealth {
                id: id.to_owned(),
                addr: member
                    .map(|m| m.addr.clone())
                    .or_else(|| entry.map(|e| e.addr.clone()))
                    .unwrap_or_default(),
                zone: member
                    .and_then(|m| m.zone.clone())
                    .or_else(|| entry.and_then(|e| e.zone.clone()))
                    .unwrap_or_default(),
                state: state.to_owned(),
                last_seen_ms: view.as_ref().map_or(0, |v| v.silence_ms),
                incarnation: entry.map_or(0, |e| e.incarnation),
                generation: entry.map_or(0, |e| e.generation),
                heartbeat: entry.map_or(0, |e| e.heartbeat),
                phi: view.as_ref().map_or(0.0, |v| v.phi),
                state_changes: view.as_ref().map_or(0, |v| v.changes),
                in_map: member.is_some(),
            }
        })
        .collect()
}
