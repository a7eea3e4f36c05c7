//! [`Transport`] over gRPC: one lazily connected HTTP/2 channel per peer, TCP_NODELAY,
//! a deadline on every call, and replica reads and writes batched per peer (see
//! [`super::batch`]), each batch one message of the peer's `Replica.Session` stream
//! (reopened when it closes; see `dynamo_proto::session`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::Member;
use dynamo_proto::session::{Mux, MuxError, Reopening};
use dynamo_proto::tls::ClientTls;
use dynamo_proto::v1::tree_request::Query;
use dynamo_proto::v1::{
    admin_client::AdminClient, anti_entropy_client::AntiEntropyClient, gossip_client::GossipClient,
    kv_client::KvClient, replica_client::ReplicaClient, replica_session_request::Op,
    replica_session_response::Result as Answer, FetchRequest, FetchResponse, GossipRequest,
    GossipResponse, LeafKey, MovesRequest, PurgeRequest, ReplicaEntry, ReplicaReadRequest,
    ReplicaSessionRequest, ReplicaSessionResponse, ReplicaWriteRequest, TreeChildren, TreeLeafKeys,
    TreeRequest, TreeRoots,
};
use dynamo_proto::{cork, FORWARDED_HEADER};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::batch::{BatchLimits, Batcher};
use super::{
    ChangeCall, ChangeReply, Forward, ForwardError, Forwarded, PeerError, Transport, WriteEntry,
};
use crate::antientropy::{TreeAnswer, TreeQuery};

/// Largest gRPC message a node sends or accepts (sibling sets of large values).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// [`Transport`] over gRPC.
pub struct GrpcTransport {
    cluster_id: Arc<str>,
    /// The newest map epoch this node holds, sent with every replica request.
    map_epoch: Arc<AtomicU64>,
    limits: BatchLimits,
    /// Mutual TLS to peers (the node's certificate; peers must show a node certificate
    /// of this cluster), when TLS is on.
    tls: Option<ClientTls>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
}

/// Sends one batch over `session` and waits at most `timeout` for its answer.
async fn call(
    session: &Reopening<ReplicaSessionRequest, ReplicaSessionResponse>,
    op: Op,
    timeout: Duration,
) -> Result<Answer, PeerError> {
    session.call(op, timeout).await.map_err(|e| match e {
        MuxError::Closed(_) => PeerError::Status(tonic::Status::unavailable(
            "replica sessions to the peer keep closing",
        )),
        MuxError::Timeout(t) => PeerError::Timeout(t),
        MuxError::Open(s) | MuxError::Broken(s) | MuxError::Failed(s) => PeerError::Status(s),
    })
}

fn mismatched(asked: &str) -> PeerError {
    PeerError::Corrupt(format!(
        "peer answered a {asked} with another kind of answer"
    ))
}

/// The connection to one peer and its batching queues.
struct Peer {
    channel: Channel,
    reads: Batcher<Bytes, Bytes>,
    writes: Batcher<ReplicaEntry, ()>,
}

impl Peer {
    fn connect(
        addr: &str,
        cluster_id: Arc<str>,
        map_epoch: Arc<AtomicU64>,
        limits: BatchLimits,
        tls: Option<ClientTls>,
    ) -> Result<Self, PeerError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| PeerError::BadAddress(addr.to_owned()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            // Fixed windows large enough for a batch: adaptive windows cost a BDP ping
            // per burst of data frames.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20);
        // TCP_NODELAY, and writes corked so that a request's HEADERS and DATA frames
        // leave in one segment (see `dynamo_proto::cork`); TLS under the cork.
        let channel = endpoint.connect_with_connector_lazy(cork::connector(tls));
        let client = ReplicaClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let session = Arc::new(Reopening::new(move || {
            let mut client = client.clone();
            Mux::open(move |requests| async move { client.session(requests).await })
        }));
        let reads = {
            let (session, cluster_id, map_epoch) =
                (session.clone(), cluster_id.clone(), map_epoch.clone());
            Batcher::spawn(limits, move |keys: Vec<Bytes>, timeout| {
                let session = session.clone();
                let req = ReplicaReadRequest {
                    keys,
                    cluster_id: cluster_id.to_string(),
                    map_epoch: map_epoch.load(Ordering::Relaxed),
                };
                async move {
                    match call(&session, Op::Read(req), timeout).await? {
                        Answer::Read(resp) => Ok(resp.sets),
                        _ => Err(mismatched("read")),
                    }
                }
            })
        };
        let writes = Batcher::spawn(limits, move |entries: Vec<ReplicaEntry>, timeout| {
            let session = session.clone();
            let n = entries.len();
            let req = ReplicaWriteRequest {
                entries,
                cluster_id: cluster_id.to_string(),
                map_epoch: map_epoch.load(Ordering::Relaxed),
            };
            async move {
                match call(&session, Op::Write(req), timeout).await? {
                    Answer::Write(_) => Ok(vec![(); n]),
                    _ => Err(mismatched("write")),
                }
            }
        });
        Ok(Self {
            channel,
            reads,
            writes,
        })
    }
}

impl GrpcTransport {
    pub fn new(cluster_id: String) -> Self {
        Self::with_limits(cluster_id, BatchLimits::default())
    }

    pub fn with_limits(cluster_id: String, limits: BatchLimits) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            map_epoch: Arc::default(),
            limits,
            tls: None,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Dials peers with TLS (`None`: plain TCP).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    fn peer(&self, addr: &str) -> Result<Arc<Peer>, PeerError> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(addr) {
            return Ok(p.clone());
        }
        let peer = Arc::new(Peer::connect(
            addr,
            self.cluster_id.clone(),
            self.map_epoch.clone(),
            self.limits,
            self.tls.clone(),
        )?);
        peers.insert(addr.to_owned(), peer.clone());
        Ok(peer)
    }

    fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        Ok(self.peer(addr)?.channel.clone())
    }
}

async fn deadline<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(s)) => Err(PeerError::Status(s)),
        Err(_) => Err(PeerError::Timeout(timeout)),
    }
}

fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    req
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn read(&self, peer: &Member, key: Bytes, timeout: Duration) -> Result<Bytes, PeerError> {
        let bytes = key.len();
        self.peer(&peer.addr)?.reads.call(key, bytes, timeout).await
    }

    async fn write(
        &self,
        peer: &Member,
        entries: Vec<WriteEntry>,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let peer = self.peer(&peer.addr)?;
        let calls = entries.into_iter().map(|e| {
            let entry = ReplicaEntry {
                key: e.key,
                set: e.set,
                hint_for: e.hint_for.unwrap_or_default(),
                sync: e.sync,
            };
            let bytes = entry.key.len() + entry.set.len() + entry.hint_for.len();
            peer.writes.call(entry, bytes, timeout)
        });
        futures::future::try_join_all(calls).await.map(|_| ())
    }

    async fn tree(
        &self,
        peer: &Member,
        query: TreeQuery,
        timeout: Duration,
    ) -> Result<TreeAnswer, PeerError> {
        let mut client = AntiEntropyClient::new(self.channel(&peer.addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let wants_keys = matches!(query, TreeQuery::LeafKeys { .. });
        let req = TreeRequest {
            cluster_id: self.cluster_id.to_string(),
            // Not checked here: peers of one cluster share its partition count.
            partitions: 0,
            query: Some(match query {
                TreeQuery::Roots(partitions) => Query::Roots(TreeRoots { partitions }),
                TreeQuery::Children {
                    partition,
                    level,
                    nodes,
                } => Query::Children(TreeChildren {
                    partition,
                    level,
                    nodes,
                }),
                TreeQuery::LeafKeys { partition, leaves } => {
                    Query::LeafKeys(TreeLeafKeys { partition, leaves })
                }
            }),
        };
        let resp = deadline(timeout, client.tree(req)).await?.into_inner();
        Ok(if wants_keys {
            TreeAnswer::Keys(resp.keys.into_iter().map(|k| (k.key, k.item)).collect())
        } else {
            TreeAnswer::Hashes(resp.hashes)
        })
    }

    async fn purge(
        &self,
        peer: &Member,
        partition: dynamo_core::PartitionId,
        keys: Vec<(Bytes, u64)>,
        commit: bool,
        timeout: Duration,
    ) -> Result<Vec<bool>, PeerError> {
        let mut client = AntiEntropyClient::new(self.channel(&peer.addr)?)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let req = PurgeRequest {
            cluster_id: self.cluster_id.to_string(),
            partition,
            keys: keys
                .into_iter()
                .map(|(key, item)| LeafKey { key, item })
                .collect(),
            commit,
        };
        Ok(deadline(timeout, client.purge(req)).await?.into_inner().ok)
    }

    async fn gossip(
        &self,
        addr: &str,
        req: GossipRequest,
        timeout: Duration,
    ) -> Result<GossipResponse, PeerError> {
        let mut client = GossipClient::new(self.channel(addr)?);
        deadline(timeout, client.exchange(req))
            .await
            .map(tonic::Response::into_inner)
    }

    fn set_map_epoch(&self, epoch: u64) {
        self.map_epoch.store(epoch, Ordering::Relaxed);
    }

    async fn change(
        &self,
        addr: &str,
        call: ChangeCall,
        timeout: Duration,
    ) -> Result<ChangeReply, PeerError> {
        let mut client = AdminClient::new(self.channel(addr)?);
        let state =
            |s: Option<dynamo_proto::v1::MapState>| ChangeReply::State(s.unwrap_or_default());
        match call {
            ChangeCall::Commit(r) => deadline(timeout, client.commit(r))
                .await
                .map(|r| state(r.into_inner().state)),
            ChangeCall::Finalize(r) => deadline(timeout, client.finalize(r))
                .await
                .map(|r| state(r.into_inner().state)),
            ChangeCall::Abort(r) => deadline(timeout, client.abort(r))
                .await
                .map(|r| state(r.into_inner().state)),
            ChangeCall::Moves => deadline(timeout, client.moves(MovesRequest {}))
                .await
                .map(|r| ChangeReply::Moves(r.into_inner())),
        }
    }

    async fn fetch(
        &self,
        peer: &Member,
        req: FetchRequest,
        timeout: Duration,
    ) -> Result<FetchResponse, PeerError> {
        let mut client = AntiEntropyClient::new(self.channel(&peer.addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        deadline(timeout, client.fetch(req))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn forward(
        &self,
        peer: &Member,
        req: Forward,
        timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let channel = self
            .channel(&peer.addr)
            .map_err(|e| ForwardError::Unreachable(tonic::Status::unavailable(e.to_string())))?;
        let mut client = KvClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let call = async {
            Ok(match req {
                Forward::Get(r) => Forwarded::Get(client.get(forwarded(r)).await?.into_inner()),
                Forward::Put(r) => Forwarded::Put(client.put(forwarded(r)).await?.into_inner()),
                Forward::Delete(r) => {
                    Forwarded::Delete(client.delete(forwarded(r)).await?.into_inner())
                }
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(s)) if is_connection_failure(&s) => Err(ForwardError::Unreachable(s)),
            // The connection broke with the request sent (the peer died under it): it
            // may have been applied, so no failing over, but it is the peer that became
            // unavailable; `CANCELLED` would tell the client it cancelled the call.
            Ok(Err(s)) if s.code() == tonic::Code::Cancelled => {
                Err(ForwardError::Failed(tonic::Status::unavailable(format!(
                    "forwarding to {} broke off with the request sent (it may have been \
                     applied): {}",
                    peer.id,
                    s.message()
                ))))
            }
            Ok(Err(s)) => Err(ForwardError::Failed(s)),
            Err(_) => Err(ForwardError::TimedOut(tonic::Status::unavailable(format!(
                "forwarding to {} got no answer within {timeout:?}",
                peer.id
            )))),
        }
    }
}

/// Whether `s` says the connection could not be made (the peer never saw the request).
fn is_connection_failure(s: &tonic::Status) -> bool {
    use std::error::Error;
    s.code() == tonic::Code::Unavailable
        && s.source()
            .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}
