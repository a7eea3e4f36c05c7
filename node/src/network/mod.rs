//! The network seam: how a node talks to its peers.
//!
//! The coordinator, hinted handoff, read repair, anti-entropy and gossip only see
//! [`Transport`]. Production uses [`GrpcTransport`]: one long-lived HTTP/2 channel per peer (requests multiplexed over it),
//! TCP_NODELAY on every connection, deadlines on every call. A simulation can supply its
//! own transport (or run this one over turmoil's simulated TCP).

use std::time::Duration;

use crate::antientropy::{TreeAnswer, TreeQuery};
use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::codec::encode_set;
use dynamo_core::{Member, SiblingSet};
use dynamo_proto::v1::{
    self, AbortRequest, CommitRequest, DeleteRequest, DeleteResponse, FetchRequest, FetchResponse,
    FinalizeRequest, GetRequest, GetResponse, GossipRequest, GossipResponse, MovesResponse,
    PutRequest, PutResponse,
};

mod batch;
mod grpc;
pub mod loopback;

pub use batch::BatchLimits;
pub use grpc::{GrpcTransport, MAX_MESSAGE_BYTES};

/// Why a peer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Status(tonic::Status),
    #[error("bad address {0:?}")]
    BadAddress(String),
    #[error("peer sent a corrupt sibling set: {0}")]
    Corrupt(String),
}

/// Why a forwarded request failed.
#[derive(Debug, Clone)]
pub enum ForwardError {
    /// The peer could not be reached: it never saw the request.
    Unreachable(tonic::Status),
    /// The peer gave no answer in time: it may have seen the request.
    TimedOut(tonic::Status),
    /// The peer answered with an error.
    Failed(tonic::Status),
}

impl From<ForwardError> for tonic::Status {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Unreachable(s) | ForwardError::TimedOut(s) | ForwardError::Failed(s) => s,
        }
    }
}

/// One sibling set to join on a peer; `hint_for` names the node it is really meant for
/// when the peer is a sloppy-quorum fallback.
#[derive(Clone, Debug)]
pub struct WriteEntry {
    pub key: Bytes,
    /// The set in the codec's encoding ([`dynamo_core::codec::encode_set`]), encoded once
    /// and shared by every peer it goes to.
    pub set: Bytes,
    pub hint_for: Option<String>,
    /// Whether the peer must sync its WAL before acknowledging (a delivered hint).
    pub sync: bool,
}

impl WriteEntry {
    /// An entry for `set`, encoded.
    pub fn new(key: Bytes, set: &SiblingSet, hint_for: Option<String>) -> Self {
        Self {
            key,
            set: encode_set(set).into(),
            hint_for,
            sync: false,
        }
    }

    /// The same entry, to be synced on the peer before it is acknowledged.
    pub fn synced(self) -> Self {
        Self { sync: true, ..self }
    }
}

/// A client request forwarded to a preference-list node.
#[derive(Clone, Debug)]
pub enum Forward {
    Get(GetRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
}

/// The answer to a forwarded request.
pub enum Forwarded {
    Get(GetResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
}

/// An admin call of a change of members that one node makes on another: passed on to
/// the claimant, or asking a member for its part of the change.
#[derive(Clone, Debug)]
pub enum ChangeCall {
    Commit(CommitRequest),
    Finalize(FinalizeRequest),
    Abort(AbortRequest),
    Moves,
}

/// The answer to a [`ChangeCall`].
#[derive(Clone, Debug)]
pub enum ChangeReply {
    /// The map state after a commit, finalize or abort.
    State(v1::MapState),
    Moves(MovesResponse),
}

/// How a node reaches its peers.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Reads a key's sibling set on `peer`, as stored there (the codec's encoding; empty
    /// if the peer holds nothing for the key). The caller decodes it, and need not when
    /// it is byte-for-byte a state it already has.
    async fn read(&self, peer: &Member, key: Bytes, timeout: Duration) -> Result<Bytes, PeerError>;
    /// Joins sibling sets on `peer`.
    async fn write(
        &self,
        peer: &Member,
        entries: Vec<WriteEntry>,
        timeout: Duration,
    ) -> Result<(), PeerError>;
    /// Asks `peer` about its Merkle trees (see [`crate::antientropy`]).
    async fn tree(
        &self,
        peer: &Member,
        query: TreeQuery,
        timeout: Duration,
    ) -> Result<TreeAnswer, PeerError>;
    /// Sends a partition owner's purge check or purge of `keys` (with the item hashes of
    /// its sets) to `peer` (see [`crate::antientropy::purge`]); the peer's answer per key.
    async fn purge(
        &self,
        peer: &Member,
        partition: dynamo_core::PartitionId,
        keys: Vec<(Bytes, u64)>,
        commit: bool,
        timeout: Duration,
    ) -> Result<Vec<bool>, PeerError>;
    /// One gossip exchange with the node at `addr` (a seed may be known by address only).
    async fn gossip(
        &self,
        addr: &str,
        req: GossipRequest,
        timeout: Duration,
    ) -> Result<GossipResponse, PeerError>;
    /// Records the newest map epoch this node holds, for the replica requests it sends
    /// from now on (see `ReplicaWriteRequest.map_epoch`).
    fn set_map_epoch(&self, _epoch: u64) {}
    /// Makes a change-of-members admin call on the node at `addr`.
    async fn change(
        &self,
        addr: &str,
        call: ChangeCall,
        timeout: Duration,
    ) -> Result<ChangeReply, PeerError>;
    /// Fetches a chunk of a partition from `peer` (a transfer, see [`crate::change`]).
    async fn fetch(
        &self,
        peer: &Member,
        req: FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, PeerError>;
    /// Has `peer` coordinate a client request.
    async fn forward(
        &self,
        peer: &Member,
        req: Forward,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError>;
}
