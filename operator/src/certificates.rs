//! Keeps a TLS cluster's certificate Secrets current (the I/O around
//! [`crate::desired::tls`] and [`crate::desired::cert_manager`]): the node Secret is
//! written whenever a pod that exists or is about to (up to the larger of the
//! StatefulSet's replicas and the replicas asked for) lacks a good certificate, and
//! before the StatefulSet grows, so a new pod finds its files when it starts. With the
//! operator's own CA, the CA Secret is made once; with cert-manager, the Certificates
//! are applied and the reconcile waits until cert-manager issued them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use dynamo_proto::certs::Ca;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};

use crate::crd::{DynamoCluster, IssuerRef};
use crate::desired::cert_manager::{
    admin_certificate, assemble, certificate_resource, node_certificate, operator_certificate,
    operator_secret, pod_certificate,
};
use crate::desired::tls::{
    ca_of, ca_secret, node_secret, renew_node_certificates, TlsProblem, CA_CERT,
};
use crate::desired::{Names, MANAGER};

/// Why the certificates could not be kept current.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Tls(#[from] TlsProblem),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("waiting for cert-manager to issue the Secrets {}", .0.join(", "))]
    NotIssued(Vec<String>),
}

/// What the operator dials a TLS cluster's nodes with.
pub enum Issuer {
    /// The operator's own CA: it issues itself an admin certificate.
    Own { ca: Box<Ca>, ca_pem: String },
    /// cert-manager issued the operator's admin certificate (PEM).
    CertManager {
        cert_pem: String,
        key_pem: String,
        ca_pem: String,
    },
}

/// Makes sure every pod up to `replicas` (or the StatefulSet's, if more) has a good
/// certificate in the node Secret, and says what the operator's certificate comes from.
/// `None` without TLS.
pub async fn ensure(
    client: &kube::Client,
    dc: &DynamoCluster,
    replicas: i32,
) -> Result<Option<Issuer>, CertificateError> {
    if !dc.spec.tls.enabled {
        return Ok(None);
    }
    let names = Names::of(dc);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let running = sets
        .get_opt(&names.statefulset())
        .await?
        .and_then(|s| s.spec)
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let count = replicas.max(running).max(0) as u32;
    let current = secrets.get_opt(&names.tls_secret()).await?;
    let current_data = current
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default();
    let (data, issuer) = match &dc.spec.tls.cert_manager {
        None => own_ca(dc, &names, &secrets, &current_data, count).await?,
        Some(cm) => from_cert_manager(client, dc, &names, &secrets, &cm.issuer_ref, count).await?,
    };
    if current.is_none() || data != current_data {
        secrets
            .patch(
                &names.tls_secret(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&node_secret(dc, data)),
            )
            .await?;
    }
    Ok(Some(issuer))
}

/// The node Secret's data under the operator's own CA (made here the first time).
async fn own_ca(
    dc: &DynamoCluster,
    names: &Names,
    secrets: &Api<Secret>,
    current: &BTreeMap<String, ByteString>,
    count: u32,
) -> Result<(BTreeMap<String, ByteString>, Issuer), CertificateError> {
    let ca_secret = match secrets.get_opt(&names.ca_secret()).await? {
        Some(s) => s,
        None => match secrets
            .create(&PostParams::default(), &ca_secret(dc)?)
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(&names.ca_secret()).await?,
            r => r?,
        },
    };
    let (ca, ca_pem) = ca_of(&ca_secret)?;
    let lifetime = Duration::from_secs(3600 * dc.spec.tls.certificate_lifetime_hours.max(1) as u64);
    let renewal = renew_node_certificates(
        names,
        &ca,
        &ca_pem,
        current,
        count,
        lifetime,
        SystemTime::now(),
    )?;
    if !renewal.issued.is_empty() {
        tracing::info!(
            cluster = names.cluster_id(),
            pods = ?renewal.issued,
            "issued node certificates"
        );
    }
    Ok((
        renewal.data,
        Issuer::Own {
            ca: Box::new(ca),
            ca_pem,
        },
    ))
}

/// The node Secret's data from cert-manager's Secrets, after applying the Certificates.
/// Fails (so the StatefulSet does not grow) until every pod's certificate is issued.
async fn from_cert_manager(
    client: &kube::Client,
    dc: &DynamoCluster,
    names: &Names,
    secrets: &Api<Secret>,
    issuer: &IssuerRef,
    count: u32,
) -> Result<(BTreeMap<String, ByteString>, Issuer), CertificateError> {
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &names.namespace, &certificate_resource());
    let apply = PatchParams::apply(MANAGER).force();
    let mut wanted = vec![(operator_certificate(names), admin_certificate(dc, issuer))];
    wanted.extend((0..count).map(|o| (pod_certificate(names, o), node_certificate(dc, issuer, o))));
    for (name, certificate) in &wanted {
        certificates
            .patch(name, &apply, &Patch::Apply(certificate))
            .await?;
    }
    let mut issued = BTreeMap::new();
    for o in 0..count {
        if let Some(s) = secrets.get_opt(&pod_certificate(names, o)).await? {
            issued.insert(names.pod(o), s.data.unwrap_or_default());
        }
    }
    let data = assemble(names, count, &issued).map_err(|pods| {
        CertificateError::NotIssued(pods.iter().map(|p| format!("{p}-tls")).collect())
    })?;
    let operator = secrets
        .get_opt(&operator_secret(names))
        .await?
        .and_then(|s| s.data)
        .unwrap_or_default();
    let text = |k: &str| {
        operator
            .get(k)
            .filter(|v| !v.0.is_empty())
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };
    let (Some(cert_pem), Some(key_pem), Some(ca_pem)) =
        (text("tls.crt"), text("tls.key"), text(CA_CERT))
    else {
        return Err(CertificateError::NotIssued(vec![operator_secret(names)]));
    };
    Ok((
        data,
        Issuer::CertManager {
            cert_pem,
            key_pem,
            ca_pem,
        },
    ))
}
