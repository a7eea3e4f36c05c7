//! The node's TLS: the server configurations of its two ports, the client configuration
//! it dials peers with, and their reloading when the files change.
//!
//! - Client port: TLS with the node's certificate; a client certificate is optional
//!   (verified against the cluster's CA and revocation lists when presented, and then it
//!   must name this cluster), so clients may use server verification alone or mutual TLS.
//! - Peer port: mutual TLS; a certificate that is not of the cluster's CA, expired,
//!   revoked or naming another cluster is refused in the handshake, and a caller with
//!   none is refused every call (UNAUTHENTICATED, by `crate::access`). What a caller
//!   with a certificate may call is up to authorization: only nodes replicate.
//! - Dialling a peer: the node presents its certificate and accepts only a node
//!   certificate of this cluster (see [`dynamo_proto::verify::PeerServerVerifier`]).
//!
//! The node's certificate must itself name a node of this cluster and serve both ends
//! (server and client authentication).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::identity::Kind;
use dynamo_proto::tls::{
    provider, read_certs, read_crls, read_key, read_roots, ClientTls, Swappable, TlsError, ALPN_H2,
};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use dynamo_proto::verify::{check_identity, node_dialer, ClusterClientVerifier};

/// Any certificate of the cluster may connect; authorization decides what it may call.
const ANY_KIND: &[Kind] = &[Kind::Node, Kind::Admin, Kind::Client];

/// The node's TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub crls: Vec<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .chain(&self.crls)
            .cloned()
            .collect()
    }
}

/// The configurations built from one reading of the files.
struct Loaded {
    client_port: ServerConfig,
    peer_port: ServerConfig,
    dial: rustls::ClientConfig,
}

/// The node's TLS configurations, replaced in place when the files change.
pub struct NodeTls {
    files: TlsFiles,
    cluster: String,
    client_port: Swappable<ServerConfig>,
    peer_port: Swappable<ServerConfig>,
    dial: ClientTls,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.files)
            .finish()
    }
}

impl NodeTls {
    /// Loads the files; fails with what is wrong with them.
    pub fn load(files: TlsFiles, cluster: &str) -> Result<Arc<Self>, TlsError> {
        let loaded = load(&files, cluster)?;
        Ok(Arc::new(Self {
            files,
            cluster: cluster.to_owned(),
            client_port: Swappable::new(loaded.client_port),
            peer_port: Swappable::new(loaded.peer_port),
            dial: ClientTls::new(loaded.dial),
        }))
    }

    /// Reads the files again; on failure the configurations in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.files, &self.cluster)?;
        self.client_port.set(loaded.client_port);
        self.peer_port.set(loaded.peer_port);
        self.dial.set(loaded.dial);
        Ok(())
    }

    /// Reloads whenever the files change, checking every `every`.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        dynamo_proto::tls::watch(self.files.paths(), every, move || this.reload())
    }

    /// The configuration new connections to the client port get.
    pub fn client_port(&self) -> Arc<ServerConfig> {
        self.client_port.get()
    }

    /// The configuration new connections to the peer port get.
    pub fn peer_port(&self) -> Arc<ServerConfig> {
        self.peer_port.get()
    }

    /// What the node dials its peers with.
    pub fn dial(&self) -> ClientTls {
        self.dial.clone()
    }
}

fn load(files: &TlsFiles, cluster: &str) -> Result<Loaded, TlsError> {
    let chain = read_certs(&files.cert, "certificate")?;
    check_identity(&chain[0], cluster, &[Kind::Node]).map_err(|e| {
        TlsError::Verifier(format!(
            "this node's certificate {} is not a node certificate of cluster {cluster:?}: {e}",
            files.cert.display()
        ))
    })?;
    let key = read_key(&files.key)?;
    let roots = Arc::new(read_roots(&files.ca)?);
    let crls = read_crls(&files.crls)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    // Both ports take connections without a client certificate; on the peer port
    // authorization then refuses every call of such a caller with UNAUTHENTICATED,
    // saying what it lacks (a TLS 1.3 client whose handshake is refused only sees the
    // connection break). A certificate presented is checked in the handshake on both.
    let verifier = Arc::new(ClusterClientVerifier {
        inner: webpki,
        cluster: cluster.to_owned(),
        kinds: ANY_KIND,
    });
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let client_port = server.clone();
    let peer_port = server;
    let dial = node_dialer(roots, crls, cluster, Some((chain, key)))?;
    Ok(Loaded {
        client_port,
        peer_port,
        dial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::identity::Identity;
    use dynamo_proto::certs::{Ca, Leaf};

    fn files(dir: &std::path::Path, ca: &Ca, identity: Identity) -> TlsFiles {
        let issued = ca
            .issue(&Leaf::new(
                identity,
                vec!["127.0.0.1".into()],
                Duration::from_secs(600),
            ))
            .unwrap();
        let files = TlsFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            ca: dir.join("ca.pem"),
            crls: Vec::new(),
        };
        std::fs::write(&files.cert, issued.cert_pem).unwrap();
        std::fs::write(&files.key, issued.key_pem).unwrap();
        std::fs::write(&files.ca, ca.cert_pem()).unwrap();
        files
    }

    #[test]
    fn a_node_starts_only_with_a_node_certificate_of_its_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("c1", Duration::from_secs(600)).unwrap();
        let good = files(dir.path(), &ca, Identity::new("c1", Kind::Node, "n1"));
        let tls = NodeTls::load(good.clone(), "c1").expect("a node certificate of c1");
        assert_eq!(tls.peer_port().alpn_protocols, vec![ALPN_H2.to_vec()]);
        for (identity, why) in [
            (Identity::new("c2", Kind::Node, "n1"), "not of this cluster"),
            (Identity::new("c1", Kind::Client, "n1"), "a client may not"),
        ] {
            let bad = files(dir.path(), &ca, identity);
            let err = NodeTls::load(bad, "c1").unwrap_err().to_string();
            assert!(
                err.contains("not a node certificate") && err.contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn a_reload_that_fails_keeps_the_configuration_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("c1", Duration::from_secs(600)).unwrap();
        let good = files(dir.path(), &ca, Identity::new("c1", Kind::Node, "n1"));
        let tls = NodeTls::load(good.clone(), "c1").unwrap();
        let before = tls.client_port();
        // A key that does not match the certificate.
        let other = ca
            .issue(&Leaf::new(
                Identity::new("c1", Kind::Node, "n1"),
                vec![],
                Duration::from_secs(600),
            ))
            .unwrap();
        std::fs::write(&good.key, other.key_pem).unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.client_port()));
        std::fs::write(&good.cert, other.cert_pem).unwrap();
        tls.reload().expect("a matching pair loads");
        assert!(!Arc::ptr_eq(&before, &tls.client_port()));
    }
}
