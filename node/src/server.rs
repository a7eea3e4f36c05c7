//! Starts a node: storage, identity, partition map, gRPC and HTTP servers, background
//! tasks; and stops it cleanly on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use dynamo_core::planner;
use dynamo_proto::v1::{
    admin_server::AdminServer, kv_server::KvServer, replica_server::ReplicaServer,
};
use tokio::sync::watch;

use crate::clock::SystemClock;
use crate::config::{FsyncPolicy, NodeConfig};
use crate::network::{GrpcTransport, MAX_MESSAGE_BYTES};
use crate::node::Node;
use crate::service::{admin::AdminService, kv::KvService, replica::ReplicaService};
use crate::shutdown::{self, Background};
use crate::storage::rocks::RocksEngine;
use crate::storage::Engine;
use crate::store::Store;
use crate::{handoff, identity};

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let engine: Arc<dyn Engine> = Arc::new(
        RocksEngine::open(&cfg.data_dir, cfg.cache_bytes)
            .with_context(|| format!("opening RocksDB in {}", cfg.data_dir.display()))?,
    );
    let identity = identity::open(&*engine, &cfg.node_id, &cfg.cluster_id)?;
    tracing::info!(
        node = %identity.node_id,
        incarnation = identity.incarnation,
        new_incarnation = identity.new_incarnation,
        "storage open"
    );
    let map = planner::plan(None, &cfg.members, cfg.partitions, cfg.replication.n)?;
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
    let transport = Arc::new(GrpcTransport::new(cfg.cluster_id.clone()));
    let node = Arc::new(Node::new(
        cfg.clone(),
        identity,
        map,
        store,
        transport,
        Arc::new(SystemClock),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KvServer<KvService>>().await;
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .add_service(health_service)
        .add_service(
            KvServer::new(KvService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(AdminServer::new(AdminService::new(node.clone())))
        .add_service(
            ReplicaServer::new(ReplicaService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding gRPC address {}", cfg.listen))?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP address {}", cfg.http_listen))?;
    let grpc_task =
        tokio::spawn(grpc.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));
    let http_task = tokio::spawn(crate::http::serve(
        http_listener,
        node.clone(),
        stopped(stop_rx.clone()),
    ));
    let handoff_task = tokio::spawn(handoff::run(node.clone()));
    let sync_task = (cfg.fsync == FsyncPolicy::Periodic).then(|| {
        let engine = engine.clone();
        let every = Duration::from_millis(cfg.fsync_interval_ms.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let engine = engine.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || engine.sync()).await {
                    tracing::error!(error = %e, "periodic WAL sync failed");
                }
            }
        })
    });
    node.set_ready(true);
    tracing::info!(grpc = %cfg.listen, http = %cfg.http_listen, advertise = %cfg.advertise_addr(), "node serving");

    shutdown_signal().await;
    tracing::info!("shutting down");
    node.set_ready(false);
    node.stop_sessions();
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    let background = Background {
        handoff: Some(handoff_task),
        sync: sync_task,
    };
    // Everything accepted must be durable within the grace, or the stop is not clean.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    shutdown::finish(&node, background, deadline)
        .await
        .context("no clean stop; the next start takes a new incarnation")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
