//! Desired objects: pure functions from a validated `DynamoCluster` to the Kubernetes
//! objects the operator owns. No I/O here; `reconcile` applies what these return with
//! server-side apply, so every field set here is owned by the operator's field manager.
//!
//! Owned objects, all named after the cluster `<name>`:
//! - StatefulSet `<name>` (pods `<name>-<ordinal>`, claims `data-<name>-<ordinal>`),
//! - headless Service `<name>-peers` (peer discovery, publishes not-ready addresses),
//! - client Service `<name>`,
//! - PodDisruptionBudget `<name>` (maxUnavailable 1),
//! - ConfigMap `<name>-config` (the node's `node.yaml`),
//! - Secrets `<name>-secret` (the context MAC key), and with TLS `<name>-ca` and
//!   `<name>-tls` (see [`tls`]).

pub mod cert_manager;
pub mod configmap;
pub mod pdb;
pub mod secret;
pub mod services;
pub mod statefulset;
pub mod tls;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::DynamoCluster;

/// gRPC port of a node's client API (Kv, Health, read-only Admin).
pub const GRPC_PORT: i32 = 7100;
/// gRPC port of a node's peer API (replication, gossip, anti-entropy, map changes): the
/// node's address in maps, and where the operator makes changes.
pub const PEER_PORT: i32 = 7101;
/// HTTP port of a node (`/healthz`, `/readyz`, `/metrics`).
pub const HTTP_PORT: i32 = 7180;
/// Where the node keeps its data (the PVC mount).
pub const DATA_DIR: &str = "/var/lib/dynamo";
/// Where the node's configuration file is mounted.
pub const CONFIG_DIR: &str = "/etc/dynamo";
/// Name of the StatefulSet's volume claim template.
pub const DATA_VOLUME: &str = "data";
/// Value of `app.kubernetes.io/managed-by` on every owned object.
pub const MANAGER: &str = "dynamo-operator";

/// How peers, clients and the operator reach the node of an ordinal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerAddressing {
    /// `<pod>.<peer service>.<namespace>.svc:7101`: stable DNS through the headless
    /// Service (what runs on Kubernetes).
    #[default]
    ClusterDns,
    /// `<host>:<base_port + ordinal>`: node processes on one host, for the local
    /// stand-in of the Kubernetes side (tests, a control plane whose pods are not real).
    HostPorts { host: String, base_port: u16 },
}

/// `cluster-dns`, or `host-ports=HOST:BASE_PORT` (the operator's `--peer-addressing`).
impl std::str::FromStr for PeerAddressing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "cluster-dns" {
            return Ok(Self::ClusterDns);
        }
        let bad = || format!("{s:?}: expected cluster-dns or host-ports=HOST:BASE_PORT");
        let hp = s.strip_prefix("host-ports=").ok_or_else(bad)?;
        let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self::HostPorts {
            host: host.into(),
            base_port: port.parse().map_err(|_| bad())?,
        })
    }
}

/// Names of the objects owned by one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    pub addressing: PeerAddressing,
}

impl Names {
    pub fn of(dc: &DynamoCluster) -> Self {
        Self::new(
            &dc.name_any(),
            &dc.namespace().unwrap_or_else(|| "default".into()),
        )
    }
    /// Names of cluster `cluster` in `namespace`, reached through cluster DNS.
    pub fn new(cluster: &str, namespace: &str) -> Self {
        Self {
            cluster: cluster.into(),
            namespace: namespace.into(),
            addressing: PeerAddressing::ClusterDns,
        }
    }
    /// The same names with nodes reached as `addressing` says.
    pub fn with_addressing(mut self, addressing: PeerAddressing) -> Self {
        self.addressing = addressing;
        self
    }
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    pub fn peer_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    pub fn secret(&self) -> String {
        format!("{}-secret", self.cluster)
    }
    /// The Secret holding the cluster CA the operator issues certificates with.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    /// The Secret holding every pod's certificate and key, mounted by every pod.
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.cluster)
    }
    pub fn configmap(&self) -> String {
        format!("{}-config", self.cluster)
    }
    /// Pod name, which is also the node id, of an ordinal.
    pub fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }
    /// Name of an ordinal's data claim (`<template>-<statefulset>-<ordinal>`).
    pub fn pvc(&self, ordinal: u32) -> String {
        format!("{DATA_VOLUME}-{}-{ordinal}", self.cluster)
    }
    /// Ordinal of a pod or node id of this cluster, if it is one.
    pub fn ordinal_of(&self, pod_name: &str) -> Option<u32> {
        let rest = pod_name.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        rest.parse().ok().filter(|_| !rest.starts_with('+'))
    }
    /// Ordinal of a data claim of this cluster, if it is one.
    pub fn ordinal_of_pvc(&self, pvc_name: &str) -> Option<u32> {
        self.ordinal_of(pvc_name.strip_prefix(DATA_VOLUME)?.strip_prefix('-')?)
    }
    /// The address of an ordinal's peer API, which peers and the operator use (stable DNS through the headless
    /// Service, unless [`PeerAddressing`] says otherwise).
    pub fn peer_addr(&self, ordinal: u32) -> String {
        match &self.addressing {
            PeerAddressing::ClusterDns => format!(
                "{}.{}.{}.svc:{PEER_PORT}",
                self.pod(ordinal),
                self.peer_service(),
                self.namespace
            ),
            PeerAddressing::HostPorts { host, base_port } => {
                format!("{host}:{}", u32::from(*base_port) + ordinal)
            }
        }
    }
    /// The seed nodes join through: the headless peer Service, which resolves to every
    /// pod, ready or not (ordinal 0 when nodes are reached by host ports).
    pub fn seed_addr(&self) -> String {
        match &self.addressing {
            PeerAddressing::ClusterDns => {
                format!("{}.{}.svc:{PEER_PORT}", self.peer_service(), self.namespace)
            }
            PeerAddressing::HostPorts { .. } => self.peer_addr(0),
        }
    }
    /// Identity of the cluster given to nodes (`<namespace>/<name>`).
    pub fn cluster_id(&self) -> String {
        format!("{}/{}", self.namespace, self.cluster)
    }
}

/// Members for ordinals `0..count`, with their stable peer addresses (the node ids and
/// addresses of a partition map).
pub fn ordinal_members(names: &Names, count: u32) -> Vec<dynamo_core::ring::Member> {
    (0..count)
        .map(|o| dynamo_core::ring::Member::new(names.pod(o), names.peer_addr(o)))
        .collect()
}

/// Labels that select a cluster's pods (a stable subset of [`labels`]).
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "dynamo".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            names.cluster.clone(),
        ),
    ])
}

/// Labels on every owned object.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut l = selector_labels(names);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/component".into(), "storage-node".into());
    l
}

/// The pod label selector as a string, as the scale subresource reports it.
pub fn selector_string(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: name, namespace, labels and the controller owner reference.
pub fn owned_meta(dc: &DynamoCluster, name: String) -> ObjectMeta {
    let names = Names::of(dc);
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(&names)),
        owner_references: Some(vec![owner_ref(dc)]),
        ..ObjectMeta::default()
    }
}

fn owner_ref(dc: &DynamoCluster) -> OwnerReference {
    dc.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            // Objects built before the cluster has a UID (only in tests) still carry a reference.
            api_version: DynamoCluster::api_version(&()).into_owned(),
            kind: DynamoCluster::kind(&()).into_owned(),
            name: dc.name_any(),
            uid: String::new(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_round_trip_through_names() {
        let n = Names::new("kv", "ns");
        assert_eq!(n.ordinal_of(&n.pod(7)), Some(7));
        assert_eq!(n.ordinal_of_pvc(&n.pvc(3)), Some(3));
        assert_eq!(n.ordinal_of("kv-peers"), None);
        assert_eq!(n.ordinal_of("kvx-1"), None);
        assert_eq!(n.ordinal_of("kv-+1"), None);
        assert_eq!(n.peer_addr(0), "kv-0.kv-peers.ns.svc:7101");
        assert_eq!(n.seed_addr(), "kv-peers.ns.svc:7101");
        let local = n.with_addressing(PeerAddressing::HostPorts {
            host: "127.0.0.1".into(),
            base_port: 7300,
        });
        assert_eq!(local.peer_addr(2), "127.0.0.1:7302");
        assert_eq!(local.seed_addr(), "127.0.0.1:7300");
    }

    #[test]
    fn peer_addressing_parses_from_the_flag() {
        assert_eq!("cluster-dns".parse(), Ok(PeerAddressing::ClusterDns));
        assert_eq!(
            "host-ports=127.0.0.1:7300".parse(),
            Ok(PeerAddressing::HostPorts {
                host: "127.0.0.1".into(),
                base_port: 7300
            })
        );
        for bad in [
            "",
            "host-ports=",
            "host-ports=:7300",
            "host-ports=h:x",
            "dns",
            "host-ports=h",
        ] {
            assert!(bad.parse::<PeerAddressing>().is_err(), "{bad:?}");
        }
    }
}

/// Every object the operator owns for one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub configmap: k8s_openapi::api::core::v1::ConfigMap,
    pub peer_service: k8s_openapi::api::core::v1::Service,
    pub client_service: k8s_openapi::api::core::v1::Service,
    pub pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget,
    pub statefulset: k8s_openapi::api::apps::v1::StatefulSet,
}

/// Builds every owned object of `dc`, with the StatefulSet at `replicas` (which the
/// scaling state machine decides).
pub fn build(dc: &DynamoCluster, replicas: i32) -> Desired {
    Desired {
        configmap: configmap::configmap(dc),
        peer_service: services::peer_service(dc),
        client_service: services::client_service(dc),
        pdb: pdb::pdb(dc),
        statefulset: statefulset::statefulset(dc, replicas),
    }
}

impl Desired {
    /// All objects as YAML documents, in apply order (config and Services before pods).
    pub fn to_yaml(&self) -> String {
        let docs = [
            serde_yaml::to_string(&self.configmap),
            serde_yaml::to_string(&self.peer_service),
            serde_yaml::to_string(&self.client_service),
            serde_yaml::to_string(&self.pdb),
            serde_yaml::to_string(&self.statefulset),
        ];
        docs.into_iter()
            .map(|d| d.expect("objects serialize"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}
