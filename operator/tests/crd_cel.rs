//! Evaluates the CRD's CEL rules (`x-kubernetes-validations`) locally, as the API server
//! would at admission, on valid, invalid and transition (update) fixtures. The schema is
//! read from the committed `crds/` file, so these tests check what users install.
use std::path::Path;

use kube::core::cel::Validator;
use serde_json::{json, Value};

fn schema() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/dynamoclusters.dynamokv.io.yaml");
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn cluster(spec: Value) -> Value {
    json!({
        "apiVersion": "dynamokv.io/v1alpha1",
        "kind": "DynamoCluster",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": spec,
    })
}

fn check(spec: Value, old: Option<Value>) -> Result<(), String> {
    let old = old.map(cluster);
    Validator::new()
        .validate(&schema(), &cluster(spec), old.as_ref())
        .map_err(|errs| {
            errs.as_slice()
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

fn rejected(spec: Value, old: Option<Value>, needle: &str) {
    let err = check(spec.clone(), old).expect_err(&format!("{spec} should be rejected"));
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn valid_specs_pass() {
    check(json!({}), None).unwrap();
    check(
        json!({"replicas": 5, "partitions": 1024, "replication": {"n": 3, "r": 2, "w": 2}}),
        None,
    )
    .unwrap();
    check(
        json!({"replicas": 1, "partitions": 16, "replication": {"n": 1, "r": 1, "w": 1}}),
        None,
    )
    .unwrap();
    check(json!({"replicas": 3, "partitions": 4096}), None).unwrap();
}

#[test]
fn r_and_w_above_n_are_rejected() {
    rejected(
        json!({"replication": {"n": 3, "r": 4, "w": 2}, "replicas": 5}),
        None,
        "replication.r must be at most",
    );
    rejected(
        json!({"replication": {"n": 3, "r": 2, "w": 4}, "replicas": 5}),
        None,
        "replication.w must be at most",
    );
}

#[test]
fn replicas_below_n_is_rejected() {
    rejected(
        json!({"replicas": 2}),
        None,
        "spec.replicas must be at least spec.replication.n",
    );
    rejected(
        json!({"replicas": 4, "replication": {"n": 5, "r": 3, "w": 3}}),
        None,
        "at least spec.replication.n",
    );
}

#[test]
fn partitions_must_be_power_of_two_in_range() {
    for bad in [0, 8, 100, 255, 8192, 3000] {
        rejected(json!({"partitions": bad}), None, "power of two");
    }
    for good in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
        check(json!({"partitions": good}), None).unwrap();
    }
}

#[test]
fn partitions_and_n_are_immutable() {
    rejected(
        json!({"partitions": 512}),
        Some(json!({"partitions": 256})),
        "immutable",
    );
    rejected(
        json!({"replicas": 5, "replication": {"n": 5, "r": 3, "w": 3}}),
        Some(json!({"replicas": 5, "replication": {"n": 3, "r": 2, "w": 2}})),
        "replication.n is immutable",
    );
}

#[test]
fn allowed_transitions_pass() {
    // Scaling, and changing r and w within n, are allowed updates.
    check(json!({"replicas": 5}), Some(json!({"replicas": 3}))).unwrap();
    check(
        json!({"replicas": 3, "replication": {"n": 3, "r": 3, "w": 1}}),
        Some(json!({"replicas": 3})),
    )
    .unwrap();
    check(json!({"partitions": 256}), Some(json!({}))).unwrap();
}

#[test]
fn scale_below_n_is_rejected_as_an_update() {
    rejected(
        json!({"replicas": 2}),
        Some(json!({"replicas": 3})),
        "at least spec.replication.n",
    );
}

#[test]
fn every_example_passes_the_cel_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let obj: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if obj["kind"] == "DynamoCluster" {
            Validator::new()
                .validate(&schema(), &obj, None)
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 2, "examples found: {checked}");
}
