//! An in-process [`Transport`]: nodes of one test talk through direct calls, and a test
//! can take any node "down" (its calls fail at once) or bring it back.
//!
//! This runs the real coordinator, store and handoff logic of several nodes in one
//! process without sockets, for fast tests of quorum and handoff behaviour.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::Member;
use dynamo_proto::v1::{DeleteResponse, PutResponse};
use parking_lot::Mutex;

use super::{Forward, ForwardError, Forwarded, PeerError, Transport, WriteEntry};
use crate::coordinator;
use crate::node::Node;
use crate::service::kv::get_response;

/// The nodes of one in-process cluster.
#[derive(Default)]
pub struct LoopbackNet {
    nodes: Mutex<HashMap<String, Weak<Node>>>,
    down: Mutex<HashSet<String>>,
}

impl LoopbackNet {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes `node` reachable under its id.
    pub fn register(&self, node: &Arc<Node>) {
        self.nodes
            .lock()
            .insert(node.id().to_owned(), Arc::downgrade(node));
    }

    /// Takes `id` down (true) or brings it back (false).
    pub fn set_down(&self, id: &str, down: bool) {
        if down {
            self.down.lock().insert(id.to_owned());
        } else {
            self.down.lock().remove(id);
        }
    }

    fn reach(&self, id: &str) -> Result<Arc<Node>, PeerError> {
        if self.down.lock().contains(id) {
            return Err(PeerError::Status(tonic::Status::unavailable(format!(
                "{id} is down"
            ))));
        }
        self.nodes
            .lock()
            .get(id)
            .and_then(Weak::upgrade)
            .ok_or_else(|| {
                PeerError::Status(tonic::Status::unavailable(format!("{id} is not running")))
            })
    }
}

/// One node's view of a [`LoopbackNet`].
pub struct LoopbackTransport {
    pub net: Arc<LoopbackNet>,
}

fn internal(e: impl std::fmt::Display) -> PeerError {
    PeerError::Status(tonic::Status::internal(e.to_string()))
}

#[async_trait]
impl Transport for LoopbackTransport {
    async fn read(
        &self,
        peer: &Member,
        key: Bytes,
        _timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let stored = self.net.reach(&peer.id)?.store.read_raw(&key);
        Ok(stored.map_err(internal)?.unwrap_or_default())
    }

    async fn write(
        &self,
        peer: &Member,
        entries: Vec<WriteEntry>,
        _timeout: Duration,
    ) -> Result<(), PeerError> {
        self.net
            .reach(&peer.id)?
            .accept(entries)
            .await
            .map_err(internal)
    }

    async fn ping(&self, peer: &Member, _timeout: Duration) -> Result<(), PeerError> {
        self.net.reach(&peer.id).map(|_| ())
    }

    async fn forward(
        &self,
        peer: &Member,
        req: Forward,
        _timeout: Duration,
    ) -> Result<Forwarded, ForwardError> {
        let node = self
            .net
            .reach(&peer.id)
            .map_err(|e| ForwardError::Unreachable(tonic::Status::unavailable(e.to_string())))?;
        coordinate(&node, req).await.map_err(ForwardError::Failed)
    }
}

/// Runs a forwarded request on `node`, as its Kv service would.
async fn coordinate(node: &Arc<Node>, req: Forward) -> Result<Forwarded, tonic::Status> {
    Ok(match req {
        Forward::Get(r) => {
            let read = coordinator::read(node, Bytes::from(r.key), r.r).await?;
            Forwarded::Get(get_response(node, &read.set, read.replies))
        }
        Forward::Put(r) => {
            let value = Some(Bytes::from(r.value));
            let w = coordinator::write(node, Bytes::from(r.key), value, &r.context, r.w).await?;
            Forwarded::Put(PutResponse {
                context: w.context,
                acks: w.acks as u32,
            })
        }
        Forward::Delete(r) => {
            let w = coordinator::write(node, Bytes::from(r.key), None, &r.context, r.w).await?;
            Forwarded::Delete(DeleteResponse {
                context: w.context,
                acks: w.acks as u32,
            })
        }
    })
}
