//! The cluster secret: the key of the MAC on the causal contexts the nodes hand to
//! clients (so a client cannot forge coverage of versions it never read). Made once with
//! a random value, owned by the cluster, and never rewritten: every node of the cluster
//! must keep the same key for the cluster's life, or contexts already handed out would be
//! refused. The node container reads it from `DYNAMO_CLUSTER_SECRET`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{owned_meta, Names};
use crate::crd::DynamoCluster;

/// The key of the secret's value in the Secret.
pub const SECRET_KEY: &str = "cluster-secret";

/// A new cluster secret for `dc`: 32 random bytes, hex-encoded.
pub fn cluster_secret(dc: &DynamoCluster) -> Secret {
    let names = Names::of(dc);
    let value: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    Secret {
        metadata: owned_meta(dc, names.secret()),
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_owned(),
            ByteString(value.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    #[test]
    fn each_new_secret_is_random_and_owned_by_the_cluster() {
        let (a, b) = (
            cluster_secret(&cluster("kv", 3)),
            cluster_secret(&cluster("kv", 3)),
        );
        assert_eq!(a.metadata.name.as_deref(), Some("kv-secret"));
        let value = |s: &Secret| s.data.as_ref().unwrap()[SECRET_KEY].0.clone();
        assert_eq!(value(&a).len(), 64);
        assert_ne!(value(&a), value(&b));
        assert_eq!(
            a.metadata.owner_references.unwrap()[0].kind,
            "DynamoCluster"
        );
    }
}
