//! gRPC services: the client API ([`kv`]), the admin API ([`admin`]), node-to-node
//! replication ([`replica`]), anti-entropy ([`antientropy`]) and membership gossip
//! ([`gossip`]).

pub mod admin;
pub mod antientropy;
pub mod gossip;
pub mod kv;
pub mod replica;

/// Refuses a peer's call made for another cluster.
pub(crate) fn check_peer_cluster(
    node: &crate::node::Node,
    cluster_id: &str,
) -> Result<(), tonic::Status> {
    if cluster_id != node.cfg.cluster_id {
        return Err(tonic::Status::failed_precondition(format!(
            "peer belongs to cluster {cluster_id:?}, this node to {:?}",
            node.cfg.cluster_id
        )));
    }
    Ok(())
}
