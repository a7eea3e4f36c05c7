//! The cluster's certificates, when `spec.tls.enabled` and the operator is the issuer:
//!
//! - Secret `<name>-ca`: the cluster CA (`ca.crt`, `ca.key`), made once, never rewritten.
//! - Secret `<name>-tls`: `ca.crt`, and for every pod ordinal that exists or is about to,
//!   `<pod>.crt` and `<pod>.key`: a certificate naming `dynamo://<namespace>/<name>/node/<pod>`
//!   and the pod's DNS names (peer and client Services; `localhost` and `127.0.0.1` too,
//!   for `kubectl port-forward`). Every pod mounts this one Secret and picks its own
//!   files by its name (one template for all pods, so a scale changes no pod template).
//!   A certificate is kept while it chains to the CA, names its pod and has more than a
//!   third of its life left; otherwise it is issued again, and the nodes read the new
//!   files without a restart once the kubelet updates the volume.
//!
//! Pure: the reconciler reads and writes the Secrets (see `crate::reconcile`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dynamo_core::identity::{Identity, Kind};
use dynamo_proto::certs::{Ca, Leaf};
use dynamo_proto::tls::{pem_certs, pem_roots};
use dynamo_proto::verify::{chains_to, identity_of, validity_of};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{owned_meta, Names};
use crate::crd::DynamoCluster;

/// Where the node container mounts the `<name>-tls` Secret.
pub const TLS_DIR: &str = "/etc/dynamo-tls";
/// The CA certificate's key in both Secrets.
pub const CA_CERT: &str = "ca.crt";
/// The CA key's key in the CA Secret.
pub const CA_KEY: &str = "ca.key";
/// Lifetime of the CA the operator makes (it is not rotated: see docs/security.md).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The name in the operator's own (admin) certificate.
pub const OPERATOR_NAME: &str = "dynamo-operator";

/// What is wrong with the cluster's certificate material.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    #[error("the CA Secret {secret} is unusable: {message}")]
    BadCa { secret: String, message: String },
    #[error("issuing a certificate: {0}")]
    Issue(#[from] dynamo_proto::certs::Error),
}

/// The identity of the node of `ordinal`.
pub fn node_identity(names: &Names, ordinal: u32) -> Identity {
    Identity::new(names.cluster_id(), Kind::Node, names.pod(ordinal))
}

/// The operator's identity towards the nodes of the cluster.
pub fn operator_identity(names: &Names) -> Identity {
    Identity::new(names.cluster_id(), Kind::Admin, OPERATOR_NAME)
}

/// The names a node of `ordinal` is reached at: its pod's name through the headless
/// Service, the client Service, and loopback (port-forwards).
pub fn node_hosts(names: &Names, ordinal: u32) -> Vec<String> {
    let ns = &names.namespace;
    let pod = format!("{}.{}.{ns}.svc", names.pod(ordinal), names.peer_service());
    let client = names.client_service();
    vec![
        pod.clone(),
        format!("{pod}.cluster.local"),
        client.clone(),
        format!("{client}.{ns}"),
        format!("{client}.{ns}.svc"),
        format!("{client}.{ns}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
    ]
}

/// Key of a pod's certificate in the node Secret.
pub fn cert_key(names: &Names, ordinal: u32) -> String {
    format!("{}.crt", names.pod(ordinal))
}

/// Key of a pod's private key in the node Secret.
pub fn key_key(names: &Names, ordinal: u32) -> String {
    format!("{}.key", names.pod(ordinal))
}

/// A new CA Secret for `dc`.
pub fn ca_secret(dc: &DynamoCluster) -> Result<Secret, TlsProblem> {
    let names = Names::of(dc);
    let ca = Ca::generate(&names.cluster_id(), CA_LIFETIME)?;
    Ok(secret(
        dc,
        names.ca_secret(),
        BTreeMap::from([
            (
                CA_CERT.to_owned(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (CA_KEY.to_owned(), ByteString(ca.key_pem().into_bytes())),
        ]),
    ))
}

/// The CA held in a CA Secret, with its certificate's PEM.
pub fn ca_of(secret: &Secret) -> Result<(Ca, String), TlsProblem> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bad = |message: String| TlsProblem::BadCa {
        secret: name.clone(),
        message,
    };
    let data = secret.data.as_ref();
    let text = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| bad(format!("it has no {key}")))
    };
    let (cert, key) = (text(CA_CERT)?, text(CA_KEY)?);
    let ca = Ca::from_pem(&cert, &key).map_err(|e| bad(e.to_string()))?;
    Ok((ca, cert))
}

/// The node Secret's data after a renewal, and the pods whose certificates were issued.
#[derive(Debug)]
pub struct Renewal {
    pub data: BTreeMap<String, ByteString>,
    pub issued: Vec<String>,
}

/// The node Secret's data for ordinals `0..count`: what `current` holds that is still
/// good (see the module docs), new certificates valid for `lifetime` for the rest.
/// Ordinals at or above `count` are dropped.
pub fn renew_node_certificates(
    names: &Names,
    ca: &Ca,
    ca_pem: &str,
    current: &BTreeMap<String, ByteString>,
    count: u32,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Renewal, TlsProblem> {
    let roots = Arc::new(
        pem_roots(ca_pem.as_bytes(), Path::new(CA_CERT)).map_err(|e| TlsProblem::BadCa {
            secret: names.ca_secret(),
            message: e.to_string(),
        })?,
    );
    let mut data = BTreeMap::from([(CA_CERT.to_owned(), ByteString(ca_pem.as_bytes().to_vec()))]);
    let mut issued = Vec::new();
    for ordinal in 0..count {
        let (ck, kk) = (cert_key(names, ordinal), key_key(names, ordinal));
        let identity = node_identity(names, ordinal);
        let kept = match (current.get(&ck), current.get(&kk)) {
            (Some(cert), Some(key)) if still_good(&cert.0, &identity, &roots, now) => {
                Some((cert.clone(), key.clone()))
            }
            _ => None,
        };
        let (cert, key) = match kept {
            Some(pair) => pair,
            None => {
                let leaf = Leaf {
                    identity,
                    hosts: node_hosts(names, ordinal),
                    not_before: now - Duration::from_secs(60),
                    not_after: now + lifetime,
                };
                let new = ca.issue(&leaf)?;
                issued.push(names.pod(ordinal));
                (
                    ByteString(new.cert_pem.into_bytes()),
                    ByteString(new.key_pem.into_bytes()),
                )
            }
        };
        data.insert(ck, cert);
        data.insert(kk, key);
    }
    Ok(Renewal { data, issued })
}

/// Whether a certificate (PEM) chains to `roots` at `now`, names `identity`, and has
/// more than a third of its life left.
pub fn still_good(
    pem: &[u8],
    identity: &Identity,
    roots: &Arc<rustls::RootCertStore>,
    now: SystemTime,
) -> bool {
    let Ok(certs) = pem_certs(pem, "certificate", Path::new("node certificate")) else {
        return false;
    };
    let leaf = &certs[0];
    if chains_to(roots.clone(), leaf, now).is_err() {
        return false;
    }
    if identity_of(leaf).ok().flatten().as_ref() != Some(identity) {
        return false;
    }
    match validity_of(leaf) {
        Ok((from, to)) => {
            let life = to.duration_since(from).unwrap_or_default();
            to.duration_since(now).unwrap_or_default() > life / 3
        }
        Err(_) => false,
    }
}

/// The node Secret of `dc` holding `data`.
pub fn node_secret(dc: &DynamoCluster, data: BTreeMap<String, ByteString>) -> Secret {
    secret(dc, Names::of(dc).tls_secret(), data)
}

fn secret(dc: &DynamoCluster, name: String, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: owned_meta(dc, name),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cluster;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn setup() -> (Names, Ca, String) {
        let dc = cluster("kv", 3);
        let (ca, pem) = ca_of(&ca_secret(&dc).unwrap()).unwrap();
        (Names::of(&dc), ca, pem)
    }

    #[test]
    fn every_pod_gets_a_certificate_naming_it_and_a_key() {
        let (names, ca, pem) = setup();
        let now = SystemTime::now();
        let r =
            renew_node_certificates(&names, &ca, &pem, &BTreeMap::new(), 3, 90 * DAY, now).unwrap();
        assert_eq!(r.issued, ["kv-0", "kv-1", "kv-2"]);
        assert_eq!(r.data.len(), 1 + 2 * 3);
        let roots = Arc::new(pem_roots(pem.as_bytes(), Path::new("ca")).unwrap());
        for o in 0..3 {
            let cert = &r.data[&cert_key(&names, o)].0;
            assert!(still_good(cert, &node_identity(&names, o), &roots, now));
            // Not the identity of another pod.
            assert!(!still_good(
                cert,
                &node_identity(&names, (o + 1) % 3),
                &roots,
                now
            ));
            let key = String::from_utf8(r.data[&key_key(&names, o)].0.clone()).unwrap();
            assert!(key.contains("PRIVATE KEY"));
        }
        assert_eq!(
            node_identity(&names, 1).uri(),
            "dynamo://default/kv/node/kv-1"
        );
    }

    #[test]
    fn good_certificates_are_kept_and_others_issued_again() {
        let (names, ca, pem) = setup();
        let t0 = SystemTime::now();
        let first =
            renew_node_certificates(&names, &ca, &pem, &BTreeMap::new(), 2, 90 * DAY, t0).unwrap();
        // A scale-out to 4 issues only the new pods'.
        let grown =
            renew_node_certificates(&names, &ca, &pem, &first.data, 4, 90 * DAY, t0).unwrap();
        assert_eq!(grown.issued, ["kv-2", "kv-3"]);
        assert_eq!(
            grown.data[&cert_key(&names, 0)],
            first.data[&cert_key(&names, 0)]
        );
        // A scale-in drops the departed pods' entries.
        let shrunk =
            renew_node_certificates(&names, &ca, &pem, &grown.data, 3, 90 * DAY, t0).unwrap();
        assert!(shrunk.issued.is_empty());
        assert!(!shrunk.data.contains_key(&cert_key(&names, 3)));
        // 59 days on, more than a third is left: kept; 61 days on, reissued.
        let kept =
            renew_node_certificates(&names, &ca, &pem, &shrunk.data, 3, 90 * DAY, t0 + 59 * DAY)
                .unwrap();
        assert!(kept.issued.is_empty());
        let renewed =
            renew_node_certificates(&names, &ca, &pem, &shrunk.data, 3, 90 * DAY, t0 + 61 * DAY)
                .unwrap();
        assert_eq!(renewed.issued, ["kv-0", "kv-1", "kv-2"]);
        // Certificates of another CA (the CA Secret was replaced), garbage and a missing
        // key are replaced.
        let (_, other_ca, other_pem) = setup();
        let mut mixed = renew_node_certificates(
            &names,
            &other_ca,
            &other_pem,
            &BTreeMap::new(),
            3,
            90 * DAY,
            t0,
        )
        .unwrap()
        .data;
        mixed.insert(
            cert_key(&names, 1),
            ByteString(b"not a certificate".to_vec()),
        );
        mixed.remove(&key_key(&names, 2));
        let fixed = renew_node_certificates(&names, &ca, &pem, &mixed, 3, 90 * DAY, t0).unwrap();
        assert_eq!(fixed.issued, ["kv-0", "kv-1", "kv-2"]);
        assert_eq!(fixed.data[CA_CERT].0, pem.as_bytes());
    }

    #[test]
    fn a_broken_ca_secret_is_named() {
        let dc = cluster("kv", 3);
        let mut s = ca_secret(&dc).unwrap();
        s.data.as_mut().unwrap().remove(CA_KEY);
        let err = ca_of(&s).unwrap_err().to_string();
        assert!(err.contains("kv-ca") && err.contains("ca.key"), "{err}");
    }
}
