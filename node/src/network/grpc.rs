//! [`Transport`] over gRPC: one lazily connected HTTP/2 channel per peer, TCP_NODELAY,
//! a deadline on every call.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::codec::{decode_set, encode_set};
use dynamo_core::{Member, SiblingSet};
use dynamo_proto::v1::{
    admin_client::AdminClient, kv_client::KvClient, replica_client::ReplicaClient, NodeInfoRequest,
    ReplicaEntry, ReplicaReadRequest, ReplicaWriteRequest,
};
use dynamo_proto::FORWARDED_HEADER;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::{Forward, Forwarded, PeerError, Transport, WriteEntry};

/// Largest gRPC message a node sends or accepts (sibling sets of large values).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// [`Transport`] over gRPC.
pub struct GrpcTransport {
    cluster_id: String,
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    pub fn new(cluster_id: String) -> Self {
        Self {
            cluster_id,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| PeerError::BadAddress(addr.to_owned()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .http2_adaptive_window(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn replica(&self, peer: &Member) -> Result<ReplicaClient<Channel>, PeerError> {
        Ok(ReplicaClient::new(self.channel(&peer.addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
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
    async fn read(
        &self,
        peer: &Member,
        key: Bytes,
        timeout: Duration,
    ) -> Result<SiblingSet, PeerError> {
        let mut client = self.replica(peer)?;
        let req = ReplicaReadRequest {
            key: key.to_vec(),
            cluster_id: self.cluster_id.clone(),
        };
        let resp = deadline(timeout, client.read(req)).await?.into_inner();
        if resp.set.is_empty() {
            return Ok(SiblingSet::new());
        }
        decode_set(&resp.set).map_err(|e| PeerError::Corrupt(e.to_string()))
    }

    async fn write(
        &self,
        peer: &Member,
        entries: Vec<WriteEntry>,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        let mut client = self.replica(peer)?;
        let entries = entries
            .into_iter()
            .map(|e| ReplicaEntry {
                key: e.key.to_vec(),
                set: encode_set(&e.set),
                hint_for: e.hint_for.unwrap_or_default(),
            })
            .collect();
        let req = ReplicaWriteRequest {
            entries,
            cluster_id: self.cluster_id.clone(),
        };
        deadline(timeout, client.write(req)).await.map(|_| ())
    }

    async fn ping(&self, peer: &Member, timeout: Duration) -> Result<(), PeerError> {
        let mut client = AdminClient::new(self.channel(&peer.addr)?);
        deadline(timeout, client.node_info(NodeInfoRequest {}))
            .await
            .map(|_| ())
    }

    async fn forward(
        &self,
        peer: &Member,
        req: Forward,
        timeout: Duration,
    ) -> Result<Forwarded, tonic::Status> {
        let channel = self
            .channel(&peer.addr)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
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
            Ok(r) => r,
            Err(_) => Err(tonic::Status::unavailable(format!(
                "forwarding to {} got no answer within {timeout:?}",
                peer.id
            ))),
        }
    }
}
