//! Snapshot of every owned object for a fixture cluster, compared with
//! `tests/snapshots/*.yaml`. Rewrite them with `UPDATE_SNAPSHOTS=1 cargo test -p dynamo-operator`
//! and review the diff. `scripts/test-chart.sh` validates the snapshots against the
//! Kubernetes OpenAPI schemas, so what the operator applies is schema-checked too.
use std::path::Path;

use dynamo_operator::crd::{Fsync, PvcPolicy};
use dynamo_operator::desired::build;
use dynamo_operator::testing::cluster;

fn check(name: &str, actual: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from the built objects:\n{actual}",
        path.display()
    );
}

#[test]
fn default_cluster_objects() {
    let dc = cluster("demo", 3);
    check("default-cluster.yaml", build(&dc, 3).to_yaml());
}

#[test]
fn customised_cluster_objects() {
    let mut dc = cluster("orders", 5);
    dc.spec.storage.storage_class_name = Some("fast-ssd".into());
    dc.spec.storage.size = "100Gi".into();
    dc.spec.storage.on_scale_in = PvcPolicy::Retain;
    dc.spec.config.fsync = Some(Fsync::Always);
    dc.spec.config.max_value_bytes = Some(4 << 20);
    dc.spec.resources = Some(
        serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}
        }))
        .unwrap(),
    );
    check("custom-cluster.yaml", build(&dc, 5).to_yaml());
}
