//! The `dynamo.v1.Admin` service: identity, partition map, health (the failure
//! detector's verdicts on every node known), hints.

use std::sync::Arc;

use dynamo_core::PartitionMap;
use dynamo_proto::v1::admin_server::Admin;
use dynamo_proto::v1::{
    AntiEntropyStateRequest, AntiEntropyStateResponse, ClusterHealthRequest, ClusterHealthResponse,
    HintTarget, HintsRequest, HintsResponse, MapMember, MemberHealth, NodeInfoRequest,
    NodeInfoResponse, PartitionMapRequest, PartitionMapResponse, RepairRequest, RepairResponse,
};
use tonic::{Request, Response, Status};

use crate::antientropy;
use crate::config::FsyncPolicy;
use crate::node::Node;

/// Admin endpoint of a node.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
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
            advertise: n.cfg.advertise_addr(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            n: r.n,
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
        let map = self.node.map();
        let owned = map.ownership_counts();
        let members = map
            .members
            .iter()
            .zip(owned)
            .map(|(m, (_, owned))| MapMember {
                id: m.id.clone(),
                addr: m.addr.clone(),
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
        let map = n.map();
        Ok(Response::new(ClusterHealthResponse {
            node_id: n.id().to_owned(),
            members: member_health(n, &map),
            map_epoch: map.epoch,
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
        let only = request.into_inner().partition;
        let q = self.node.map().partitions;
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

/// Every node this one knows of, from its map or by gossip, as its failure detector sees
/// it: members of the map first (in id order), then nodes known by gossip only.
fn member_health(n: &Node, map: &PartitionMap) -> Vec<MemberHealth> {
    let entries = n.gossip.entries();
    let mut ids: Vec<&str> = map.members.iter().map(|m| m.id.as_str()).collect();
    ids.extend(
        entries
            .iter()
            .map(|e| e.node_id.as_str())
            .filter(|id| map.member(id).is_none()),
    );
    ids.into_iter()
        .map(|id| {
            let entry = entries.iter().find(|e| e.node_id == id);
            let member = map.member(id);
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
