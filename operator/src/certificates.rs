//! Keeps a TLS cluster's certificate Secrets current (the I/O around
//! [`crate::desired::tls`]): the CA Secret is made once; the node Secret is written
//! whenever a pod that exists or is about to (up to the larger of the StatefulSet's
//! replicas and the replicas asked for) lacks a good certificate, and before the
//! StatefulSet grows, so a new pod finds its files when it starts.

use std::time::{Duration, SystemTime};

use dynamo_proto::certs::Ca;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::crd::DynamoCluster;
use crate::desired::tls::{ca_of, ca_secret, node_secret, renew_node_certificates, TlsProblem};
use crate::desired::{Names, MANAGER};

/// Why the certificates could not be kept current.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Tls(#[from] TlsProblem),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

/// The cluster's CA and its PEM, after making sure every pod up to `replicas` (or the
/// StatefulSet's, if more) has a good certificate. `None` without TLS.
pub async fn ensure(
    client: &kube::Client,
    dc: &DynamoCluster,
    replicas: i32,
) -> Result<Option<(Ca, String)>, CertificateError> {
    if !dc.spec.tls.enabled {
        return Ok(None);
    }
    let names = Names::of(dc);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
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
    let lifetime = Duration::from_secs(3600 * dc.spec.tls.certificate_lifetime_hours.max(1) as u64);
    let renewal = renew_node_certificates(
        &names,
        &ca,
        &ca_pem,
        &current_data,
        count,
        lifetime,
        SystemTime::now(),
    )?;
    if current.is_none() || renewal.data != current_data {
        secrets
            .patch(
                &names.tls_secret(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&node_secret(dc, renewal.data)),
            )
            .await?;
        if !renewal.issued.is_empty() {
            tracing::info!(
                cluster = names.cluster_id(),
                pods = ?renewal.issued,
                "issued node certificates"
            );
        }
    }
    Ok(Some((ca, ca_pem)))
}
