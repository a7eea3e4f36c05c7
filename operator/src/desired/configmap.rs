//! The ConfigMap holding each node's `node.yaml` (read with `--config`).
//!
//! One file for all pods: the per-pod parts (node id, advertised address) come from the
//! environment (`DYNAMO_NODE_ID`, `DYNAMO_ADVERTISE`). `members` lists the nodes of the
//! committed partition map, so a node that restarts knows the cluster it belongs to.
//! The pod template carries no hash of this file: a scale changes `members`, and must not
//! restart every node (the rolling-restart-on-every-change complaint about cass-operator).

use std::collections::BTreeMap;

use dynamo_core::ring::Member;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{owned_meta, Names, DATA_DIR, GRPC_PORT, HTTP_PORT};
use crate::crd::{DynamoCluster, Fsync};

/// The node configuration file, in the node's own (snake_case) format.
#[derive(Serialize, Debug, PartialEq)]
pub struct NodeFile {
    pub cluster_id: String,
    pub listen: String,
    pub http_listen: String,
    pub data_dir: String,
    pub partitions: u32,
    pub replication: ReplicationFile,
    pub members: Vec<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<i64>,
}

/// `replication` in `node.yaml`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ReplicationFile {
    pub n: i32,
    pub r: i32,
    pub w: i32,
}

/// The node file of `dc` with `members`.
pub fn node_file(dc: &DynamoCluster, members: &[Member]) -> NodeFile {
    let names = Names::of(dc);
    let s = &dc.spec;
    NodeFile {
        cluster_id: names.cluster_id(),
        listen: format!("0.0.0.0:{GRPC_PORT}"),
        http_listen: format!("0.0.0.0:{HTTP_PORT}"),
        data_dir: DATA_DIR.into(),
        partitions: s.partitions as u32,
        replication: ReplicationFile {
            n: s.replication.n,
            r: s.replication.r,
            w: s.replication.w,
        },
        members: members.to_vec(),
        max_value_bytes: s.config.max_value_bytes,
        fsync: s.config.fsync,
        request_timeout_ms: s.config.request_timeout_ms,
    }
}

/// Members for ordinals `0..count`, with their stable peer addresses.
pub fn ordinal_members(names: &Names, count: u32) -> Vec<Member> {
    (0..count)
        .map(|o| Member::new(names.pod(o), names.peer_addr(o)))
        .collect()
}

/// The ConfigMap of `dc` with `members`.
pub fn configmap(dc: &DynamoCluster, members: &[Member]) -> ConfigMap {
    let names = Names::of(dc);
    let yaml = serde_yaml::to_string(&node_file(dc, members)).expect("node file serializes");
    ConfigMap {
        metadata: owned_meta(dc, names.configmap()),
        data: Some(BTreeMap::from([("node.yaml".to_string(), yaml)])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    #[test]
    fn node_yaml_has_cluster_settings_and_members() {
        let mut dc = cluster("kv", 3);
        dc.spec.config.fsync = Some(Fsync::Always);
        let members = ordinal_members(&Names::of(&dc), 3);
        let cm = configmap(&dc, &members);
        assert_eq!(cm.metadata.name.as_deref(), Some("kv-config"));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&cm.data.unwrap()["node.yaml"]).unwrap();
        assert_eq!(yaml["cluster_id"], "default/kv");
        assert_eq!(yaml["partitions"], 256);
        assert_eq!(yaml["replication"]["n"], 3);
        assert_eq!(yaml["fsync"], "always");
        assert_eq!(yaml["listen"], "0.0.0.0:7100");
        assert_eq!(yaml["members"][2]["id"], "kv-2");
        assert_eq!(yaml["members"][2]["addr"], "kv-2.kv-peers.default.svc:7100");
        assert!(
            yaml.get("max_value_bytes").is_none(),
            "unset options are left to the node's defaults"
        );
    }
}
