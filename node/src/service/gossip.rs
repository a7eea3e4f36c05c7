//! The `dynamo.v1.Gossip` service: a peer's push-pull exchange (see [`crate::gossip`]).

use std::sync::Arc;

use dynamo_proto::v1::gossip_server::Gossip;
use dynamo_proto::v1::{GossipRequest, GossipResponse};
use tonic::{Request, Response, Status};

use crate::node::Node;

/// Gossip endpoint of a node.
pub struct GossipService {
    node: Arc<Node>,
}

impl GossipService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn exchange(
        &self,
        req: Request<GossipRequest>,
    ) -> Result<Response<GossipResponse>, Status> {
        crate::gossip::answer(&self.node, req.into_inner()).map(Response::new)
    }
}
