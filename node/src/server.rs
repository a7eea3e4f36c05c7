//! Starts a node: storage, identity, partition map, gRPC and HTTP servers, background
//! tasks; and stops it cleanly on SIGTERM or SIGINT (see [`crate::shutdown`]).
//!
//! The caller opens the engine ([`open_engine`]) and closes it: it keeps the last handle
//! on RocksDB, so that the database closes on its thread, after everything else that
//! used it has ended (see `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dynamo_core::map_state::MapState;
use dynamo_core::planner;
use dynamo_proto::v1::{
    admin_server::AdminServer, anti_entropy_server::AntiEntropyServer, gossip_server::GossipServer,
    kv_server::KvServer, replica_server::ReplicaServer,
};
use tokio::sync::watch;
use tower::layer::util::{Identity, Stack};

use crate::access::{Access, AccessLayer};
use crate::clock::{Clock as _, SystemClock};
use crate::config::{FsyncPolicy, NodeConfig};
use crate::gossip::state::{Entry, Status};
use crate::listener::{self, Admission, TlsAccept};
use crate::network::{GrpcTransport, Transport, MAX_MESSAGE_BYTES};
use crate::node::Node;
use crate::service::{
    admin::AdminService, antientropy::AntiEntropyService, gossip::GossipService, kv::KvService,
    replica::ReplicaService,
};
use crate::shutdown::{self, Background};
use crate::storage::rocks::RocksEngine;
use crate::storage::Engine;
use crate::store::Store;
use crate::tls::NodeTls;
use crate::{antientropy, change, gossip, handoff, identity};

/// How long a stopping node waits for requests in flight before it stops its
/// background tasks and closes its store.
const SERVE_GRACE: Duration = Duration::from_secs(5);
/// How long a stop takes at most, in all; past it, the stop is not clean (the next start
/// takes a new incarnation). Well under Kubernetes's default termination grace (30 s).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (or creates) the node's RocksDB in its data directory.
pub fn open_engine(cfg: &NodeConfig) -> anyhow::Result<Arc<dyn Engine>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let engine = RocksEngine::open(&cfg.data_dir, cfg.cache_bytes)
        .with_context(|| format!("opening RocksDB in {}", cfg.data_dir.display()))?;
    Ok(Arc::new(engine))
}

/// Runs a node on `engine` until SIGTERM or SIGINT.
pub async fn run(cfg: NodeConfig, engine: Arc<dyn Engine>) -> anyhow::Result<()> {
    let identity = identity::open(&*engine, &cfg.node_id, &cfg.cluster_id)?;
    tracing::info!(
        node = %identity.node_id,
        incarnation = identity.incarnation,
        new_incarnation = identity.new_incarnation,
        "storage open"
    );
    let tls = match cfg.tls_files() {
        Some(files) => Some(NodeTls::load(files, &cfg.cluster_id).context("loading TLS files")?),
        None => {
            tracing::warn!(
                "TLS is off (no tls_cert, tls_key, tls_ca): traffic is plaintext and peers \
                 are not authenticated; for development only"
            );
            None
        }
    };
    let access = Access::load(cfg.auth_file.clone(), tls.is_some()).map_err(anyhow::Error::msg)?;
    if access.file().is_none() {
        tracing::warn!(
            "no authorization file (auth_file): every client may read, write and administer"
        );
    }
    let transport = Arc::new(
        GrpcTransport::new(cfg.cluster_id.clone()).with_tls(tls.as_ref().map(|t| t.dial())),
    );
    let (cfg, state, learned) = initial_state(cfg, &identity, &*transport, &*engine).await?;
    let store = match cfg.fsync {
        FsyncPolicy::Always => Store::synced(
            engine.clone(),
            cfg.partitions,
            Duration::from_micros(cfg.fsync_group_window_us),
        ),
        FsyncPolicy::Periodic | FsyncPolicy::Never => {
            Store::new(engine.clone(), cfg.partitions, false)
        }
    };
    let mut node = Node::new(
        cfg.clone(),
        identity,
        state,
        store,
        transport,
        Arc::new(SystemClock),
    );
    node.access = access.clone();
    let node = Arc::new(node);
    gossip::seed_view(&node, learned);
    let reload_every = Duration::from_millis(cfg.tls_reload_interval_ms);
    let mut watchers = Vec::new();
    if let Some(tls) = &tls {
        watchers.push(tls.watch(reload_every));
    }
    if let Some(file) = access.file() {
        let access = access.clone();
        watchers.push(dynamo_proto::tls::watch(
            vec![file.to_owned()],
            reload_every,
            move || access.reload(),
        ));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let health_reporter = tonic_health::server::HealthReporter::new();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
    );
    let mut grpc_tasks = Vec::new();
    let admission = Admission::new(cfg.max_connections_per_client);
    let refused = {
        let node = node.clone();
        move |ip: std::net::IpAddr| {
            node.metrics.connections_refused.inc();
            tracing::debug!(%ip, "a connection over the client's bound was closed");
        }
    };
    let client_api = match cfg.peer_listen {
        Some(_) => client_router(&node, health_service.clone()),
        None => {
            tracing::warn!(
                "the peer API (replication, gossip, map changes) shares the client port: \
                 set peer_listen to give it a port of its own that clients cannot reach"
            );
            peer_router(&node, health_service.clone(), false)
        }
    };
    let tls_accept = |peer_port: bool| {
        let tls = tls.clone()?;
        let node = node.clone();
        Some(TlsAccept {
            config: Arc::new(move || match peer_port {
                true => tls.peer_port(),
                false => tls.client_port(),
            }),
            timeout: TLS_HANDSHAKE_TIMEOUT,
            refused: Arc::new(move |peer, why| {
                node.metrics.tls_handshakes_refused.inc();
                tracing::warn!(%peer, "connection refused: {why}");
            }),
        })
    };
    let listener = bind(cfg.listen, "client gRPC").await?;
    let incoming = listener::incoming(
        listener,
        admission.clone(),
        refused.clone(),
        tls_accept(false),
    );
    grpc_tasks.push(tokio::spawn(
        client_api.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
    ));
    if let Some(peer_listen) = cfg.peer_listen {
        let listener = bind(peer_listen, "peer gRPC").await?;
        // Peers have a bound of their own: clients filling theirs cannot lock peers out.
        let incoming = listener::incoming(
            listener,
            Admission::new(cfg.max_connections_per_client),
            refused,
            tls_accept(true),
        );
        grpc_tasks.push(tokio::spawn(
            peer_router(&node, health_service, true)
                .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())),
        ));
    }
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP address {}", cfg.http_listen))?;
    let http_task = tokio::spawn(crate::http::serve(
        http_listener,
        node.clone(),
        stopped(stop_rx.clone()),
    ));
    let gossip_task = tokio::spawn(gossip::run(node.clone()));
    if node.try_map().is_none() {
        tracing::info!(
            "serving the admin and gossip services without a partition map: waiting for \
             the first map to be committed (dynamoctl cluster commit, or the operator)"
        );
    }
    let has_map = tokio::select! {
        biased;
        _ = node.has_map() => true,
        _ = shutdown_signal() => false,
    };
    let background = match has_map {
        true => Some(start_background(&node)),
        false => None,
    };
    if has_map {
        node.set_ready(true);
        tracing::info!(grpc = %cfg.listen, http = %cfg.http_listen, peer = %cfg.peer_addr(), advertise = %cfg.client_addr(), "node serving");
        shutdown_signal().await;
    }
    tracing::info!("shutting down");
    watchers.iter().for_each(|w| w.abort());
    let stopping = tokio::time::Instant::now();
    node.set_ready(false);
    gossip_task.abort();
    gossip::farewell(&node).await;
    node.stop_sessions();
    let _ = stop_tx.send(true);
    for task in grpc_tasks {
        let _ = tokio::time::timeout_at(stopping + SERVE_GRACE, task).await;
    }
    let _ = tokio::time::timeout_at(stopping + SERVE_GRACE, http_task).await;
    let background = background.unwrap_or_default();
    let deadline = (stopping + STOP_GRACE).into_std();
    match shutdown::finish(&node, background, deadline).await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => {
            if matches!(e, shutdown::StopError::Deadline) {
                // The store's writer may still be held (a hung disk): dropping the last
                // handle on the node would wait for it forever. Leaked, the node keeps
                // RocksDB open, and `main` leaves without closing it.
                std::mem::forget(node);
            }
            Err(anyhow::Error::new(e)
                .context("no clean stop; the next start takes a new incarnation"))
        }
    }
}

/// The gRPC server with its layers: authorization on every call.
type Router = tonic::transport::server::Router<Stack<AccessLayer, Identity>>;

/// The gRPC server's settings, the same on both ports: authorization of every call
/// (see [`crate::access`]), and the bound on requests in flight per connection.
fn grpc_server(
    node: &Node,
    certificate_required: bool,
) -> tonic::transport::Server<Stack<AccessLayer, Identity>> {
    let per_connection = node.cfg.max_requests_per_connection;
    tonic::transport::Server::builder()
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .concurrency_limit_per_connection(per_connection)
        .max_concurrent_streams(u32::try_from(per_connection).unwrap_or(u32::MAX))
        .layer(AccessLayer {
            access: node.access.clone(),
            certificate_required,
        })
}

type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// The client API: `Kv`, `Health` and the `Admin` calls that change nothing.
fn client_router(node: &Arc<Node>, health: HealthService) -> Router {
    grpc_server(node, false)
        .add_service(health)
        .add_service(kv_server(node))
        .add_service(AdminServer::new(AdminService::read_only(node.clone())))
}

/// The peer API: everything (a peer forwards client requests, and the operator and
/// `dynamoctl` make map changes here).
fn peer_router(node: &Arc<Node>, health: HealthService, own_port: bool) -> Router {
    let peer_message = node.cfg.max_peer_message_bytes();
    grpc_server(node, own_port)
        .add_service(health)
        .add_service(kv_server(node))
        .add_service(AdminServer::new(AdminService::new(node.clone())))
        .add_service(GossipServer::new(GossipService::new(node.clone())))
        .add_service(
            ReplicaServer::new(ReplicaService::new(node.clone()))
                .max_decoding_message_size(peer_message)
                .max_encoding_message_size(peer_message),
        )
        .add_service(
            // A leaf-key answer is as long as the differing leaves' keys: not bounded
            // by a batch.
            AntiEntropyServer::new(AntiEntropyService::new(node.clone()))
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
}

/// The Kv service, its messages sized by the largest value and sibling set.
fn kv_server(node: &Arc<Node>) -> KvServer<KvService> {
    KvServer::new(KvService::new(node.clone()))
        .max_decoding_message_size(node.cfg.max_client_request_bytes())
        .max_encoding_message_size(node.cfg.max_client_response_bytes())
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// Starts the tasks that need a partition map: hinted handoff, anti-entropy, purging,
/// transfers and clean-up of a change of members, periodic WAL syncs.
fn start_background(node: &Arc<Node>) -> Background {
    let cfg = &node.cfg;
    let handoff_task = tokio::spawn(handoff::run(node.clone()));
    let change_task = tokio::spawn(change::run(node.clone()));
    let anti_entropy_task = (cfg.anti_entropy_interval_ms > 0).then(|| {
        let every = Duration::from_millis(cfg.anti_entropy_interval_ms);
        tokio::spawn(antientropy::run(node.clone(), every))
    });
    let purge_task = (cfg.tombstone_grace_ms > 0).then(|| {
        let grace = Duration::from_millis(cfg.tombstone_grace_ms);
        let every = antientropy::purge::interval(grace);
        tokio::spawn(antientropy::purge::run(node.clone(), grace, every))
    });
    let sync_task = (cfg.fsync == FsyncPolicy::Periodic).then(|| {
        let every = Duration::from_millis(cfg.fsync_interval_ms.max(1));
        tokio::spawn(periodic_sync(node.clone(), every))
    });
    Background {
        handoff: Some(handoff_task),
        change: Some(change_task),
        sync: sync_task,
        anti_entropy: anti_entropy_task,
        purge: purge_task,
    }
}

/// The configuration and the map state a node starts with, with the gossip entries
/// learned on the way:
/// - the state stored by its last run, if any (its partition count becomes the node's);
/// - else, for a node given `members`, the cluster's state if another member or a seed
///   already has one (a node re-created with an empty volume), or else the first map,
///   planned from the members (every member plans the same one);
/// - else (seeds only) the state a seed gossips, or none yet: the node then serves its
///   admin and gossip services and waits for the first map to be committed.
async fn initial_state(
    mut cfg: NodeConfig,
    identity: &identity::Identity,
    transport: &dyn Transport,
    engine: &dyn Engine,
) -> anyhow::Result<(NodeConfig, MapState, Vec<Entry>)> {
    let (state, learned) = match crate::maps::load(engine)? {
        Some(stored) => (stored, Vec::new()),
        None => {
            let me = Entry {
                generation: SystemClock.now_ms(),
                heartbeat: 0,
                node_id: identity.node_id.clone(),
                addr: cfg.peer_addr(),
                client_addr: cfg.gossiped_client_addr(),
                zone: None,
                incarnation: identity.incarnation,
                status: Status::Alive,
                map_version: 0,
            };
            let mut ask = cfg.seeds.clone();
            ask.extend(
                cfg.members
                    .iter()
                    .filter(|m| m.id != identity.node_id)
                    .map(|m| m.addr.clone()),
            );
            let rounds = if cfg.members.is_empty() { 3 } else { 1 };
            let (found, learned) = match ask.is_empty() {
                true => (None, Vec::new()),
                false => {
                    gossip::bootstrap(transport, &cfg.cluster_id, &me, &ask, Some(rounds)).await
                }
            };
            let state = match found {
                Some(state) => state,
                None if !cfg.members.is_empty() => MapState::in_force(planner::plan(
                    None,
                    &cfg.members,
                    cfg.partitions,
                    cfg.replication.n,
                )?),
                None => MapState::default(),
            };
            if state.version > 0 {
                crate::maps::save(engine, &state)?;
            }
            (state, learned)
        }
    };
    if let Some(map) = state.reads() {
        cfg.partitions = map.partitions;
        cfg.replication.n = map.replication;
    }
    let r = cfg.replication;
    if r.r > r.n || r.w > r.n {
        anyhow::bail!(
            "the cluster's map has N={}, less than this node's R={} or W={}",
            r.n,
            r.r,
            r.w
        );
    }
    Ok((cfg, state, learned))
}

/// Syncs the WAL every `every` until the node is stopping (a sync under way finishes).
async fn periodic_sync(node: Arc<Node>, every: Duration) {
    let stopping = node.stopping();
    tokio::pin!(stopping);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            _ = &mut stopping => return,
        }
        let engine = node.store.engine().clone();
        if let Ok(Err(e)) = crate::determinism::blocking(move || engine.sync()).await {
            tracing::error!(error = %e, "periodic WAL sync failed");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        biased;
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
