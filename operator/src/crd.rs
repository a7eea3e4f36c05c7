//! The `DynamoCluster` custom resource (`dynamokv.io/v1alpha1`, short name `dyn`).
//!
//! These types are the single source of truth for the CRD: `crdgen` writes
//! [`DynamoCluster::crd`] to `crds/` and to the chart, and a drift test fails when the
//! committed YAML differs. The `///` docs on fields become the CRD's field descriptions.
//!
//! Invariants enforced at admission by CEL rules (`x-kubernetes-validations`):
//! `r <= n`, `w <= n`, `n <= replicas`, `partitions` a power of two in 16..=4096, and
//! `partitions` and `replication.n` immutable. The operator checks them again
//! (see [`crate::validate`]) because a CRD can be installed without them, and refuses
//! with a `Degraded` condition rather than acting on an invalid spec.

// kube's `printcolumn(...)` repeats `type_` by design, which clippy reads as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the CRD.
pub const GROUP: &str = "dynamokv.io";
/// API version of the CRD.
pub const VERSION: &str = "v1alpha1";

/// Desired state of a Dynamo cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dynamokv.io",
    version = "v1alpha1",
    kind = "DynamoCluster",
    doc = "A Dynamo key-value cluster: storage nodes in a StatefulSet, scaled safely by the dynamo-operator.",
    plural = "dynamoclusters",
    shortname = "dyn",
    namespaced,
    status = "DynamoClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired number of nodes"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Nodes whose readiness probe passes"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.mapEpoch",
        description = "Epoch of the committed partition map"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.replication.n <= self.replicas").message("spec.replicas must be at least spec.replication.n: a cluster cannot run with fewer nodes than copies of each key").reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterSpec {
    /// Number of storage nodes. Scaling is done by the operator: partitions are moved off
    /// departing nodes before their pods are removed. Never below `replication.n`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,

    /// Container image of the storage node (`dynamo-node`).
    #[serde(default = "default_image")]
    pub image: String,

    /// Number of partitions Q the key space is cut into: a power of two in 16..=4096,
    /// fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    #[x_kube(validation = Rule::new("self in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]").message("spec.partitions must be a power of two in 16..=4096"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.partitions is immutable: it is fixed when the cluster is created"))]
    pub partitions: i32,

    /// Replication settings: N copies of each key, R replies for a read, W acks for a write.
    #[serde(default)]
    pub replication: Replication,

    /// Persistent storage of each node.
    #[serde(default)]
    pub storage: Storage,

    /// Compute resources of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node label whose value is a node's failure zone. Pods are spread across its values
    /// with (preferred) pod anti-affinity, and each pod's zone (read from its Kubernetes
    /// node) is given to the partition planner so that preference lists span zones.
    #[serde(default = "default_zone_key")]
    pub zone_topology_key: String,

    /// Settings passed to every node's configuration file.
    #[serde(default)]
    pub config: NodeConfig,

    /// TLS on the nodes' ports (on by default): certificates, and who issues them.
    #[serde(default)]
    pub tls: Tls,
}

/// TLS of the cluster. With it, both node ports serve TLS, peers authenticate each other
/// with certificates of the cluster's CA naming `dynamo://<namespace>/<name>/node/<pod>`,
/// and the operator calls the nodes with an admin certificate. Certificates are renewed
/// when a third of their life is left, without restarting any node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled == oldSelf.enabled").message("spec.tls.enabled is fixed when the cluster is created: nodes with and without TLS cannot talk to each other while pods restart").reason(Reason::FieldValueForbidden))]
pub struct Tls {
    /// Serve TLS (peers with mutual TLS). Fixed when the cluster is created.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Issue the certificates with this cert-manager issuer (which must put the URI
    /// names of `Certificate.spec.uris` in them) instead of a CA the operator makes and
    /// keeps in the Secret `<name>-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManager>,
    /// Lifetime of node certificates the operator issues, in hours (default 90 days).
    #[serde(default = "default_certificate_hours")]
    #[schemars(range(min = 1))]
    pub certificate_lifetime_hours: i32,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            enabled: true,
            cert_manager: None,
            certificate_lifetime_hours: default_certificate_hours(),
        }
    }
}

/// cert-manager settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertManager {
    /// The issuer of every certificate of the cluster.
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer (`Certificate.spec.issuerRef`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// Replication settings of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.r <= self.n").message("replication.r must be at most replication.n"))]
#[x_kube(validation = Rule::new("self.w <= self.n").message("replication.w must be at most replication.n"))]
pub struct Replication {
    /// N: number of distinct nodes that hold each key. Immutable.
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replication.n is immutable"))]
    pub n: i32,
    /// R: replies a read waits for.
    #[schemars(range(min = 1, max = 7))]
    pub r: i32,
    /// W: acknowledgements a write waits for.
    #[schemars(range(min = 1, max = 7))]
    pub w: i32,
}

impl Default for Replication {
    fn default() -> Self {
        Self { n: 3, r: 2, w: 2 }
    }
}

/// What happens to a departing node's PersistentVolumeClaim after a scale-in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PvcPolicy {
    /// Delete the claim once its node has handed off all its partitions and its pod is
    /// gone. A later scale-out starts that ordinal with an empty volume.
    #[default]
    Delete,
    /// Keep the claim; a later scale-out reuses it.
    Retain,
}

/// Persistent storage of each node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each node's volume, as a Kubernetes quantity (for example `10Gi`).
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What to do with a departing node's volume after a scale-in (`Delete` or `Retain`).
    /// The operator deletes a claim only after the node's data is handed off and its pod is
    /// gone; Kubernetes itself never deletes it (the StatefulSet retention policy is Retain).
    #[serde(default)]
    pub on_scale_in: PvcPolicy,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            on_scale_in: PvcPolicy::Delete,
        }
    }
}

/// Durability of an acknowledged write on a node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// The WAL is synced in the background, at most about a second behind.
    Periodic,
    /// Every write is synced before it is acknowledged.
    Always,
    /// Never sync explicitly (tests only).
    Never,
}

/// Node settings the operator writes into each node's configuration file.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// Largest value a put accepts, in bytes (node default: 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_value_bytes: Option<i64>,
    /// WAL sync policy (node default: `periodic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
    /// Timeout of a client request inside the cluster, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub request_timeout_ms: Option<i64>,
}

/// Observed state of a Dynamo cluster, written only by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of node pods (the scale subresource reads it).
    #[serde(default)]
    pub replicas: i32,
    /// Number of node pods whose readiness probe passes.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the node pods (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Epoch of the committed partition map (0 before the first map).
    #[serde(default)]
    pub map_epoch: i64,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: Phase,
    /// `Available`, `Progressing` and `Degraded`, with a reason and message each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The scaling operation in progress, recorded before any of its side effects so that
    /// a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<ScalingOperation>,
    /// Partition moves of the map change in progress that are not done yet.
    #[serde(default)]
    pub partition_moves_pending: i32,
    /// Partition moves of the map change in progress that are done.
    #[serde(default)]
    pub partition_moves_done: i32,
    /// Partitions owned by each node in the committed map.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions_per_node: BTreeMap<String, i32>,
}

/// Lifecycle phase of a cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Created; nodes are starting and no partition map is committed yet.
    #[default]
    Pending,
    /// Serving; no scaling operation in progress.
    Available,
    /// Adding nodes and moving partitions to them.
    ScalingOut,
    /// Moving partitions off departing nodes, then removing them.
    ScalingIn,
    /// A request was refused or the cluster is unhealthy; see the Degraded condition.
    Degraded,
}

/// Direction of a scaling operation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Adding nodes (also the first map of a new cluster, from 0 nodes).
    ScaleOut,
    /// Removing the highest ordinals.
    ScaleIn,
}

/// Step of a scaling operation. Scale-out: Provisioning → Committing → Moving →
/// Finalizing. Scale-in: Committing → Moving → Finalizing → Shrinking → CleaningUp.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum Step {
    /// Growing the StatefulSet and waiting for the new pods to be ready.
    Provisioning,
    /// Planning the new partition map and committing it to the nodes.
    Committing,
    /// Waiting until partitions are moved, every node synced the new map, hints drained.
    Moving,
    /// Retiring the old map version.
    Finalizing,
    /// Lowering the StatefulSet's replicas and waiting for the departed pods to be gone.
    Shrinking,
    /// Deleting departed nodes' volumes, if the policy says so.
    CleaningUp,
}

/// A scaling operation in progress.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingOperation {
    /// ScaleOut or ScaleIn.
    pub direction: Direction,
    /// Node count of the map when the operation started.
    pub from: i32,
    /// Node count the operation goes to.
    pub to: i32,
    /// Current step.
    pub step: Step,
    /// Epoch of the map this operation commits (set before the commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epoch: Option<i64>,
}

fn default_replicas() -> i32 {
    3
}
fn default_image() -> String {
    "dynamo-node:0.1.0".to_string()
}
fn default_partitions() -> i32 {
    dynamo_core::ring::DEFAULT_PARTITIONS as i32
}
fn default_zone_key() -> String {
    "topology.kubernetes.io/zone".to_string()
}
fn default_storage_size() -> String {
    "10Gi".to_string()
}
fn yes() -> bool {
    true
}
fn default_certificate_hours() -> i32 {
    90 * 24
}
fn default_issuer_kind() -> String {
    "Issuer".to_string()
}
fn default_issuer_group() -> String {
    "cert-manager.io".to_string()
}

impl Default for DynamoClusterSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: default_image(),
            partitions: default_partitions(),
            replication: Replication::default(),
            storage: Storage::default(),
            resources: None,
            zone_topology_key: default_zone_key(),
            config: NodeConfig::default(),
            tls: Tls::default(),
        }
    }
}
