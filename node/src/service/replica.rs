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

    /// Refuses a peer of another cluster, or a call the map states refuse (see
    /// [`crate::maps::refused`]); `written`: the keys a write would store (not hints).
    fn check_peer<'a>(
        &self,
        cluster_id: &str,
        map_epoch: u64,
        written: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), Status> {
        super::check_peer_cluster(&self.node, cluster_id)?;
        let held = &self.node.live().state;
        match crate::maps::refused(held, map_epoch, self.node.id(), written) {
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
        self.check_peer(&req.cluster_id, req.map_epoch, [])?;
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
        let written = req.entries.iter().filter(|e| e.hint_for.is_empty());
        self.check_peer(
            &req.cluster_id,
            req.map_epoch,
            written.map(|e| e.key.as_ref()),
        )?;
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
