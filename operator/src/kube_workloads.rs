//! [`Workloads`] over the Kubernetes API: the StatefulSet, its pods and claims, the
//! cluster's status and Events. Reads are live (not from a cache) because the state
//! machine acts on them; destructive calls use preconditions:
//! - lowering replicas applies the StatefulSet with the `resourceVersion` it was observed
//!   at, so a concurrent change makes it fail with a conflict instead of acting on stale
//!   state;
//! - a claim is deleted only after re-reading it and its pod live, with a UID
//!   precondition, so a claim re-created for a new pod of the same ordinal is never hit.

use k8s_openapi::api::apps::v1::StatefulSet;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{DynamoCluster, ScalingOperation};
use crate::desired::{selector_string, statefulset::statefulset, Names, MANAGER};
use crate::orchestrate::{EventType, WorkloadError, Workloads};
use crate::scaling::{StsView, WorkloadView};

/// The Kubernetes side of one cluster.
pub struct KubeWorkloads {
    pub dc: DynamoCluster,
    pub names: Names,
    pub sts: Api<StatefulSet>,
    pub pods: Api<Pod>,
    pub pvcs: Api<PersistentVolumeClaim>,
    pub clusters: Api<DynamoCluster>,
    pub nodes: Api<Node>,
    pub recorder: Recorder,
}

impl KubeWorkloads {
    /// The Kubernetes side of `dc`, in its namespace.
    pub fn new(client: kube::Client, dc: &DynamoCluster, recorder: Recorder) -> Self {
        let names = Names::of(dc);
        let ns = names.namespace.as_str();
        Self {
            dc: dc.clone(),
            sts: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            pvcs: Api::namespaced(client.clone(), ns),
            clusters: Api::namespaced(client.clone(), ns),
            nodes: Api::all(client),
            names,
            recorder,
        }
    }

    /// Server-side applies the StatefulSet with `replicas`, optionally as of `resource_version`.
    pub async fn apply_statefulset(
        &self,
        replicas: u32,
        resource_version: Option<&str>,
    ) -> Result<(), WorkloadError> {
        let mut sts = statefulset(&self.dc, replicas as i32);
        sts.metadata.resource_version = resource_version.map(str::to_string);
        self.sts
            .patch(
                &self.names.statefulset(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&sts),
            )
            .await
            .map(|_| ())
            .map_err(api_error)
    }
}

impl KubeWorkloads {
    /// Zone of each scheduled pod: the zone label of the Kubernetes node it runs on.
    async fn zones(&self, pods: &[Pod]) -> Result<BTreeMap<u32, String>, WorkloadError> {
        let key = &self.dc.spec.zone_topology_key;
        let mut zones = BTreeMap::new();
        for pod in pods {
            let (Some(ordinal), Some(node)) = (
                self.names.ordinal_of(&pod.name_any()),
                pod.spec.as_ref().and_then(|s| s.node_name.as_ref()),
            ) else {
                continue;
            };
            if let Some(n) = self.nodes.get_opt(node).await.map_err(api_error)? {
                if let Some(zone) = n.labels().get(key) {
                    zones.insert(ordinal, zone.clone());
                }
            }
        }
        Ok(zones)
    }
}

/// Maps a kube error to the core's categories (409 and 412-ish preconditions are conflicts).
pub fn api_error(e: kube::Error) -> WorkloadError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => WorkloadError::Conflict(s.message.clone()),
        _ => WorkloadError::Api(e.to_string()),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Workloads for KubeWorkloads {
    async fn observe(&self) -> Result<WorkloadView, WorkloadError> {
        let selector = selector_string(&self.names);
        let sts = self
            .sts
            .get_opt(&self.names.statefulset())
            .await
            .map_err(api_error)?;
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_error)?;
        let pvcs = self
            .pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_error)?;
        let live = self
            .clusters
            .get_status(&self.names.cluster)
            .await
            .map_err(api_error)?;
        let zones = self.zones(&pods.items).await?;
        Ok(WorkloadView {
            statefulset: sts.map(|s| StsView {
                replicas: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32,
                resource_version: s.resource_version(),
            }),
            pods: pods
                .items
                .iter()
                .filter_map(|p| Some((self.names.ordinal_of(&p.name_any())?, pod_ready(p))))
                .collect(),
            pvcs: pvcs
                .items
                .iter()
                .filter_map(|c| self.names.ordinal_of_pvc(&c.name_any()))
                .collect(),
            zones,
            operation: live.status.and_then(|s| s.operation),
        })
    }

    async fn record(&self, op: Option<&ScalingOperation>) -> Result<(), WorkloadError> {
        let patch = json!({ "status": { "operation": op } });
        self.clusters
            .patch_status(
                &self.names.cluster,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
            .map_err(api_error)
    }

    async fn scale(&self, replicas: u32, expected: Option<&str>) -> Result<(), WorkloadError> {
        self.apply_statefulset(replicas, expected).await
    }

    async fn delete_volume(&self, ordinal: u32) -> Result<(), WorkloadError> {
        let name = self.names.pvc(ordinal);
        let Some(pvc) = self.pvcs.get_opt(&name).await.map_err(api_error)? else {
            return Ok(());
        };
        if self
            .pods
            .get_opt(&self.names.pod(ordinal))
            .await
            .map_err(api_error)?
            .is_some()
        {
            return Err(WorkloadError::Conflict(format!(
                "pod {} still exists; not deleting {name}",
                self.names.pod(ordinal)
            )));
        }
        let ours = pvc.labels().get("app.kubernetes.io/instance") == Some(&self.names.cluster);
        if !ours {
            return Err(WorkloadError::Api(format!(
                "claim {name} does not carry this cluster's labels; not deleting it"
            )));
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pvc.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pvcs.delete(&name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn event(
        &self,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), WorkloadError> {
        let ev = Event {
            type_: match kind {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.recorder
            .publish(&ev, &self.dc.object_ref(&()))
            .await
            .map_err(api_error)
    }
}
