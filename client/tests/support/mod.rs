//! A fake node for the client's tests: an in-memory Kv and Admin over real gRPC on
//! loopback, so the client, the bench and the CLI are exercised end to end without
//! RocksDB or a cluster. (Tests against real node processes live in the workspace's
//! `tests/` crate.)
//!
//! Contexts are lists of sibling sequence numbers (8 bytes each): a put removes the
//! siblings its context lists and adds one, like the real store's causal contexts do
//! for a single node. Key `fail-quorum` answers UNAVAILABLE, an empty key
//! INVALID_ARGUMENT; a get of key `hang` sent through a session never answers, and
//! neither does any request while the node is `frozen`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dynamo_client::proto::admin_server::{Admin, AdminServer};
use dynamo_client::proto::kv_server::{Kv, KvServer};
use dynamo_client::proto::*;
use dynamo_proto::session;
use tonic::{Request, Response, Status, Streaming};

/// One stored version.
#[derive(Clone, Debug)]
struct Version {
    seq: u64,
    value: Vec<u8>,
    tombstone: bool,
}

/// Shared state of a fake node.
#[derive(Default)]
pub struct State {
    pub id: String,
    data: Mutex<HashMap<Vec<u8>, Vec<Version>>>,
    seq: AtomicU64,
    /// Requests served (Kv only).
    pub calls: AtomicU64,
    /// Kv sessions opened.
    pub sessions: AtomicU64,
    /// Most siblings any key ever had.
    pub max_siblings: AtomicU64,
    /// Map members (id, addr) for PartitionMap.
    pub members: Mutex<Vec<(String, String)>>,
    /// While set, requests sent through a session get no answer (a frozen process).
    pub frozen: AtomicBool,
}

#[derive(Clone)]
struct Fake(Arc<State>);

fn encode(seqs: impl Iterator<Item = u64>) -> Vec<u8> {
    seqs.flat_map(|s| s.to_le_bytes()).collect()
}

fn decode(ctx: &[u8]) -> Result<Vec<u64>, Status> {
    if !ctx.len().is_multiple_of(8) {
        return Err(Status::invalid_argument("corrupt context"));
    }
    Ok(ctx
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

impl Fake {
    fn check(&self, key: &[u8]) -> Result<(), Status> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "key is empty: keys are 1 to 1024 bytes",
            ));
        }
        if key == b"fail-quorum" {
            return Err(Status::unavailable("only 1 of 2 replicas answered"));
        }
        Ok(())
    }

    fn write(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        tombstone: bool,
        ctx: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let covered = decode(ctx)?;
        let seq = self.0.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut data = self.0.data.lock().unwrap();
        let versions = data.entry(key).or_default();
        versions.retain(|v| !covered.contains(&v.seq));
        versions.push(Version {
            seq,
            value,
            tombstone,
        });
        self.0
            .max_siblings
            .fetch_max(versions.len() as u64, Ordering::Relaxed);
        Ok(encode(covered.into_iter().chain([seq])))
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.key)?;
        let data = self.0.data.lock().unwrap();
        let versions = data.get(&req.key).cloned().unwrap_or_default();
        let siblings = versions
            .iter()
            .map(|v| Sibling {
                value: v.value.clone(),
                tombstone: v.tombstone,
                dot: format!("{}#1:{}", self.0.id, v.seq),
            })
            .collect();
        let context = encode(versions.iter().map(|v| v.seq));
        Ok(Response::new(GetResponse {
            siblings,
            context,
            replies: req.r.unwrap_or(2),
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.key)?;
        let context = self.write(req.key, req.value, false, &req.context)?;
        Ok(Response::new(PutResponse {
            context,
            acks: req.w.unwrap_or(2),
        }))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.key)?;
        let context = self.write(req.key, Vec::new(), true, &req.context)?;
        Ok(Response::new(DeleteResponse {
            context,
            acks: req.w.unwrap_or(2),
        }))
    }

    type SessionStream = session::ResponseStream<SessionResponse>;

    async fn session(
        &self,
        req: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.0.sessions.fetch_add(1, Ordering::Relaxed);
        let fake = self.clone();
        let handler = move |op| {
            let fake = fake.clone();
            async move {
                use session_request::Op;
                use session_response::Result as R;
                if fake.0.frozen.load(Ordering::Relaxed) {
                    fake.0.calls.fetch_add(1, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                }
                match op {
                    Op::Get(g) if g.key == b"hang" => {
                        fake.0.calls.fetch_add(1, Ordering::Relaxed);
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    Op::Get(g) => Ok(R::Get(fake.get(Request::new(g)).await?.into_inner())),
                    Op::Put(p) => Ok(R::Put(fake.put(Request::new(p)).await?.into_inner())),
                    Op::Delete(d) => {
                        Ok(R::Delete(fake.delete(Request::new(d)).await?.into_inner()))
                    }
                }
            }
        };
        Ok(Response::new(session::serve(
            req.into_inner(),
            session::MAX_IN_FLIGHT,
            handler,
        )))
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn repair(&self, _: Request<RepairRequest>) -> Result<Response<RepairResponse>, Status> {
        Err(Status::unimplemented("no anti-entropy in this fake"))
    }

    async fn anti_entropy_state(
        &self,
        _: Request<AntiEntropyStateRequest>,
    ) -> Result<Response<AntiEntropyStateResponse>, Status> {
        Err(Status::unimplemented("no anti-entropy in this fake"))
    }

    async fn maps(&self, _: Request<MapsRequest>) -> Result<Response<MapsResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn plan(&self, _: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn commit(&self, _: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn progress(
        &self,
        _: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn moves(&self, _: Request<MovesRequest>) -> Result<Response<MovesResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn drained(
        &self,
        _: Request<DrainedRequest>,
    ) -> Result<Response<DrainedResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn finalize(
        &self,
        _: Request<FinalizeRequest>,
    ) -> Result<Response<FinalizeResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn abort(&self, _: Request<AbortRequest>) -> Result<Response<AbortResponse>, Status> {
        Err(Status::unimplemented("no changes of members in this fake"))
    }

    async fn node_info(
        &self,
        _: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        Ok(Response::new(NodeInfoResponse {
            node_id: self.0.id.clone(),
            incarnation: 1,
            cluster_id: "fake".into(),
            advertise: String::new(),
            version: "test".into(),
            n: 3,
            r: 2,
            w: 2,
            fsync: "never".into(),
            uptime_seconds: 1,
            client_addr: String::new(),
        }))
    }

    async fn partition_map(
        &self,
        _: Request<PartitionMapRequest>,
    ) -> Result<Response<PartitionMapResponse>, Status> {
        let members = self.0.members.lock().unwrap().clone();
        if members.is_empty() {
            return Err(Status::unimplemented("no map in this fake"));
        }
        let q = 16u32;
        Ok(Response::new(PartitionMapResponse {
            epoch: 1,
            partitions: q,
            replication: 1,
            owners: (0..q).map(|p| p % members.len() as u32).collect(),
            members: members
                .into_iter()
                .map(|(id, addr)| MapMember {
                    id,
                    addr,
                    zone: String::new(),
                    owned: 0,
                    replicated: 0,
                })
                .collect(),
        }))
    }

    async fn cluster_health(
        &self,
        _: Request<ClusterHealthRequest>,
    ) -> Result<Response<ClusterHealthResponse>, Status> {
        Ok(Response::new(ClusterHealthResponse {
            node_id: self.0.id.clone(),
            members: vec![MemberHealth {
                id: self.0.id.clone(),
                addr: String::new(),
                state: "self".into(),
                in_map: true,
                ..MemberHealth::default()
            }],
            map_epoch: 1,
        }))
    }

    async fn hints(&self, _: Request<HintsRequest>) -> Result<Response<HintsResponse>, Status> {
        Ok(Response::new(HintsResponse {
            pending: 0,
            targets: vec![],
        }))
    }
}

/// A running fake node.
pub struct FakeNode {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl FakeNode {
    /// Starts a fake node on a free loopback port.
    pub async fn start(id: &str) -> FakeNode {
        let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().unwrap();
        let state = Arc::new(State {
            id: id.to_string(),
            ..State::default()
        });
        *state.members.lock().unwrap() = vec![(id.to_string(), addr.to_string())];
        let fake = Fake(state.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(fake.clone()))
                .add_service(AdminServer::new(fake))
                .serve_with_incoming(incoming),
        );
        FakeNode { addr, state }
    }

    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::Relaxed)
    }

    pub fn sessions(&self) -> u64 {
        self.state.sessions.load(Ordering::Relaxed)
    }
}

/// A TCP proxy on loopback whose connections can be cut, to break a client's streams.
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let registry = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, conns }
    }

    /// Closes every connection made so far; new ones are forwarded again.
    pub fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// A loopback address where nothing listens.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}
