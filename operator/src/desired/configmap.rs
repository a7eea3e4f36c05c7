//! The ConfigMap holding each node's `node.yaml` (read with `--config`).
//!
//! One file for all pods: the per-pod parts (node id, advertised address) come from the
//! environment (`DYNAMO_NODE_ID`, `DYNAMO_ADVERTISE`, `DYNAMO_PEER_ADVERTISE`). The file lists no members: every
//! node starts from `seeds`, the headless peer Service (which publishes not-ready
//! addresses, so it resolves to every pod, mapless ones included), and learns the cluster
//! and its partition map by gossip; the map itself is committed by the operator through
//! the nodes' Admin API. So a scale does not rewrite this file, and the pod template
//! carries no hash of it: a change to it must not restart every node (the
//! rolling-restart-on-every-change complaint about cass-operator).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use super::{owned_meta, Names, DATA_DIR, GRPC_PORT, HTTP_PORT, PEER_PORT};
use crate::crd::{DynamoCluster, Fsync};

/// The node configuration file, in the node's own (snake_case) format.
#[derive(Serialize, Debug, PartialEq)]
pub struct NodeFile {
    pub cluster_id: String,
    pub listen: String,
    pub peer_listen: String,
    pub http_listen: String,
    pub data_dir: String,
    pub partitions: u32,
    pub replication: ReplicationFile,
    /// `host:port` of nodes to join the cluster through.
    pub seeds: Vec<String>,
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

/// The node file of `dc`.
pub fn node_file(dc: &DynamoCluster) -> NodeFile {
    let names = Names::of(dc);
    let s = &dc.spec;
    NodeFile {
        cluster_id: names.cluster_id(),
        listen: format!("0.0.0.0:{GRPC_PORT}"),
        peer_listen: format!("0.0.0.0:{PEER_PORT}"),
        http_listen: format!("0.0.0.0:{HTTP_PORT}"),
        data_dir: DATA_DIR.into(),
        partitions: s.partitions as u32,
        replication: ReplicationFile {
            n: s.replication.n,
            r: s.replication.r,
            w: s.replication.w,
        },
        seeds: vec![names.seed_addr()],
        max_value_bytes: s.config.max_value_bytes,
        fsync: s.config.fsync,
        request_timeout_ms: s.config.request_timeout_ms,
    }
}

/// The ConfigMap of `dc`.
pub fn configmap(dc: &DynamoCluster) -> ConfigMap {
    let names = Names::of(dc);
    let yaml = serde_yaml::to_string(&node_file(dc)).expect("node file serializes");
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
    fn node_yaml_has_cluster_settings_and_seeds_but_no_members() {
        let mut dc = cluster("kv", 3);
        dc.spec.config.fsync = Some(Fsync::Always);
        let cm = configmap(&dc);
        assert_eq!(cm.metadata.name.as_deref(), Some("kv-config"));
        let yaml: serde_yaml::Value = serde_yaml::from_str(&cm.data.unwrap()["node.yaml"]).unwrap();
        assert_eq!(yaml["cluster_id"], "default/kv");
        assert_eq!(yaml["partitions"], 256);
        assert_eq!(yaml["replication"]["n"], 3);
        assert_eq!(yaml["fsync"], "always");
        assert_eq!(yaml["listen"], "0.0.0.0:7100");
        assert_eq!(yaml["peer_listen"], "0.0.0.0:7101");
        assert_eq!(yaml["seeds"][0], "kv-peers.default.svc:7101");
        assert!(
            yaml.get("members").is_none(),
            "nodes start from seeds: a scale does not rewrite the file"
        );
        assert!(
            yaml.get("max_value_bytes").is_none(),
            "unset options are left to the node's defaults"
        );
    }
}
