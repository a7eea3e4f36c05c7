//! The orchestration core's driver: observe both sides, [`decide`], perform the one
//! action, emit an Event. It keeps no state between passes: everything it needs is in
//! the operation recorded in status and in what the two sides report, which is what makes
//! a restart at any point safe.
//!
//! It talks to two interfaces: [`Workloads`] (the Kubernetes side: the StatefulSet, its
//! pods and volumes, the status) and [`ClusterAdmin`] (the nodes' admin side), so the same
//! core can drive a local cluster of node processes.

use std::collections::BTreeMap;
use std::future::Future;

use crate::admin::{AdminError, ClusterAdmin};
use crate::crd::ScalingOperation;
use crate::desired::Names;
use crate::scaling::{decide, Action, Decision, Intent, Observed, WorkloadView};

/// Why a Kubernetes-side call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// Someone else changed the object since it was read (HTTP 409 / precondition failed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The API call failed.
    #[error("kubernetes API error: {0}")]
    Api(String),
}

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// The Kubernetes side of one cluster, as the orchestration core needs it.
pub trait Workloads: Send + Sync {
    /// The StatefulSet, pods, claims and recorded operation, read fresh.
    fn observe(&self) -> impl Future<Output = Result<WorkloadView, WorkloadError>> + Send;
    /// Writes the operation in progress (or none) to status.
    fn record(
        &self,
        op: Option<&ScalingOperation>,
    ) -> impl Future<Output = Result<(), WorkloadError>> + Send;
    /// Sets the StatefulSet's replicas, failing with `Conflict` if `expected_resource_version`
    /// is given and the StatefulSet changed since.
    fn scale(
        &self,
        replicas: u32,
        expected_resource_version: Option<&str>,
    ) -> impl Future<Output = Result<(), WorkloadError>> + Send;
    /// Deletes an ordinal's data claim: re-reads it live, checks that its pod is gone, and
    /// deletes it with a UID precondition. A claim that is already gone is success.
    fn delete_volume(&self, ordinal: u32)
        -> impl Future<Output = Result<(), WorkloadError>> + Send;
    /// Publishes an Event on the cluster object.
    fn event(
        &self,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = Result<(), WorkloadError>> + Send;
}

/// Why a pass failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestrateError {
    #[error(transparent)]
    Workloads(#[from] WorkloadError),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

impl OrchestrateError {
    /// Stable short category, for condition reasons, events and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Workloads(WorkloadError::Conflict(_)) => "Conflict",
            Self::Workloads(WorkloadError::Api(_)) => "KubernetesApi",
            Self::Admin(e) => e.category(),
        }
    }
}

/// Reads both sides into an [`Observed`].
pub async fn observe<W: Workloads, A: ClusterAdmin>(
    w: &W,
    a: &A,
    names: &Names,
    intent: &Intent,
) -> Result<Observed, OrchestrateError> {
    let workloads = w.observe().await?;
    let maps = a.maps().await?;
    let reachable = a.members().await?;
    let (mut progress, mut drained) = (None, BTreeMap::new());
    if let Some(pending) = &maps.pending {
        progress = Some(a.progress(pending.epoch).await?);
        if let Some(current) = &maps.current {
            for m in current
                .members
                .iter()
                .filter(|m| pending.member(&m.id).is_none())
            {
                drained.insert(m.id.clone(), a.drained(&m.id).await?);
            }
        }
    }
    Ok(Observed {
        names: names.clone(),
        intent: intent.clone(),
        workloads,
        maps,
        progress,
        drained,
        reachable,
    })
}

/// One pass: observe, decide, act. Returns what was observed and decided.
pub async fn step<W: Workloads, A: ClusterAdmin>(
    w: &W,
    a: &A,
    names: &Names,
    intent: &Intent,
) -> Result<(Observed, Decision), OrchestrateError> {
    let observed = observe(w, a, names, intent).await?;
    let decision = decide(&observed);
    act(w, a, &decision).await?;
    Ok((observed, decision))
}

async fn act<W: Workloads, A: ClusterAdmin>(
    w: &W,
    a: &A,
    d: &Decision,
) -> Result<(), OrchestrateError> {
    use EventType::{Normal, Warning};
    match &d.action {
        Action::Nothing => {
            if let Some(r) = &d.refusal {
                w.event(Warning, r.category(), &r.message()).await?;
            }
        }
        Action::Record(op) => {
            w.record(op.as_ref()).await?;
            let msg = match op {
                Some(op) => format!(
                    "{:?} {} -> {}: step {:?}",
                    op.direction, op.from, op.to, op.step
                ),
                None => "scaling operation finished".to_string(),
            };
            w.event(Normal, "ScalingStep", &msg).await?;
        }
        Action::Scale {
            replicas,
            expected_resource_version,
        } => {
            w.scale(*replicas, expected_resource_version.as_deref())
                .await?;
            w.event(
                Normal,
                "StatefulSetScaled",
                &format!("StatefulSet replicas set to {replicas}"),
            )
            .await?;
        }
        Action::Commit(map) => {
            a.commit(map).await?;
            w.event(
                Normal,
                "MapCommitted",
                &format!(
                    "partition map epoch {} committed for {} nodes",
                    map.epoch,
                    map.members.len()
                ),
            )
            .await?;
        }
        Action::Finalize(epoch) => {
            a.finalize(*epoch).await?;
            w.event(
                Normal,
                "MapFinalized",
                &format!("partition map epoch {epoch} in force; old version retired"),
            )
            .await?;
        }
        Action::Abort(epoch) => {
            a.abort(*epoch).await?;
            w.event(
                Normal,
                "MapAborted",
                &format!(
                    "pending partition map epoch {epoch} dropped; the previous map stays in force"
                ),
            )
            .await?;
        }
        Action::DeleteVolume(ordinal) => {
            w.delete_volume(*ordinal).await?;
            w.event(
                Normal,
                "VolumeDeleted",
                &format!("data volume of departed ordinal {ordinal} deleted"),
            )
            .await?;
        }
    }
    Ok(())
}
