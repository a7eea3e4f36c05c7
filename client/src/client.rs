//! The client: `get`, `put`, `delete` and the admin calls, over long-lived channels to
//! one or more nodes.
//!
//! Any node accepts any request and coordinates it, so the client only has to reach
//! *some* node. It spreads requests round-robin over the addresses it was given, tries
//! nodes that recently failed (refused, lost the connection or did not answer in time)
//! only after the others, and on a failure fails over to the next address — but only
//! when that cannot apply a write twice:
//!
//! - reads and admin calls fail over on any transport failure (refused connection, lost
//!   connection, client-side timeout);
//! - `put` and `delete` fail over only when the connection could not be made at all: a
//!   write whose connection broke mid-flight may have been applied, and sending it again
//!   would add a second, concurrent sibling. Such errors go back to the caller.
//!
//! A status the node itself sent (`INVALID_ARGUMENT`, `UNAVAILABLE` for a missed quorum,
//! ...) is never retried: another coordinator would see the same replicas.
//!
//! With [`ClientConfig::route_by_key`] the client also fetches the partition map and sends
//! each request to a node of the key's preference list (see [`crate::routing`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dynamo_proto::tls::{ClientFiles, ClientTls};
use dynamo_proto::v1::admin_client::AdminClient;
use dynamo_proto::v1::{
    session_request::Op, session_response::Result as Answer, AbortRequest, AbortResponse,
    AntiEntropyStateRequest, AntiEntropyStateResponse, ClusterHealthRequest, ClusterHealthResponse,
    CommitRequest, CommitResponse, DeleteRequest, DeleteResponse, FinalizeRequest,
    FinalizeResponse, GetRequest, GossipMap, GossipMember, HintsRequest, HintsResponse,
    MapsRequest, MapsResponse, NodeInfoRequest, NodeInfoResponse, PartitionMapRequest,
    PartitionMapResponse, PlanRequest, PlanResponse, ProgressRequest, ProgressResponse, PutRequest,
    PutResponse, RepairRequest, RepairResponse,
};

use crate::context::Context;
use crate::error::{Error, Origin, Result};
use crate::pool::{split_addrs, Chan, ChannelSettings, NodeConn, Token, MAX_MESSAGE_BYTES};
use crate::routing::Routes;

/// How to connect. Build with [`ClientConfig::new`], adjust fields, then
/// [`ClientConfig::connect`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Node addresses (`host:port`); entries may be comma-separated lists.
    pub addrs: Vec<String>,
    /// Time allowed to open a TCP connection to a node.
    pub connect_timeout: Duration,
    /// Time allowed for one request, end to end, before the client gives up on it.
    pub request_timeout: Duration,
    /// HTTP/2 connections to open to each node (requests are spread over them).
    pub channels_per_node: usize,
    /// How long a node that failed (refused, lost the connection or did not answer in
    /// time) is tried only after the others; then one request tries it again.
    pub down_for: Duration,
    /// Fetch the partition map and send requests to the key's preference list.
    pub route_by_key: bool,
    /// How often the partition map is re-read when routing by key.
    pub map_refresh: Duration,
    /// TLS: the CA bundle that verifies nodes, and a client certificate for mutual TLS
    /// (see [`ClientConfig::with_tls`]). `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// A bearer token sent with every request (see the node's authorization file).
    pub token: Option<Token>,
}

impl ClientConfig {
    /// Defaults: 2 s connect timeout, 10 s request timeout, one channel per node, no
    /// routing by key.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Self {
        Self {
            addrs: split_addrs(addrs),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            channels_per_node: 1,
            down_for: Duration::from_secs(1),
            route_by_key: false,
            map_refresh: Duration::from_secs(10),
            tls: None,
            token: None,
        }
    }

    /// Connects with TLS: nodes verified against the CA bundle `files.ca` (by the name or
    /// address dialled), and the client certificate `files.cert` presented when given.
    /// The files are read again when they change, every `reload` (if given).
    pub fn with_tls(mut self, files: &ClientFiles, reload: Option<Duration>) -> Result<Self> {
        let tls = ClientTls::from_files(files, reload).map_err(|e| Error::Tls(e.to_string()))?;
        self.tls = Some(tls);
        Ok(self)
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: &str) -> Result<Self> {
        self.token = Some(Token::new(token)?);
        Ok(self)
    }

    /// Opens the channels (lazily: a node that is down now is tried again later) and,
    /// when routing by key, reads the partition map once; a failure to read it is not an
    /// error (requests then go round-robin until a refresh succeeds).
    pub async fn connect(self) -> Result<Client> {
        Client::with_config(self).await
    }

    fn settings(&self) -> ChannelSettings {
        ChannelSettings {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            channels_per_node: self.channels_per_node,
            down_for: self.down_for,
            tls: self.tls.clone(),
            token: self.token.clone(),
        }
    }
}

/// One version of a key, as `get` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sibling {
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<Bytes>,
    /// Identity of the write that made this version (`node#incarnation:counter`).
    pub dot: String,
}

/// What `get` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// Every version not superseded, tombstones included.
    pub siblings: Vec<Sibling>,
    /// The context to send with the next `put` or `delete` of this key.
    pub context: Context,
    /// How many replicas answered.
    pub replies: u32,
}

impl GetResult {
    /// The live (non-tombstone) values.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings.iter().filter_map(|s| s.value.as_ref())
    }

    /// Whether the key has at least one live value.
    pub fn is_found(&self) -> bool {
        self.values().next().is_some()
    }
}

/// What `put` and `delete` return in detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// Context covering the new version and what it superseded.
    pub context: Context,
    /// How many replicas acknowledged.
    pub acks: u32,
}

/// A client of the store. Cheap to clone: clones share the connections.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    seeds: Vec<Arc<NodeConn>>,
    next: AtomicUsize,
    routes: RwLock<Option<Arc<Routes>>>,
}

impl Client {
    /// Connects to the given addresses with the default [`ClientConfig`].
    pub async fn connect<S: AsRef<str>>(addrs: &[S]) -> Result<Self> {
        ClientConfig::new(addrs).connect().await
    }

    async fn with_config(config: ClientConfig) -> Result<Self> {
        if config.addrs.is_empty() {
            return Err(Error::NoAddress);
        }
        let settings = config.settings();
        let seeds = config
            .addrs
            .iter()
            .map(|a| NodeConn::open(a, &settings).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let route = config.route_by_key;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                seeds,
                next: AtomicUsize::new(0),
                routes: RwLock::new(None),
            }),
        };
        if route {
            // Best effort: without a map, requests go round-robin.
            let _ = client.refresh_routes().await;
            spawn_map_refresher(Arc::downgrade(&client.inner));
        }
        Ok(client)
    }

    /// A client of the peer API of the node that answers, where the calls that change
    /// the cluster (commit, finalize, abort, repair) are served: the node's peer address
    /// when it serves the peer API on a port of its own, else this client.
    pub async fn peer_api(&self) -> Result<Client> {
        let info = self.node_info().await?;
        if info.client_addr.is_empty() || self.addrs().contains(&info.advertise) {
            return Ok(self.clone());
        }
        let mut config = self.inner.config.clone();
        config.addrs = vec![info.advertise];
        config.route_by_key = false;
        config.connect().await
    }

    /// The addresses this client was given.
    pub fn addrs(&self) -> &[String] {
        &self.inner.config.addrs
    }

    /// Reads a key, waiting for `r` replicas (`None`: the cluster's R).
    pub async fn get(&self, key: impl AsRef<[u8]>, r: Option<u32>) -> Result<GetResult> {
        let key = key.as_ref();
        let req = GetRequest {
            key: key.to_vec(),
            r,
        };
        let resp = self
            .call(Some(key), true, |node| {
                let req = req.clone();
                async move {
                    match node.kv(Op::Get(req)).await? {
                        Answer::Get(resp) => Ok(resp),
                        other => Err(mismatched("get", &other)),
                    }
                }
            })
            .await?;
        let siblings = resp
            .siblings
            .into_iter()
            .map(|s| Sibling {
                value: if s.tombstone {
                    None
                } else {
                    Some(Bytes::from(s.value))
                },
                dot: s.dot,
            })
            .collect();
        Ok(GetResult {
            siblings,
            context: Context::from_bytes(resp.context),
            replies: resp.replies,
        })
    }

    /// Writes `value`, superseding what `context` covers, waiting for `w` acks (`None`: the
    /// cluster's W). Returns the new context.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        context: &Context,
        w: Option<u32>,
    ) -> Result<Context> {
        Ok(self.put_detailed(key, value, context, w).await?.context)
    }

    /// Like [`Client::put`], also returning how many replicas acknowledged.
    pub async fn put_detailed(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        context: &Context,
        w: Option<u32>,
    ) -> Result<WriteResult> {
        let key = key.as_ref();
        let value: Bytes = value.into();
        let req = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.as_bytes().to_vec(),
            w,
        };
        let resp: PutResponse = self
            .call(Some(key), false, |node| {
                let req = req.clone();
                async move {
                    match node.kv(Op::Put(req)).await? {
                        Answer::Put(resp) => Ok(resp),
                        other => Err(mismatched("put", &other)),
                    }
                }
            })
            .await?;
        Ok(WriteResult {
            context: Context::from_bytes(resp.context),
            acks: resp.acks,
        })
    }

    /// Deletes what `context` covers (writes a tombstone). Returns the new context.
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        context: &Context,
        w: Option<u32>,
    ) -> Result<Context> {
        Ok(self.delete_detailed(key, context, w).await?.context)
    }

    /// Like [`Client::delete`], also returning how many replicas acknowledged.
    pub async fn delete_detailed(
        &self,
        key: impl AsRef<[u8]>,
        context: &Context,
        w: Option<u32>,
    ) -> Result<WriteResult> {
        let key = key.as_ref();
        let req = DeleteRequest {
            key: key.to_vec(),
            context: context.as_bytes().to_vec(),
            w,
        };
        let resp: DeleteResponse = self
            .call(Some(key), false, |node| {
                let req = req.clone();
                async move {
                    match node.kv(Op::Delete(req)).await? {
                        Answer::Delete(resp) => Ok(resp),
                        other => Err(mismatched("delete", &other)),
                    }
                }
            })
            .await?;
        Ok(WriteResult {
            context: Context::from_bytes(resp.context),
            acks: resp.acks,
        })
    }

    /// Identity and settings of the node that answers.
    pub async fn node_info(&self) -> Result<NodeInfoResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel()).node_info(NodeInfoRequest {}).await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// The partition map as the node that answers knows it.
    pub async fn partition_map(&self) -> Result<PartitionMapResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel())
                .partition_map(PartitionMapRequest {})
                .await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// The health of every member as the node that answers sees it.
    pub async fn cluster_health(&self) -> Result<ClusterHealthResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel())
                .cluster_health(ClusterHealthRequest {})
                .await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// The hinted-handoff backlog of the node that answers.
    pub async fn hints(&self) -> Result<HintsResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel()).hints(HintsRequest {}).await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// Has the node that answers compare its copies of its partitions (or of
    /// `partition`) with every other replica's, by Merkle tree, and join what differs;
    /// its report of what it compared and fixed.
    pub async fn repair(&self, partition: Option<u32>) -> Result<RepairResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel())
                .repair(RepairRequest { partition })
                .await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// The live partition maps (in force and pending) of the node that answers.
    pub async fn maps(&self) -> Result<MapsResponse> {
        self.call(None, true, |node| async move {
            Ok(admin(node.channel())
                .maps(MapsRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// A preview of the map for `members` (the newest map's members if empty).
    pub async fn plan(&self, members: Vec<GossipMember>) -> Result<PlanResponse> {
        self.call(None, true, |node| {
            let req = PlanRequest {
                members: members.clone(),
                partitions: 0,
                replication: 0,
            };
            async move { Ok(admin(node.channel()).plan(req).await?.into_inner()) }
        })
        .await
    }

    /// Makes `map` the pending map (idempotent; ABORTED when another one won).
    pub async fn commit(&self, map: GossipMap) -> Result<CommitResponse> {
        self.call(None, true, |node| {
            let req = CommitRequest {
                map: Some(map.clone()),
                forwarded: false,
            };
            async move { Ok(admin(node.channel()).commit(req).await?.into_inner()) }
        })
        .await
    }

    /// The progress of the pending change over the cluster.
    pub async fn progress(&self) -> Result<ProgressResponse> {
        self.call(None, true, |node| async move {
            let req = ProgressRequest { epoch: 0 };
            Ok(admin(node.channel()).progress(req).await?.into_inner())
        })
        .await
    }

    /// Puts pending `epoch` in force (FAILED_PRECONDITION while moves are left).
    pub async fn finalize(&self, epoch: u64) -> Result<FinalizeResponse> {
        self.call(None, true, |node| async move {
            let req = FinalizeRequest {
                epoch,
                forwarded: false,
            };
            Ok(admin(node.channel()).finalize(req).await?.into_inner())
        })
        .await
    }

    /// Drops pending `epoch`.
    pub async fn abort(&self, epoch: u64) -> Result<AbortResponse> {
        self.call(None, true, |node| async move {
            let req = AbortRequest {
                epoch,
                forwarded: false,
            };
            Ok(admin(node.channel()).abort(req).await?.into_inner())
        })
        .await
    }

    /// Anti-entropy and purging as the node that answers runs them.
    pub async fn anti_entropy_state(&self) -> Result<AntiEntropyStateResponse> {
        self.call(None, true, |node| async move {
            let resp = admin(node.channel())
                .anti_entropy_state(AntiEntropyStateRequest {})
                .await?;
            Ok(resp.into_inner())
        })
        .await
    }

    /// Opens the connection and session to every node this client knows (the addresses
    /// given and, when routing by key, the partition map's members) with one get of
    /// `key` on each, all at once. Connections are otherwise opened by the first request
    /// that needs them, which then waits for the set-up: a caller that times requests
    /// (the load generator) warms up first. Returns how many sessions answered.
    pub async fn warm_up(&self, key: impl AsRef<[u8]>) -> usize {
        let key = key.as_ref();
        let conns = self.known_conns();
        futures::future::join_all(conns.iter().map(|c| c.warm_up(key)))
            .await
            .into_iter()
            .sum()
    }

    /// Every open connection, each once: the addresses given, then the routed members.
    fn known_conns(&self) -> Vec<Arc<NodeConn>> {
        let mut conns = self.inner.seeds.clone();
        let routes = self.inner.routes.read().expect("routes lock").clone();
        for conn in routes.iter().flat_map(|r| r.conns()) {
            if !conns.iter().any(|c| Arc::ptr_eq(c, conn)) {
                conns.push(conn.clone());
            }
        }
        conns
    }

    /// Re-reads the partition map used for routing by key. Returns its epoch.
    pub async fn refresh_routes(&self) -> Result<u64> {
        let resp = self.partition_map().await?;
        let routes = Routes::build(resp, &self.known_conns(), &self.inner.config.settings())?;
        let epoch = routes.epoch();
        *self.inner.routes.write().expect("routes lock") = Some(Arc::new(routes));
        Ok(epoch)
    }

    /// Sends a request to the first candidate node, failing over as the module header
    /// says.
    async fn call<T, F, Fut>(&self, key: Option<&[u8]>, idempotent: bool, f: F) -> Result<T>
    where
        F: Fn(Arc<NodeConn>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut last = None;
        let mut order = self.candidates(key, idempotent).into_iter();
        // Down nodes are tried only once every other candidate failed, unless this request
        // takes a down node's trial: it then tries it in its place.
        let mut deferred = Vec::new();
        loop {
            let node = match order.next() {
                Some(node) if node.usable() => node,
                Some(node) => {
                    deferred.push(node);
                    continue;
                }
                None if deferred.is_empty() => break,
                None => deferred.remove(0),
            };
            match f(node.clone()).await {
                Ok(resp) => {
                    node.mark_up();
                    return Ok(resp);
                }
                Err(err) => {
                    // Refused, lost or unanswered: tried last for a while. A node that
                    // stopped answering with its connection open (frozen, or across a
                    // partition that drops packets) would otherwise hold every request
                    // sent to it for the whole timeout.
                    if err.is_transport_failure() {
                        node.mark_down();
                    }
                    let may_retry = if idempotent {
                        err.is_transport_failure()
                    } else {
                        err.is_connect_failure()
                    };
                    if !may_retry {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(Error::NoAddress))
    }

    /// Nodes to try, in order: the key's preference list when routing (reads rotated over
    /// it, writes owner first), then the addresses given, round-robin. (`call` tries the
    /// nodes marked down last.)
    fn candidates(&self, key: Option<&[u8]>, spread: bool) -> Vec<Arc<NodeConn>> {
        let turn = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut list = Vec::with_capacity(self.inner.seeds.len() + 3);
        if let Some(key) = key {
            let routes = self.inner.routes.read().expect("routes lock").clone();
            if let Some(routes) = routes {
                list = routes.preference(key, if spread { turn } else { 0 });
            }
        }
        let seeds = &self.inner.seeds;
        for i in 0..seeds.len() {
            let seed = &seeds[(turn + i) % seeds.len()];
            if !list.iter().any(|c| Arc::ptr_eq(c, seed)) {
                list.push(seed.clone());
            }
        }
        list
    }
}

/// A node answered a request with the answer to another kind of request.
fn mismatched(asked: &str, got: &Answer) -> Error {
    let got = match got {
        Answer::Get(_) => "a get's answer",
        Answer::Put(_) => "a put's answer",
        Answer::Delete(_) => "a delete's answer",
        Answer::Error(_) => "an error",
    };
    Error::Status {
        code: tonic::Code::Internal,
        message: format!("the node answered a {asked} with {got}"),
        origin: Origin::Node,
    }
}

fn admin(ch: Chan) -> AdminClient<Chan> {
    AdminClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Re-reads the partition map periodically while the client is alive.
fn spawn_map_refresher(inner: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            let period = match inner.upgrade() {
                Some(inner) => inner.config.map_refresh,
                None => return,
            };
            tokio::time::sleep(period).await;
            let Some(inner) = inner.upgrade() else { return };
            let _ = Client { inner }.refresh_routes().await;
        }
    });
}
