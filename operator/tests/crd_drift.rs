//! Fails when the committed CRD YAML (plain and chart copy) differs from the Rust types.
//! Fix with `cargo run -p dynamo-operator --bin crdgen`.
use std::path::Path;

use dynamo_operator::crdgen::{chart_crd_template, crd_yaml, CHART_CRD_PATH, CRD_PATH};

fn committed(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn committed_crd_matches_types() {
    assert!(
        committed(CRD_PATH) == crd_yaml(),
        "{CRD_PATH} is stale: run `cargo run -p dynamo-operator --bin crdgen`"
    );
}

#[test]
fn chart_crd_matches_types() {
    assert!(
        committed(CHART_CRD_PATH) == chart_crd_template(),
        "{CHART_CRD_PATH} is stale: run `cargo run -p dynamo-operator --bin crdgen`"
    );
}

#[test]
fn crd_has_scale_subresource_printer_columns_and_short_name() {
    let crd: serde_yaml::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
    let v = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["group"], "dynamokv.io");
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "dyn");
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["statusReplicasPath"],
        ".status.replicas"
    );
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Replicas", "Ready", "Epoch", "Phase", "Age"]);
}
