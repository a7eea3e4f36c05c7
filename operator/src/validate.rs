//! Validation of a `DynamoCluster` spec, pure. The CRD's CEL rules reject most invalid
//! specs at admission; this repeats the checks the operator relies on, because a CRD can
//! be installed without them (or an object predate them), and turns the spec into the
//! [`Intent`] the scaling state machine works from. `spec.replicas` below N is not an
//! error here: it is a refused scaling request (see [`crate::scaling::Refusal`]), and the
//! cluster keeps running at its current size.

use dynamo_core::ring::validate_partition_count;

use crate::crd::DynamoCluster;
use crate::scaling::Intent;

/// Why a spec cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {0}")]
pub struct InvalidSpec(pub String);

/// Checks the spec and derives the scaling intent.
pub fn validate(dc: &DynamoCluster) -> Result<Intent, InvalidSpec> {
    let s = &dc.spec;
    let bad = |m: String| Err(InvalidSpec(m));
    let r = &s.replication;
    if r.n < 1 || r.r < 1 || r.w < 1 {
        return bad(format!(
            "replication n, r, w must be at least 1 (got n={}, r={}, w={})",
            r.n, r.r, r.w
        ));
    }
    if r.r > r.n || r.w > r.n {
        return bad(format!(
            "replication r={} and w={} must be at most n={}",
            r.r, r.w, r.n
        ));
    }
    if s.partitions < 0 || validate_partition_count(s.partitions as u32).is_err() {
        return bad(format!(
            "spec.partitions={} must be a power of two in 16..=4096",
            s.partitions
        ));
    }
    if s.replicas < 0 {
        return bad(format!("spec.replicas={} must not be negative", s.replicas));
    }
    if s.image.trim().is_empty() {
        return bad("spec.image must name the dynamo-node image".into());
    }
    if s.storage.size.trim().is_empty() || !s.storage.size.starts_with(|c: char| c.is_ascii_digit())
    {
        return bad(format!(
            "spec.storage.size={:?} must be a quantity such as 10Gi",
            s.storage.size
        ));
    }
    Ok(Intent {
        replicas: s.replicas,
        n: r.n as u32,
        partitions: s.partitions as u32,
        pvc_policy: s.storage.on_scale_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    #[test]
    fn default_spec_is_valid() {
        let i = validate(&cluster("kv", 3)).unwrap();
        assert_eq!((i.replicas, i.n, i.partitions), (3, 3, 256));
    }

    #[test]
    fn invalid_specs_say_why() {
        let mut dc = cluster("kv", 3);
        dc.spec.replication.w = 4;
        assert!(validate(&dc).unwrap_err().to_string().contains("w=4"));
        let mut dc = cluster("kv", 3);
        dc.spec.partitions = 100;
        assert!(validate(&dc)
            .unwrap_err()
            .to_string()
            .contains("power of two"));
        let mut dc = cluster("kv", 3);
        dc.spec.storage.size = "big".into();
        assert!(validate(&dc).unwrap_err().to_string().contains("quantity"));
    }

    #[test]
    fn replicas_below_n_is_not_a_spec_error() {
        assert_eq!(validate(&cluster("kv", 1)).unwrap().replicas, 1);
    }
}
