//! The operator's own certificates: for each cluster with TLS, an admin certificate
//! (`dynamo://<namespace>/<name>/admin/dynamo-operator`) issued from the cluster's CA and
//! kept in memory only (a restarted operator issues itself another). The operator dials
//! the nodes with it and accepts only node certificates of that cluster from that CA.
//! Reissued when a third of its life is left or the CA changed; the [`ClientTls`] of a
//! cluster stays the same object, its configuration replaced, so open channels pick the
//! new certificate on their next connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dynamo_proto::certs::{Ca, Leaf};
use dynamo_proto::tls::{pem_certs, pem_key, pem_roots, ClientTls};
use dynamo_proto::verify::node_dialer;
use parking_lot::Mutex;

use crate::desired::tls::{operator_identity, TlsProblem};
use crate::desired::Names;

/// Lifetime of the operator's admin certificates.
pub const ADMIN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

struct Held {
    /// The CA's PEM (own CA), or all the PEM the certificate was built from.
    ca_pem: String,
    issued: SystemTime,
    expires: SystemTime,
    tls: ClientTls,
}

/// Admin certificates by cluster. Cloning shares them.
#[derive(Clone, Default)]
pub struct AdminCerts {
    by_cluster: Arc<Mutex<HashMap<String, Held>>>,
}

impl std::fmt::Debug for AdminCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCerts")
            .field("clusters", &self.by_cluster.lock().len())
            .finish()
    }
}

impl AdminCerts {
    /// What to dial the nodes of `names`' cluster with, under CA `ca` (`ca_pem`), at `now`.
    pub fn client_tls(
        &self,
        names: &Names,
        ca: &Ca,
        ca_pem: &str,
        now: SystemTime,
    ) -> Result<ClientTls, TlsProblem> {
        let mut by_cluster = self.by_cluster.lock();
        let cluster = names.cluster_id();
        if let Some(held) = by_cluster.get(&cluster) {
            let third = held.expires.duration_since(held.issued).unwrap_or_default() / 3;
            let left = held.expires.duration_since(now).unwrap_or_default();
            if held.ca_pem == ca_pem && left > third {
                return Ok(held.tls.clone());
            }
        }
        let config = admin_config(names, ca, ca_pem, now)?;
        tracing::info!(cluster, "issued the operator's admin certificate");
        let (issued, expires) = (now, now + ADMIN_LIFETIME);
        Ok(install(
            &mut by_cluster,
            cluster,
            config,
            ca_pem.to_owned(),
            issued,
            expires,
        ))
    }

    /// What to dial the nodes of `names`' cluster with, given an admin certificate
    /// issued elsewhere (cert-manager): rebuilt only when the PEM changes.
    pub fn issued(
        &self,
        names: &Names,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<ClientTls, TlsProblem> {
        let mut by_cluster = self.by_cluster.lock();
        let cluster = names.cluster_id();
        let material = format!("{cert_pem}{key_pem}{ca_pem}");
        if let Some(held) = by_cluster.get(&cluster) {
            if held.ca_pem == material {
                return Ok(held.tls.clone());
            }
        }
        let secret = crate::desired::cert_manager::operator_secret(names);
        let bad = |e: dynamo_proto::tls::TlsError| TlsProblem::BadCa {
            secret: secret.clone(),
            message: e.to_string(),
        };
        let origin = Path::new(&secret);
        let chain = pem_certs(cert_pem.as_bytes(), "certificate", origin).map_err(bad)?;
        let key = pem_key(key_pem.as_bytes(), origin).map_err(bad)?;
        let roots = Arc::new(pem_roots(ca_pem.as_bytes(), origin).map_err(bad)?);
        let config = node_dialer(roots, Vec::new(), &cluster, Some((chain, key))).map_err(bad)?;
        // Renewal is cert-manager's: never reissued here.
        let (issued, expires) = (
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
        );
        Ok(install(
            &mut by_cluster,
            cluster,
            config,
            material,
            issued,
            expires,
        ))
    }
}

/// Puts `config` in the cluster's client (made the first time) and remembers it.
fn install(
    by_cluster: &mut HashMap<String, Held>,
    cluster: String,
    config: rustls::ClientConfig,
    material: String,
    issued: SystemTime,
    expires: SystemTime,
) -> ClientTls {
    let tls = match by_cluster.get(&cluster) {
        Some(held) => {
            held.tls.set(config);
            held.tls.clone()
        }
        None => ClientTls::new(config),
    };
    let held = Held {
        ca_pem: material,
        issued,
        expires,
        tls: tls.clone(),
    };
    by_cluster.insert(cluster, held);
    tls
}

fn admin_config(
    names: &Names,
    ca: &Ca,
    ca_pem: &str,
    now: SystemTime,
) -> Result<rustls::ClientConfig, TlsProblem> {
    let bad = |e: dynamo_proto::tls::TlsError| TlsProblem::BadCa {
        secret: names.ca_secret(),
        message: e.to_string(),
    };
    let issued = ca.issue(&Leaf {
        identity: operator_identity(names),
        hosts: Vec::new(),
        not_before: now - Duration::from_secs(60),
        not_after: now + ADMIN_LIFETIME,
    })?;
    let origin = Path::new("the operator's admin certificate");
    let chain = pem_certs(issued.cert_pem.as_bytes(), "certificate", origin).map_err(bad)?;
    let key = pem_key(issued.key_pem.as_bytes(), origin).map_err(bad)?;
    let roots = Arc::new(pem_roots(ca_pem.as_bytes(), Path::new("ca.crt")).map_err(bad)?);
    node_dialer(roots, Vec::new(), &names.cluster_id(), Some((chain, key))).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::tls::{ca_of, ca_secret};
    use crate::testing::cluster;

    #[test]
    fn one_client_per_cluster_reissued_near_expiry_or_on_a_new_ca() {
        let dc = cluster("kv", 3);
        let names = Names::of(&dc);
        let (ca, pem) = ca_of(&ca_secret(&dc).unwrap()).unwrap();
        let certs = AdminCerts::default();
        let t0 = SystemTime::now();
        let first = certs.client_tls(&names, &ca, &pem, t0).unwrap();
        let config = first.config();
        // Within two thirds of its life: the same configuration.
        let later = certs
            .client_tls(&names, &ca, &pem, t0 + ADMIN_LIFETIME / 2)
            .unwrap();
        assert!(Arc::ptr_eq(&config, &later.config()));
        // Past them: a new configuration in the same client, which open channels hold.
        let renewed = certs
            .client_tls(&names, &ca, &pem, t0 + ADMIN_LIFETIME * 7 / 10)
            .unwrap();
        assert!(!Arc::ptr_eq(&config, &first.config()));
        assert!(Arc::ptr_eq(&first.config(), &renewed.config()));
        // A new CA: reissued at once.
        let (ca2, pem2) = ca_of(&ca_secret(&dc).unwrap()).unwrap();
        let before = first.config();
        certs.client_tls(&names, &ca2, &pem2, t0).unwrap();
        assert!(!Arc::ptr_eq(&before, &first.config()));
        // Another cluster: its own client.
        let other = Names::of(&cluster("other", 3));
        let o = certs.client_tls(&other, &ca, &pem, t0).unwrap();
        assert!(!Arc::ptr_eq(&o.config(), &first.config()));
    }
}
