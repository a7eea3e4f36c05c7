//! Issuing certificates: a cluster CA, node, admin and client certificates naming their
//! identity (`dynamo://<cluster>/<kind>/<name>`, see [`dynamo_core::identity`]), and
//! revocation lists. For `dynamoctl cluster --tls` (a throwaway CA), the operator and
//! tests; production clusters may bring their own CA (cert-manager, a company PKI) as
//! long as certificates carry the identity URI.

use std::time::{Duration, SystemTime};

use dynamo_core::identity::{Identity, Kind};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;

pub use rcgen::Error;

/// A certificate authority that signs a cluster's certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number, to revoke it.
    pub serial: Vec<u8>,
}

/// What to put in a certificate.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub identity: Identity,
    /// DNS names and IP addresses the holder is reached at (for servers).
    pub hosts: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// Valid from a minute ago (clocks differ a little) for `valid_for`.
    pub fn new(identity: Identity, hosts: Vec<String>, valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            identity,
            hosts,
            not_before: now - Duration::from_secs(60),
            not_after: now + valid_for,
        }
    }
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to trim
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new CA for `cluster`, valid for `valid_for`.
    pub fn generate(cluster: &str, valid_for: Duration) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("dynamo cluster {cluster} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
        params.not_after = OffsetDateTime::from(now + valid_for);
        params.serial_number = Some(serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM), as [`Ca::cert_pem`] and [`Ca::key_pem`]
    /// wrote them.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a certificate for `leaf`. Node certificates serve and dial (server and
    /// client authentication); admin and client certificates only dial.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(leaf.hosts.clone())?;
        params
            .subject_alt_names
            .push(SanType::URI(leaf.identity.uri().try_into()?));
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.identity.name.clone());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match leaf.identity.kind {
            Kind::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Admin | Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.not_before = OffsetDateTime::from(leaf.not_before);
        params.not_after = OffsetDateTime::from(leaf.not_after);
        let serial = serial();
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A revocation list (PEM) of the certificates with these serial numbers, valid for
    /// `valid_for`; `number` grows with each list.
    pub fn revocation_list(
        &self,
        serials: &[Vec<u8>],
        number: u64,
        valid_for: Duration,
    ) -> Result<String, Error> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::from(now - Duration::from_secs(60)),
            next_update: OffsetDateTime::from(now + valid_for),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: OffsetDateTime::from(now - Duration::from_secs(60)),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn a_ca_survives_its_pem_and_signs_what_webpki_accepts() {
        let ca = Ca::generate("c1", Duration::from_secs(3600)).unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let leaf = Leaf::new(
            Identity::new("c1", Kind::Node, "n1"),
            vec!["127.0.0.1".into(), "localhost".into()],
            Duration::from_secs(600),
        );
        let issued = again.issue(&leaf).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        verifier
            .verify_server_cert(
                &cert,
                &[],
                &rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .expect("a node certificate of the CA verifies for its address");
        let crl = ca
            .revocation_list(
                std::slice::from_ref(&issued.serial),
                1,
                Duration::from_secs(600),
            )
            .unwrap();
        assert!(crl.contains("BEGIN X509 CRL"));
    }
}
