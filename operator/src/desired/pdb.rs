//! The PodDisruptionBudget: at most one node voluntarily disrupted at a time, so with
//! N=3 a quorum of 2 stays reachable through node drains. Scaling in lowers the
//! StatefulSet's replicas, which is not an eviction, so the budget never blocks the
//! operator's own decommission.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{owned_meta, selector_labels, Names};
use crate::crd::DynamoCluster;

/// The cluster's PodDisruptionBudget.
pub fn pdb(dc: &DynamoCluster) -> PodDisruptionBudget {
    let names = Names::of(dc);
    PodDisruptionBudget {
        metadata: owned_meta(dc, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    #[test]
    fn pdb_allows_one_unavailable_node() {
        let pdb = pdb(&cluster("kv", 5));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
            "dynamo"
        );
    }
}
