//! The `dynamo.v1.Admin` service: identity, partition map, health, hints.

use std::sync::Arc;

use dynamo_proto::v1::admin_server::Admin;
use dynamo_proto::v1::{
    ClusterHealthRequest, ClusterHealthResponse, HintTarget, HintsRequest, HintsResponse,
    MapMember, MemberHealth, NodeInfoRequest, NodeInfoResponse, PartitionMapRequest,
    PartitionMapResponse, RepairRequest, RepairResponse,
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
        let map = &self.node.map;
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
        let members = n
            .map
            .members
            .iter()
            .map(|m| {
                let v = n.health.view(&m.id);
                let state = if m.id == n.id() {
                    "self"
                } else if v.up {
                    "up"
                } else {
                    "down"
                };
                MemberHealth {
                    id: m.id.clone(),
                    addr: m.addr.clone(),
                    state: state.to_owned(),
                    failures: v.failures,
                    last_seen_ms: if m.id == n.id() {
                        0
                    } else {
                        v.since_ok.as_millis() as u64
                    },
                }
            })
            .collect();
        Ok(Response::new(ClusterHealthResponse {
            node_id: n.id().to_owned(),
            members,
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
        if let Some(p) = only.filter(|&p| p >= self.node.map.partitions) {
            return Err(Status::invalid_argument(format!(
                "partition {p} does not exist: the cluster has {} (0..{})",
                self.node.map.partitions, self.node.map.partitions
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
}
