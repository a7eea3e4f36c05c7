//! The `dynamo.v1.Replica` service: peers read and join sibling sets here.

use std::sync::Arc;

use dynamo_proto::session::{self, ResponseStream};
use dynamo_proto::v1::replica_server::Replica;
use dynamo_proto::v1::{
    replica_session_request, replica_session_response, ReplicaReadRequest, ReplicaReadResponse,
    ReplicaSessionRequest, ReplicaSessionResponse, ReplicaWriteRequest, ReplicaWriteResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::network::WriteEntry;
use crate::node::{AcceptError, Node};

/// Node-to-node replication endpoint.
#[derive(Clone)]
pub struct ReplicaService {
    node: Arc<Node>,
}

impl ReplicaService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Refuses a peer of another cluster, or one whose request was made under a map
    /// that is finalized away here (see [`crate::maps::stale_request`]). Writes are also
    /// refused where they would leave with a partition the sender does not know is
    /// moving ([`crate::maps::stale_write`]).
    fn check_peer(&self, cluster_id: &str, map_epoch: u64) -> Result<(), Status> {
        super::check_peer_cluster(&self.node, cluster_id)?;
        match crate::maps::stale_request(&self.node.live().state, map_epoch) {
            Some(why) => Err(Status::failed_precondition(why)),
            None => Ok(()),
        }
    }
}

fn storage(e: crate::storage::StorageError) -> Status {
    Status::internal(e.to_string())
}

impl ReplicaService {
    fn read_keys(&self, req: ReplicaReadRequest) -> Result<ReplicaReadResponse, Status> {
        self.check_peer(&req.cluster_id, req.map_epoch)?;
        let sets = req
            .keys
            .iter()
            .map(|key| Ok(self.node.store.read_raw(key)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(ReplicaReadResponse { sets })
    }

    async fn write_entries(
        &self,
        req: ReplicaWriteRequest,
    ) -> Result<ReplicaWriteResponse, Status> {
        self.check_peer(&req.cluster_id, req.map_epoch)?;
        let held = self.node.live().state.clone();
        if let Some(why) = req
            .entries
            .iter()
            .filter(|e| e.hint_for.is_empty())
            .find_map(|e| crate::maps::stale_write(&held, req.map_epoch, self.node.id(), &e.key))
        {
            return Err(Status::failed_precondition(why));
        }
        let entries = req
            .entries
            .into_iter()
            .map(|e| WriteEntry {
                key: e.key,
                set: e.set,
                hint_for: (!e.hint_for.is_empty()).then_some(e.hint_for),
                sync: e.sync,
            })
            .collect();
        self.node.accept(entries).await.map_err(|e| match e {
            AcceptError::Corrupt(_) | AcceptError::Invalid(_) => {
                Status::invalid_argument(e.to_string())
            }
            AcceptError::Storage(e) => storage(e),
        })?;
        Ok(ReplicaWriteResponse {})
    }

    async fn session_one(
        self,
        op: replica_session_request::Op,
    ) -> Result<replica_session_response::Result, Status> {
        use replica_session_request::Op;
        use replica_session_response::Result as R;
        match op {
            Op::Read(req) => self.read_keys(req).map(R::Read),
            Op::Write(req) => self.write_entries(req).await.map(R::Write),
        }
    }
}

#[tonic::async_trait]
impl Replica for ReplicaService {
    async fn read(
        &self,
        req: Request<ReplicaReadRequest>,
    ) -> Result<Response<ReplicaReadResponse>, Status> {
        self.read_keys(req.into_inner()).map(Response::new)
    }

    async fn write(
        &self,
        req: Request<ReplicaWriteRequest>,
    ) -> Result<Response<ReplicaWriteResponse>, Status> {
        self.write_entries(req.into_inner())
            .await
            .map(Response::new)
    }

    type SessionStream = ResponseStream<ReplicaSessionResponse>;

    async fn session(
        &self,
        req: Request<Streaming<ReplicaSessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(Response::new(session::serve_on(
            req.into_inner(),
            self.clone(),
            Self::session_one,
            self.node.stopping(),
        )))
    }
}
