//! The `dynamo.v1.Kv` service: client get/put/delete, coordinated or forwarded.

use std::sync::Arc;
use tokio::time::Instant; // simulated time under a simulation: the budget reads these latencies

use bytes::Bytes;
use dynamo_core::access::Role;
use dynamo_core::SiblingSet;
use dynamo_proto::session::{self, ResponseStream};
use dynamo_proto::v1::kv_server::Kv;
use dynamo_proto::v1::{
    session_request, session_response, DeleteRequest, DeleteResponse, GetRequest, GetResponse,
    PutRequest, PutResponse, SessionRequest, SessionResponse, Sibling,
};
use dynamo_proto::FORWARDED_HEADER;
use tonic::{Request, Response, Status, Streaming};

use crate::access::Credentials;
use crate::coordinator::{self, Route};
use crate::metrics::{OpKind, Outcome};
use crate::network::{Forward, ForwardError, Forwarded};
use crate::node::Node;

/// The client API of a node.
#[derive(Clone)]
pub struct KvService {
    node: Arc<Node>,
    /// What the caller of a session showed (see `crate::access`): each operation it
    /// carries is checked against the caller's role under the rules in force.
    caller: Option<Arc<Credentials>>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, caller: None }
    }

    fn finish<T>(&self, op: OpKind, started: Instant, r: Result<T, Status>) -> Result<T, Status> {
        let outcome = match &r {
            Ok(_) => Outcome::Ok,
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument => Outcome::InvalidArgument,
                tonic::Code::Unavailable => Outcome::Unavailable,
                _ => Outcome::Internal,
            },
        };
        let took = started.elapsed();
        self.node.metrics.request(op, outcome, took.as_secs_f64());
        self.node.budget.observe(took);
        r
    }
}

fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED_HEADER)
}

fn unexpected() -> Status {
    Status::internal("forwarded request got an answer of another kind")
}

/// The wire form of a read.
pub fn get_response(node: &Node, set: &SiblingSet, replies: usize) -> GetResponse {
    let siblings = set
        .siblings()
        .iter()
        .map(|s| Sibling {
            value: s.value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
            tombstone: s.is_tombstone(),
            dot: s.dot.to_string(),
        })
        .collect();
    GetResponse {
        siblings,
        context: node.context_key.encode(set.context()),
        replies: replies as u32,
    }
}

impl KvService {
    async fn do_get(&self, fwd: bool, msg: GetRequest) -> Result<GetResponse, Status> {
        match coordinator::route(&self.node, &msg.key, fwd)? {
            Route::Forward(targets) => {
                match coordinator::forward(&self.node, targets, &Forward::Get(msg)).await? {
                    Forwarded::Get(r) => Ok(r),
                    _ => Err(unexpected()),
                }
            }
            Route::Local => {
                let read = coordinator::read(&self.node, Bytes::from(msg.key), msg.r).await?;
                self.node
                    .metrics
                    .siblings_per_read
                    .observe(read.set.values().count() as f64);
                Ok(get_response(&self.node, &read.set, read.replies))
            }
        }
    }

    /// Coordinates a put (`value` is `Some`) or delete here, or forwards it to a replica.
    async fn do_write(
        &self,
        fwd: bool,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        ctx: Vec<u8>,
        w: Option<u32>,
    ) -> Result<(Vec<u8>, u32), Status> {
        match coordinator::route(&self.node, &key, fwd)? {
            Route::Forward(targets) => {
                let forward = match value {
                    Some(value) => Forward::Put(PutRequest {
                        key,
                        value,
                        context: ctx,
                        w,
                    }),
                    None => Forward::Delete(DeleteRequest {
                        key,
                        context: ctx,
                        w,
                    }),
                };
                // A write goes only to replicas believed up: one that has stopped
                // answering would hold it for the whole timeout and leave it in doubt,
                // while coordinating here (below) is certain and keeps the write.
                let targets = targets
                    .into_iter()
                    .filter(|m| self.node.health.is_up(&m.id))
                    .collect();
                match coordinator::forward(&self.node, targets, &forward).await {
                    Ok(Forwarded::Put(r)) => Ok((r.context, r.acks)),
                    Ok(Forwarded::Delete(r)) => Ok((r.context, r.acks)),
                    Ok(Forwarded::Get(_)) => Err(unexpected()),
                    Err(ForwardError::Unreachable(why))
                        if self.node.map().member(self.node.id()).is_none() =>
                    {
                        // A node outside the map (joined from seeds, no partitions yet)
                        // keeps no copies and no hints: what it held would be outside
                        // every check that tombstone purging makes.
                        Err(tonic::Status::unavailable(format!(
                            "no replica of the key could be reached, and {} is not a \
                             member of the partition map, so it does not coordinate the \
                             write itself: {}",
                            self.node.id(),
                            why.message()
                        )))
                    }
                    Err(ForwardError::Unreachable(why)) => {
                        // No replica saw the request: coordinate it here rather than
                        // refuse a write (see `coordinator`).
                        // Counted in `dynamo_fallback_writes_total`; logged only at debug, as
                        // every write to the unreachable replicas' keys takes this path.
                        tracing::debug!(reason = %why.message(), "coordinating a write as a fallback");
                        self.node.metrics.fallback_writes.inc();
                        let (key, value, ctx, w) = match forward {
                            Forward::Put(r) => (r.key, Some(r.value), r.context, r.w),
                            Forward::Delete(r) => (r.key, None, r.context, r.w),
                            Forward::Get(_) => return Err(unexpected()),
                        };
                        self.coordinate_write(key, value, ctx, w).await
                    }
                    Err(ForwardError::TimedOut(s) | ForwardError::Failed(s)) => Err(s),
                }
            }
            Route::Local => self.coordinate_write(key, value, ctx, w).await,
        }
    }

    async fn coordinate_write(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        ctx: Vec<u8>,
        w: Option<u32>,
    ) -> Result<(Vec<u8>, u32), Status> {
        let written = coordinator::write(
            &self.node,
            Bytes::from(key),
            value.map(Bytes::from),
            &ctx,
            w,
        )
        .await?;
        Ok((written.context, written.acks as u32))
    }

    async fn get_one(&self, fwd: bool, msg: GetRequest) -> Result<GetResponse, Status> {
        let started = Instant::now();
        let r = self.do_get(fwd, msg).await;
        self.finish(OpKind::Get, started, r)
    }

    async fn put_one(&self, fwd: bool, msg: PutRequest) -> Result<PutResponse, Status> {
        let started = Instant::now();
        let r = self
            .do_write(fwd, msg.key, Some(msg.value), msg.context, msg.w)
            .await;
        self.finish(OpKind::Put, started, r)
            .map(|(context, acks)| PutResponse { context, acks })
    }

    async fn delete_one(&self, fwd: bool, msg: DeleteRequest) -> Result<DeleteResponse, Status> {
        let started = Instant::now();
        let r = self.do_write(fwd, msg.key, None, msg.context, msg.w).await;
        self.finish(OpKind::Delete, started, r)
            .map(|(context, acks)| DeleteResponse { context, acks })
    }

    /// One request of a session (never a forwarded one: nodes forward with unary calls).
    async fn session_one(
        self,
        op: session_request::Op,
    ) -> Result<session_response::Result, Status> {
        use session_request::Op;
        use session_response::Result as R;
        let access = &self.node.access;
        match &op {
            Op::Get(_) => {}
            Op::Put(_) => access.allow(self.caller.as_deref(), Role::Write, "a put")?,
            Op::Delete(_) => access.allow(self.caller.as_deref(), Role::Write, "a delete")?,
        }
        match op {
            Op::Get(msg) => self.get_one(false, msg).await.map(R::Get),
            Op::Put(msg) => self.put_one(false, msg).await.map(R::Put),
            Op::Delete(msg) => self.delete_one(false, msg).await.map(R::Delete),
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let fwd = is_forwarded(&req);
        self.get_one(fwd, req.into_inner()).await.map(Response::new)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let fwd = is_forwarded(&req);
        self.put_one(fwd, req.into_inner()).await.map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let fwd = is_forwarded(&req);
        self.delete_one(fwd, req.into_inner())
            .await
            .map(Response::new)
    }

    type SessionStream = ResponseStream<SessionResponse>;

    async fn session(
        &self,
        req: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let service = Self {
            node: self.node.clone(),
            caller: req.extensions().get::<Credentials>().cloned().map(Arc::new),
        };
        Ok(Response::new(session::serve_on(
            req.into_inner(),
            service,
            Self::session_one,
            self.node.stopping(),
        )))
    }
}
