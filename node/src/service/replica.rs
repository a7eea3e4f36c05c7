//! The `dynamo.v1.Replica` service: peers read and join sibling sets here.

use std::sync::Arc;

use dynamo_proto::v1::replica_server::Replica;
use dynamo_proto::v1::{
    ReplicaReadRequest, ReplicaReadResponse, ReplicaWriteRequest, ReplicaWriteResponse,
};
use tonic::{Request, Response, Status};

use crate::network::WriteEntry;
use crate::node::{AcceptError, Node};

/// Node-to-node replication endpoint.
pub struct ReplicaService {
    node: Arc<Node>,
}

impl ReplicaService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<(), Status> {
        if cluster_id != self.node.cfg.cluster_id {
            return Err(Status::failed_precondition(format!(
                "peer belongs to cluster {cluster_id:?}, this node to {:?}",
                self.node.cfg.cluster_id
            )));
        }
        Ok(())
    }
}

fn storage(e: crate::storage::StorageError) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn read(
        &self,
        req: Request<ReplicaReadRequest>,
    ) -> Result<Response<ReplicaReadResponse>, Status> {
        let req = req.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let sets = req
            .keys
            .iter()
            .map(|key| Ok(self.node.store.read_raw(key)?.unwrap_or_default().into()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(Response::new(ReplicaReadResponse { sets }))
    }

    async fn write(
        &self,
        req: Request<ReplicaWriteRequest>,
    ) -> Result<Response<ReplicaWriteResponse>, Status> {
        let req = req.into_inner();
        self.check_cluster(&req.cluster_id)?;
        let entries = req
            .entries
            .into_iter()
            .map(|e| WriteEntry {
                key: e.key,
                set: e.set,
                hint_for: (!e.hint_for.is_empty()).then_some(e.hint_for),
            })
            .collect();
        self.node.accept(entries).await.map_err(|e| match e {
            AcceptError::Corrupt(_) => Status::invalid_argument(e.to_string()),
            AcceptError::Storage(e) => storage(e),
        })?;
        Ok(Response::new(ReplicaWriteResponse {}))
    }
}
