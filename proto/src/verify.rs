//! Certificate checks beyond the chain: the identity a certificate names
//! (`dynamo://<cluster>/<kind>/<name>`, see [`dynamo_core::identity`]) must be of this
//! cluster. Chains, validity dates and revocation are checked by rustls's WebPKI
//! verifiers, which these wrap.

use std::sync::Arc;

use dynamo_core::identity::{Identity, Kind};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

/// The identity `cert` names, if any.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Option<Identity>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?;
    let uris: Vec<&str> = names
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    Identity::from_uris(uris).map_err(|e| e.to_string())
}

/// When `cert` becomes valid and when it expires.
pub fn validity_of(
    cert: &CertificateDer<'_>,
) -> Result<(std::time::SystemTime, std::time::SystemTime), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        let since = std::time::Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            std::time::UNIX_EPOCH + since
        } else {
            std::time::UNIX_EPOCH - since
        }
    };
    let v = parsed.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

/// Checks that `cert` chains to `roots` and is valid at `now` (for either end: node
/// certificates serve both).
pub fn chains_to(
    roots: Arc<rustls::RootCertStore>,
    cert: &CertificateDer<'_>,
    now: std::time::SystemTime,
) -> Result<(), rustls::Error> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::tls::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_client_cert(
        cert,
        &[],
        UnixTime::since_unix_epoch(
            now.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        ),
    )?;
    Ok(())
}

/// Why a certificate was refused, as the handshake reports it (the peer gets a
/// `bad_certificate` alert; the node logs this text).
struct Refused(String);

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refuse(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
        message,
    )))))
}

/// Checks that `cert` names one identity of `cluster`, of one of `kinds`.
pub fn check_identity(
    cert: &CertificateDer<'_>,
    cluster: &str,
    kinds: &[Kind],
) -> Result<Identity, rustls::Error> {
    let identity = identity_of(cert)
        .map_err(refuse)?
        .ok_or_else(|| refuse("the certificate names no dynamo:// identity".into()))?;
    if identity.cluster != cluster {
        return Err(refuse(format!(
            "the certificate names {identity}, of cluster {:?}, not of this cluster {cluster:?}",
            identity.cluster
        )));
    }
    if !kinds.contains(&identity.kind) {
        return Err(refuse(format!(
            "the certificate names {identity}: a {} may not connect here",
            identity.kind.as_str()
        )));
    }
    Ok(identity)
}

/// Verifies the certificates clients present to a node: the chain (WebPKI, CRLs), then
/// the identity.
#[derive(Debug)]
pub struct ClusterClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub cluster: String,
    pub kinds: &'static [Kind],
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.cluster, self.kinds)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies the certificate a peer node presents when this node dials it: a node
/// certificate of this cluster, chained to the CA and not revoked. The address dialled
/// is not matched against the certificate's names (peers are dialled at addresses
/// gossip spread, in forms a certificate may not list): the identity is what counts.
/// Node certificates serve both ends, so the chain is checked as a client certificate's
/// (both usages are in every node certificate).
#[derive(Debug)]
pub struct PeerServerVerifier {
    /// A mandatory-client-certificate WebPKI verifier over the cluster's CA and CRLs.
    pub chain: Arc<dyn ClientCertVerifier>,
    pub cluster: String,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.cluster, &[Kind::Node])?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A client configuration that accepts only a node certificate of `cluster`, chained to
/// `roots` and not revoked by `crls` (whatever address was dialled: see
/// [`PeerServerVerifier`]), presenting `identity` (a certificate chain and its key) when
/// given. Nodes dial their peers with it, the operator the nodes.
pub fn node_dialer(
    roots: Arc<rustls::RootCertStore>,
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    cluster: &str,
    identity: Option<(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<rustls::ClientConfig, crate::tls::TlsError> {
    use crate::tls::{provider, TlsError, ALPN_H2};
    let chain = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerServerVerifier {
            chain,
            cluster: cluster.to_owned(),
        }));
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
