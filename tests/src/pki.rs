//! Certificates for TLS test clusters: a CA made per cluster, certificates of any kind,
//! name, validity and CA, and a revocation list the nodes read (and reload).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use dynamo_core::identity::{Identity, Kind};
use dynamo_proto::certs::{Ca, Leaf};
use dynamo_proto::tls::{ClientFiles, ClientTls};

/// The cluster id every test cluster has.
pub const CLUSTER: &str = "test-cluster";

/// A certificate's files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub serial: Vec<u8>,
}

/// A test cluster's CA and the files it wrote.
pub struct Pki {
    dir: PathBuf,
    pub ca: Ca,
    revoked: Mutex<Vec<Vec<u8>>>,
}

impl Pki {
    /// A new CA writing into `dir`, with an empty revocation list.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = Ca::generate(CLUSTER, Duration::from_secs(24 * 3600)).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write CA");
        let pki = Self {
            dir: dir.to_owned(),
            ca,
            revoked: Mutex::new(Vec::new()),
        };
        pki.write_crl();
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// A certificate of this CA for `identity`, valid now for an hour.
    pub fn issue(&self, identity: Identity) -> CertFiles {
        let leaf = Leaf::new(identity, hosts(), Duration::from_secs(3600));
        issue_with(&self.ca, &self.dir, leaf)
    }

    /// A node certificate of this cluster named `name`.
    pub fn node(&self, name: &str) -> CertFiles {
        self.issue(Identity::new(CLUSTER, Kind::Node, name))
    }

    /// A certificate that expired a minute ago.
    pub fn expired(&self, identity: Identity) -> CertFiles {
        let now = SystemTime::now();
        let leaf = Leaf {
            identity,
            hosts: hosts(),
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(60),
        };
        issue_with(&self.ca, &self.dir, leaf)
    }

    /// Revokes `cert`: the revocation list is rewritten (nodes reload it).
    pub fn revoke(&self, cert: &CertFiles) {
        self.revoked.lock().unwrap().push(cert.serial.clone());
        self.write_crl();
    }

    fn write_crl(&self) {
        let revoked = self.revoked.lock().unwrap().clone();
        let crl = self
            .ca
            .revocation_list(
                &revoked,
                revoked.len() as u64 + 1,
                Duration::from_secs(3600),
            )
            .expect("CRL");
        write_atomically(&self.crl_path(), &crl);
    }

    /// TLS client settings of this CA with `cert` (none: server verification only).
    pub fn client(&self, cert: Option<&CertFiles>) -> ClientTls {
        ClientTls::new(self.client_files(cert).load().expect("client TLS"))
    }

    pub fn client_files(&self, cert: Option<&CertFiles>) -> ClientFiles {
        ClientFiles {
            ca: self.ca_path(),
            cert: cert.map(|c| c.cert.clone()),
            key: cert.map(|c| c.key.clone()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A certificate of another CA (a stranger's), naming `identity`.
pub fn foreign(dir: &Path, identity: Identity) -> CertFiles {
    let ca = Ca::generate("elsewhere", Duration::from_secs(3600)).expect("CA");
    std::fs::create_dir_all(dir).expect("dir");
    issue_with(
        &ca,
        dir,
        Leaf::new(identity, hosts(), Duration::from_secs(3600)),
    )
}

fn hosts() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

fn issue_with(ca: &Ca, dir: &Path, leaf: Leaf) -> CertFiles {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = format!("{}-{}-{n}", leaf.identity.kind.as_str(), leaf.identity.name);
    let issued = ca.issue(&leaf).expect("issue");
    let files = CertFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
        serial: issued.serial,
    };
    std::fs::write(&files.cert, issued.cert_pem).expect("write cert");
    std::fs::write(&files.key, issued.key_pem).expect("write key");
    files
}

/// Replaces `path` by a rename, as a Kubernetes Secret update does, so that a reader
/// never sees half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
