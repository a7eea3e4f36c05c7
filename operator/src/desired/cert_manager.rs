//! The cluster's certificates when `spec.tls.certManager` names an issuer: cert-manager
//! `Certificate`s (`cert-manager.io/v1`) instead of the operator's own CA.
//!
//! - One `Certificate` per pod ordinal, `<pod>-tls`, into the Secret `<pod>-tls`:
//!   the URI name `dynamo://<namespace>/<name>/node/<pod>` and the pod's DNS names (see
//!   [`super::tls::node_hosts`]), server and client usages, renewed by cert-manager when a
//!   third of its life is left, with a new key each time.
//! - One for the operator, `<name>-operator`, naming
//!   `dynamo://<namespace>/<name>/admin/dynamo-operator` (client usage), into the Secret
//!   `<name>-operator-tls`.
//! - The operator copies each pod's issued `tls.crt`, `tls.key` (and the issuer's
//!   `ca.crt`) into the one Secret every pod mounts, `<name>-tls`, under the same keys
//!   as with its own CA: the pod template is the same either way.
//!
//! The issuer must copy `spec.uris` into the certificates (cert-manager's CA, Vault and
//! self-signed issuers do) and publish `ca.crt` in the Secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use super::tls::{cert_key, key_key, node_hosts, node_identity, operator_identity, CA_CERT};
use super::{owned_meta, Names};
use crate::crd::{DynamoCluster, IssuerRef};

/// The `Certificate` kind of cert-manager.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// Name of the `Certificate` (and of its Secret) of a pod.
pub fn pod_certificate(names: &Names, ordinal: u32) -> String {
    format!("{}-tls", names.pod(ordinal))
}

/// Name of the operator's `Certificate`.
pub fn operator_certificate(names: &Names) -> String {
    format!("{}-operator", names.cluster)
}

/// Name of the Secret of the operator's `Certificate`.
pub fn operator_secret(names: &Names) -> String {
    format!("{}-operator-tls", names.cluster)
}

fn certificate(
    dc: &DynamoCluster,
    name: String,
    secret: String,
    issuer: &IssuerRef,
    uri: String,
    hosts: Vec<String>,
    usages: &[&str],
) -> Value {
    let hours = dc.spec.tls.certificate_lifetime_hours.max(3);
    let (ips, dns): (Vec<String>, Vec<String>) = hosts
        .into_iter()
        .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
    let mut spec = json!({
        "secretName": secret,
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        "uris": [uri],
        "usages": usages,
        "duration": format!("{hours}h"),
        "renewBefore": format!("{}h", hours / 3),
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
    });
    if !dns.is_empty() {
        spec["dnsNames"] = json!(dns);
    }
    if !ips.is_empty() {
        spec["ipAddresses"] = json!(ips);
    }
    let metadata = serde_json::to_value(owned_meta(dc, name)).expect("metadata serializes");
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": metadata,
        "spec": spec,
    })
}

/// The `Certificate` of the pod of `ordinal`.
pub fn node_certificate(dc: &DynamoCluster, issuer: &IssuerRef, ordinal: u32) -> Value {
    let names = Names::of(dc);
    certificate(
        dc,
        pod_certificate(&names, ordinal),
        pod_certificate(&names, ordinal),
        issuer,
        node_identity(&names, ordinal).uri(),
        node_hosts(&names, ordinal),
        &[
            "server auth",
            "client auth",
            "digital signature",
            "key encipherment",
        ],
    )
}

/// The operator's `Certificate`.
pub fn admin_certificate(dc: &DynamoCluster, issuer: &IssuerRef) -> Value {
    let names = Names::of(dc);
    certificate(
        dc,
        operator_certificate(&names),
        operator_secret(&names),
        issuer,
        operator_identity(&names).uri(),
        Vec::new(),
        &["client auth", "digital signature", "key encipherment"],
    )
}

/// The node Secret's data assembled from the pods' issued Secrets (by pod name), for
/// ordinals `0..count`; `Err` names the pods whose certificates are not issued yet.
pub fn assemble(
    names: &Names,
    count: u32,
    issued: &BTreeMap<String, BTreeMap<String, ByteString>>,
) -> Result<BTreeMap<String, ByteString>, Vec<String>> {
    let mut data = BTreeMap::new();
    let mut missing = Vec::new();
    for ordinal in 0..count {
        let pod = names.pod(ordinal);
        let got = issued.get(&pod);
        let field = |k: &str| got.and_then(|d| d.get(k)).filter(|v| !v.0.is_empty());
        match (field("tls.crt"), field("tls.key"), field(CA_CERT)) {
            (Some(cert), Some(key), Some(ca)) => {
                data.insert(cert_key(names, ordinal), cert.clone());
                data.insert(key_key(names, ordinal), key.clone());
                data.entry(CA_CERT.to_owned()).or_insert_with(|| ca.clone());
            }
            _ => missing.push(pod),
        }
    }
    match missing.is_empty() {
        true => Ok(data),
        false => Err(missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    fn issuer() -> IssuerRef {
        IssuerRef {
            name: "corp-ca".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        }
    }

    #[test]
    fn a_pod_certificate_names_its_identity_and_hosts() {
        let dc = cluster("kv", 3);
        let c = node_certificate(&dc, &issuer(), 2);
        assert_eq!(c["metadata"]["name"], "kv-2-tls");
        assert_eq!(c["metadata"]["ownerReferences"][0]["kind"], "DynamoCluster");
        let spec = &c["spec"];
        assert_eq!(spec["secretName"], "kv-2-tls");
        assert_eq!(spec["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(spec["uris"], json!(["dynamo://default/kv/node/kv-2"]));
        assert_eq!(spec["ipAddresses"], json!(["127.0.0.1"]));
        assert!(spec["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("kv-2.kv-peers.default.svc")));
        assert_eq!(spec["duration"], "2160h");
        assert_eq!(spec["renewBefore"], "720h");
        assert!(spec["usages"]
            .as_array()
            .unwrap()
            .contains(&json!("client auth")));
        let admin = admin_certificate(&dc, &issuer());
        assert_eq!(admin["spec"]["secretName"], "kv-operator-tls");
        assert_eq!(
            admin["spec"]["uris"],
            json!(["dynamo://default/kv/admin/dynamo-operator"])
        );
        assert!(admin["spec"].get("dnsNames").is_none());
    }

    #[test]
    fn the_node_secret_waits_for_every_pod_certificate() {
        let names = Names::of(&cluster("kv", 3));
        let issued_for = |pod: &str| {
            BTreeMap::from([
                (
                    "tls.crt".to_owned(),
                    ByteString(format!("{pod} cert").into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    ByteString(format!("{pod} key").into_bytes()),
                ),
                ("ca.crt".to_owned(), ByteString(b"ca".to_vec())),
            ])
        };
        let mut issued: BTreeMap<_, _> = ["kv-0", "kv-1"]
            .into_iter()
            .map(|p| (p.to_owned(), issued_for(p)))
            .collect();
        assert_eq!(assemble(&names, 3, &issued), Err(vec!["kv-2".to_owned()]));
        issued.insert("kv-2".into(), issued_for("kv-2"));
        issued.get_mut("kv-1").unwrap().remove("tls.key");
        assert_eq!(assemble(&names, 3, &issued), Err(vec!["kv-1".to_owned()]));
        issued.insert("kv-1".into(), issued_for("kv-1"));
        let data = assemble(&names, 3, &issued).unwrap();
        assert_eq!(data.len(), 7);
        assert_eq!(data["kv-2.key"].0, b"kv-2 key");
        assert_eq!(data["ca.crt"].0, b"ca");
    }
}
