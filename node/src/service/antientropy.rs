//! The `dynamo.v1.AntiEntropy` service: peers ask about this node's Merkle trees here.

use std::sync::Arc;

use dynamo_proto::v1::anti_entropy_server::AntiEntropy;
use dynamo_proto::v1::tree_request::Query;
use dynamo_proto::v1::{
    FetchRequest, FetchResponse, LeafKey, PurgeRequest, PurgeResponse, TreeRequest, TreeResponse,
};
use tonic::{Request, Response, Status};

use crate::antientropy::answer::{answer, AnswerError};
use crate::antientropy::{purge, TreeAnswer, TreeQuery};
use crate::change::transfer;
use crate::node::Node;

/// Node-to-node anti-entropy endpoint.
#[derive(Clone)]
pub struct AntiEntropyService {
    node: Arc<Node>,
}

impl AntiEntropyService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl AntiEntropy for AntiEntropyService {
    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        super::check_peer_cluster(node, &req.cluster_id)?;
        let q = node.store.partitions();
        if req.partitions != 0 && req.partitions != q {
            return Err(Status::failed_precondition(format!(
                "peer's trees are for {} partitions, this node's for {q}",
                req.partitions,
            )));
        }
        let query = match req.query {
            Some(Query::Roots(r)) => TreeQuery::Roots(r.partitions),
            Some(Query::Children(c)) => TreeQuery::Children {
                partition: c.partition,
                level: c.level,
                nodes: c.nodes,
            },
            Some(Query::LeafKeys(l)) => TreeQuery::LeafKeys {
                partition: l.partition,
                leaves: l.leaves,
            },
            None => return Err(Status::invalid_argument("tree request without a query")),
        };
        let node = node.clone();
        let answered = crate::determinism::blocking(move || answer(&node, query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let resp = match answered {
            Ok(TreeAnswer::Hashes(hashes)) => TreeResponse {
                hashes,
                keys: Vec::new(),
            },
            Ok(TreeAnswer::Keys(keys)) => TreeResponse {
                hashes: Vec::new(),
                keys: keys
                    .into_iter()
                    .map(|(key, item)| LeafKey { key, item })
                    .collect(),
            },
            Err(AnswerError::Invalid(why)) => return Err(Status::invalid_argument(why)),
            Err(AnswerError::Storage(e)) => return Err(Status::internal(e.to_string())),
        };
        Ok(Response::new(resp))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let req = request.into_inner();
        super::check_peer_cluster(&self.node, &req.cluster_id)?;
        transfer::serve_fetch(self.node.clone(), req)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn purge(
        &self,
        request: Request<PurgeRequest>,
    ) -> Result<Response<PurgeResponse>, Status> {
        let req = request.into_inner();
        let node = &self.node;
        super::check_peer_cluster(node, &req.cluster_id)?;
        if node.try_map().is_none() {
            return Err(Status::unavailable("this node holds no partition map yet"));
        }
        let q = node.store.partitions();
        if req.partition >= q {
            return Err(Status::invalid_argument(format!(
                "partition {} of a cluster of {q}",
                req.partition,
            )));
        }
        let keys = req.keys.into_iter().map(|k| (k.key, k.item)).collect();
        let ok = purge::answer(node, req.partition, keys, req.commit)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PurgeResponse { ok }))
    }
}
