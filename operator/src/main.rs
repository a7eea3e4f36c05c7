//! `dynamo-operator`: runs the DynamoCluster controller, with leader election, health and
//! metrics endpoints.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use dynamo_operator::crd::DynamoCluster;
use dynamo_operator::desired::PeerAddressing;
use dynamo_operator::http::{router, Health};
use dynamo_operator::leader::LeaseLock;
use dynamo_operator::metrics::Metrics;
use dynamo_operator::reconcile::{error_policy, reconcile, AdminSource, Context};

/// Kubernetes operator for Dynamo clusters.
#[derive(Parser, Debug)]
struct Args {
    /// Address of the health and metrics endpoints.
    #[arg(long, env = "DYNAMO_OPERATOR_HTTP", default_value = "0.0.0.0:8080")]
    http_listen: String,
    /// Only watch this namespace (all namespaces when unset).
    #[arg(long, env = "DYNAMO_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader with a Lease, so several replicas can run.
    #[arg(long, env = "DYNAMO_OPERATOR_LEADER_ELECTION", default_value_t = true)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_LEASE_NAME",
        default_value = "dynamo-operator-leader"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "dynamo-operator")]
    identity: String,
    /// How the operator and the partition maps address the nodes: `cluster-dns` (the pods'
    /// names through the headless Service, what runs on Kubernetes) or
    /// `host-ports=HOST:BASE_PORT` (ordinal i at HOST:BASE_PORT+i: only for tests and local
    /// stand-ins whose node processes run on one host instead of in pods).
    #[arg(
        long,
        env = "DYNAMO_OPERATOR_PEER_ADDRESSING",
        default_value = "cluster-dns"
    )]
    peer_addressing: PeerAddressing,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "DYNAMO_OPERATOR_LOG", default_value = "info")]
    log: String,
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn reporter(identity: &str) -> Reporter {
    Reporter {
        controller: "dynamo-operator".into(),
        instance: Some(identity.to_string()),
    }
}

/// Colour codes in the log (standard output) only on a terminal, and not with `NO_COLOR`:
/// in its pod they are noise for `kubectl logs` and log shippers.
fn log_in_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(args.log.as_str())
        .with_ansi(log_in_color())
        .init();
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let leading = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(&args.http_listen).await?;
    let app = router(Health {
        ready: ready.clone(),
        leading: leading.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Ready as soon as it serves, standby or not (see `http`).
    ready.store(true, Ordering::Relaxed);

    let lock = LeaseLock {
        api: Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
        name: args.lease_name.clone(),
        identity: args.identity.clone(),
        duration: Duration::from_secs(15),
    };
    if args.leader_election {
        tracing::info!(identity = %args.identity, "waiting for leadership");
        lock.acquire().await;
        tracing::info!("leading");
    }

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter(&args.identity)),
        metrics,
        admin: AdminSource::Nodes {
            channels: Default::default(),
            certs: Default::default(),
            addressing: Default::default(),
            peers: args.peer_addressing.clone(),
        },
    });
    let ns = &args.watch_namespace;
    let controller = Controller::new(
        scoped::<DynamoCluster>(&client, ns),
        watcher::Config::default(),
    )
    .owns(
        scoped::<StatefulSet>(&client, ns),
        watcher::Config::default(),
    )
    .owns(scoped::<Service>(&client, ns), watcher::Config::default())
    .owns(scoped::<ConfigMap>(&client, ns), watcher::Config::default())
    .owns(
        scoped::<PodDisruptionBudget>(&client, ns),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!("reconcile: {e}");
        }
    });
    leading.store(true, Ordering::Relaxed);
    if args.leader_election {
        tokio::select! {
            _ = controller => {}
            _ = lock.keep() => {
                tracing::error!("lost leadership; exiting so that another replica takes over");
                std::process::exit(1);
            }
        }
    } else {
        controller.await;
    }
    Ok(())
}
