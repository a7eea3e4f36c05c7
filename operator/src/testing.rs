//! Test fixtures shared by unit and integration tests: builders of `DynamoCluster`s.

use kube::api::ObjectMeta;

use crate::crd::{DynamoCluster, DynamoClusterSpec};

/// A cluster `name` in namespace `default` with `replicas` nodes and default settings
/// (N=3, R=2, W=2, Q=256), generation 1 and a fixed UID.
pub fn cluster(name: &str, replicas: i32) -> DynamoCluster {
    let mut dc = DynamoCluster::new(
        name,
        DynamoClusterSpec {
            replicas,
            ..DynamoClusterSpec::default()
        },
    );
    dc.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    dc
}
