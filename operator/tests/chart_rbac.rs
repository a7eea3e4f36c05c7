//! The chart's ClusterRole grants what the operator's writes need on a real API server
//! (which the in-memory `fake_api` does not authorize): a server-side apply that makes an
//! object is authorized as `create` as well as `patch`, so every kind the operator
//! applies needs both. Found by `scripts/test-k8s.sh`, whose operator runs with the chart's
//! ServiceAccount; this keeps the rule in the fast tests.
use std::path::Path;

/// (API group, resource) of every object the operator server-side applies.
const APPLIED: &[(&str, &str)] = &[
    ("apps", "statefulsets"),
    ("", "services"),
    ("", "configmaps"),
    ("policy", "poddisruptionbudgets"),
];

fn rules() -> Vec<serde_yaml::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/dynamo-operator/templates/clusterrole.yaml");
    let text = std::fs::read_to_string(&path).expect("the chart's ClusterRole");
    // Drop the template's lines that are Helm directives or includes.
    let yaml: String = text
        .lines()
        .filter(|l| !l.contains("{{"))
        .map(|l| format!("{l}\n"))
        .collect();
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("YAML");
    doc["rules"].as_sequence().expect("rules").clone()
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[test]
fn applied_kinds_may_be_created_and_patched() {
    let rules = rules();
    for (group, resource) in APPLIED {
        let verbs: Vec<String> = rules
            .iter()
            .filter(|r| strings(&r["apiGroups"]).iter().any(|g| g == group))
            .filter(|r| strings(&r["resources"]).iter().any(|x| x == resource))
            .flat_map(|r| strings(&r["verbs"]))
            .collect();
        for verb in ["get", "list", "watch", "create", "patch"] {
            assert!(
                verbs.iter().any(|v| v == verb),
                "ClusterRole lacks {verb} on {group}/{resource} (has {verbs:?})"
            );
        }
    }
}

#[test]
fn secrets_are_read_made_and_applied_by_name_only() {
    let verbs: Vec<String> = rules()
        .iter()
        .filter(|r| strings(&r["apiGroups"]).iter().any(|g| g.is_empty()))
        .filter(|r| strings(&r["resources"]).iter().any(|x| x == "secrets"))
        .flat_map(|r| strings(&r["verbs"]))
        .collect();
    // The node certificates' Secret is server-side applied (create and patch); nothing
    // lists or watches Secrets, which would read every Secret of the cluster.
    let mut sorted = verbs.clone();
    sorted.sort();
    assert_eq!(sorted, ["create", "get", "patch"], "{verbs:?}");
}
