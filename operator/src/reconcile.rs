//! The reconciler: a short driver over the pure parts.
//!
//! observe → validate ([`crate::validate`]) → build desired objects ([`crate::desired`]) →
//! apply (server-side apply, one field manager, forced) → one scaling step
//! ([`crate::orchestrate`]) → status ([`crate::status`]). Wrapped in kube's finalizer
//! helper so the operator sees deletions and reports what it keeps.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::Recorder;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admin::certs::AdminCerts;
use crate::admin::memory::MemoryAdmin;
use crate::admin::nodes::{Channels, NodeAdmin, PodAddresses, PodAddressing};
use crate::admin::ClusterAdmin;
use crate::certificates::{CertificateError, Issuer};
use crate::crd::DynamoCluster;
use crate::desired::{self, selector_string, Names, PeerAddressing, MANAGER};
use crate::kube_workloads::{api_error, KubeWorkloads};
use crate::metrics::Metrics;
use crate::orchestrate::{self, EventType, OrchestrateError, Workloads};
use crate::scaling::{Action, Intent};
use crate::status::{status, StatusInputs};
use crate::validate::{validate, InvalidSpec};

/// Finalizer the operator puts on every `DynamoCluster`.
pub const FINALIZER: &str = "dynamokv.io/finalizer";

/// Which admin side the reconciler drives.
#[derive(Clone, Debug)]
pub enum AdminSource {
    /// The nodes' gRPC Admin API (see [`crate::admin::nodes`]), at the nodes of the
    /// cluster's pods, over channels kept across reconciles.
    Nodes {
        channels: Channels,
        /// The operator's admin certificates of clusters with TLS.
        certs: AdminCerts,
        addressing: PodAddressing,
        /// The member addresses maps are planned with (and, through [`Names`], what
        /// `addressing` resolves by default): cluster DNS in Kubernetes.
        peers: PeerAddressing,
    },
    /// The in-memory model of the nodes (tests and simulations).
    Memory(MemoryAdmin),
}

/// Shared state of the reconcilers.
pub struct Context {
    pub client: kube::Client,
    /// One recorder for the process, so repeated Events (a refusal every requeue) are
    /// aggregated into a series instead of piling up.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub admin: AdminSource,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpec),
    #[error(transparent)]
    Orchestrate(#[from] OrchestrateError),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("certificates: {0}")]
    Certificates(#[from] CertificateError),
}

impl Error {
    /// Stable short category, for metric labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::Orchestrate(e) => e.category(),
            Self::Kube(_) => "KubernetesApi",
            Self::Finalizer(_) => "Finalizer",
            Self::Certificates(_) => "Certificates",
        }
    }
}

/// Entry point for the controller.
pub async fn reconcile(dc: Arc<DynamoCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let ns = dc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, dc, |event| async {
        match event {
            Finalizer::Apply(dc) => apply(&dc, &ctx).await,
            Finalizer::Cleanup(dc) => cleanup(&dc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// Requeue policy on error: retry soon; conflicts are routine under concurrent writers.
pub fn error_policy(_dc: Arc<DynamoCluster>, err: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(category = err.category(), "reconcile failed: {err}");
    Requeue::requeue(Duration::from_secs(5))
}

async fn apply(dc: &DynamoCluster, ctx: &Context) -> Result<Requeue, Error> {
    let recorder = ctx.recorder.clone();
    let workloads = KubeWorkloads::new(ctx.client.clone(), dc, recorder);
    let intent = match validate(dc) {
        Ok(i) => i,
        Err(e) => {
            workloads
                .event(EventType::Warning, "InvalidSpec", &e.0)
                .await
                .map_err(OrchestrateError::from)?;
            let inputs = StatusInputs {
                problem: Some(("InvalidSpec".into(), e.0.clone())),
                ..base_inputs(dc)
            };
            write_status(&workloads, dc, &inputs).await?;
            return Ok(Requeue::await_change());
        }
    };
    // Certificates first: a pod the StatefulSet is about to start needs its files.
    let ca = crate::certificates::ensure(&ctx.client, dc, intent.replicas).await?;
    match &ctx.admin {
        AdminSource::Nodes {
            channels,
            certs,
            addressing,
            peers,
        } => {
            let names = Names::of(dc).with_addressing(peers.clone());
            let tls = match &ca {
                Some(Issuer::Own { ca, ca_pem }) => {
                    Some(certs.client_tls(&names, ca, ca_pem, std::time::SystemTime::now()))
                }
                Some(Issuer::CertManager {
                    cert_pem,
                    key_pem,
                    ca_pem,
                }) => Some(certs.issued(&names, cert_pem, key_pem, ca_pem)),
                None => None,
            }
            .transpose()
            .map_err(CertificateError::from)?;
            let pods = PodAddresses::new(ctx.client.clone(), &names, addressing.clone());
            let admin = NodeAdmin::new(pods, channels.clone()).with_tls(tls);
            reconcile_cluster(dc, &names, &intent, &workloads, &admin, ctx.client.clone()).await
        }
        AdminSource::Memory(admin) => {
            let names = Names::of(dc);
            reconcile_cluster(dc, &names, &intent, &workloads, admin, ctx.client.clone()).await
        }
    }
}

fn base_inputs(dc: &DynamoCluster) -> StatusInputs {
    StatusInputs {
        generation: dc.meta().generation,
        selector: selector_string(&Names::of(dc)),
        ..Default::default()
    }
}

/// One reconcile of a valid cluster against any admin side.
///
/// `names` are the cluster's, with the addressing the partition maps' members get.
pub async fn reconcile_cluster<A: ClusterAdmin>(
    dc: &DynamoCluster,
    names: &Names,
    intent: &Intent,
    w: &KubeWorkloads,
    admin: &A,
    client: kube::Client,
) -> Result<Requeue, Error> {
    let d = desired::build(dc, 0);
    let ns = &names.namespace;
    ensure_secret(&Api::<Secret>::namespaced(client.clone(), ns), dc).await?;
    apply_object(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        &d.configmap,
    )
    .await?;
    apply_object(
        &Api::<Service>::namespaced(client.clone(), ns),
        &d.peer_service,
    )
    .await?;
    apply_object(
        &Api::<Service>::namespaced(client.clone(), ns),
        &d.client_service,
    )
    .await?;
    apply_object(&Api::<PodDisruptionBudget>::namespaced(client, ns), &d.pdb).await?;

    let (observed, decision) = match orchestrate::step(w, admin, names, intent).await {
        Ok(done) => done,
        Err(e @ OrchestrateError::Admin(_)) => {
            // No node answers (all down: a bad image, say): still roll the pod template at
            // the replicas in force, so that a fixed spec reaches the pods.
            let view = w.observe().await.map_err(OrchestrateError::from)?;
            if let Some(sts) = view.statefulset {
                w.apply_statefulset(sts.replicas, None)
                    .await
                    .map_err(OrchestrateError::from)?;
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // Keep the pod template current (image, resources, ...) at the replicas in force.
    if let (Some(sts), false) = (
        &observed.workloads.statefulset,
        matches!(decision.action, Action::Scale { .. }),
    ) {
        w.apply_statefulset(sts.replicas, None)
            .await
            .map_err(OrchestrateError::from)?;
    }
    let operation = match &decision.action {
        Action::Record(op) => op.clone(),
        _ => observed.workloads.operation.clone(),
    };
    let busy =
        operation.is_some() || decision.waiting.is_some() || decision.action != Action::Nothing;
    let inputs = StatusInputs {
        pods: observed.workloads.pods.len() as i32,
        ready: observed.workloads.pods.values().filter(|r| **r).count() as i32,
        maps: observed.maps.clone(),
        progress: observed.progress.clone(),
        operation,
        waiting: decision.waiting.clone(),
        problem: decision
            .refusal
            .as_ref()
            .map(|r| (r.category().to_string(), r.message())),
        ..base_inputs(dc)
    };
    write_status(w, dc, &inputs).await?;
    Ok(match (busy, &decision.refusal) {
        (true, _) => Requeue::requeue(Duration::from_secs(3)),
        (false, Some(_)) => Requeue::requeue(Duration::from_secs(30)),
        (false, None) => Requeue::requeue(Duration::from_secs(300)),
    })
}

/// Creates the cluster secret if it does not exist; never rewrites one (its value must
/// stay the same for the cluster's life: see [`desired::secret`]).
async fn ensure_secret(api: &Api<Secret>, dc: &DynamoCluster) -> Result<(), Error> {
    let secret = desired::secret::cluster_secret(dc);
    let name = secret.metadata.name.clone().expect("named");
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    match api.create(&PostParams::default(), &secret).await {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()), // made meanwhile
        r => r.map(|_| ()).map_err(Error::from),
    }
}

async fn apply_object<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().expect("desired objects are named");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Writes everything in status but `operation` (which only the state machine records).
async fn write_status(
    w: &KubeWorkloads,
    dc: &DynamoCluster,
    inputs: &StatusInputs,
) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous = dc.status.as_ref();
    let mut value =
        serde_json::to_value(status(inputs, previous, &now)).expect("status serializes");
    let obj = value.as_object_mut().expect("status is an object");
    obj.remove("operation");
    // A merge patch merges maps: remove departed nodes explicitly.
    let per_node = obj.entry("partitionsPerNode").or_insert_with(|| json!({}));
    if let (Some(new), Some(old)) = (per_node.as_object_mut(), previous) {
        for node in old.partitions_per_node.keys() {
            new.entry(node.clone()).or_insert(Value::Null);
        }
    }
    let patch = json!({ "status": value });
    w.clusters
        .patch_status(
            &w.names.cluster,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| Error::Orchestrate(api_error(e).into()))?;
    Ok(())
}

/// On deletion: owner references remove the owned objects; volumes are kept (the
/// StatefulSet's retention policy is Retain), which the Event says.
async fn cleanup(dc: &DynamoCluster, ctx: &Context) -> Result<Requeue, Error> {
    let recorder = ctx.recorder.clone();
    let w = KubeWorkloads::new(ctx.client.clone(), dc, recorder);
    let msg = format!(
        "cluster deleted; its data volumes (data-{}-N) are kept: delete them with kubectl when the data is no longer needed",
        dc.name_any()
    );
    w.event(EventType::Normal, "Deleted", &msg)
        .await
        .map_err(OrchestrateError::from)?;
    Ok(Requeue::await_change())
}
