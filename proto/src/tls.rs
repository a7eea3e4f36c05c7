//! TLS configuration shared by nodes and clients: PEM files read into rustls
//! configurations, held so that they can be replaced while connections use them, and a
//! task that replaces them when the files change (a rotated Kubernetes Secret, a renewed
//! certificate), so that certificates rotate without a restart. Connections already open
//! keep the session they negotiated; new ones use the new files.
//!
//! Only rustls with ring: no OpenSSL, no aws-lc C build.

use std::hash::{Hash as _, Hasher as _};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The ALPN protocol of gRPC over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Why TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the {what} {path} holds no PEM {what}")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the {what} {path} is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("the CA bundle {path} holds an unusable certificate: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0} must be given together with {1}")]
    Incomplete(&'static str, &'static str),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every configuration is built with (ring), explicit so that no
/// process-wide default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a chain, or a CA bundle).
pub fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certs(&read(path, what)?, what, path)
}

/// Every certificate of PEM text; `origin` names where it came from in errors (a file,
/// a Secret's key).
pub fn pem_certs(
    bytes: &[u8],
    what: &'static str,
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: origin.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    pem_key(&read(path, "private key")?, path)
}

/// The private key in PEM text (PKCS#8, PKCS#1 or SEC1).
pub fn pem_key(bytes: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            path: origin.to_owned(),
        },
        e => TlsError::Pem {
            what,
            path: origin.to_owned(),
            message: e.to_string(),
        },
    })
}

/// Reads a CA bundle into a root store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    pem_roots(&read(path, "CA bundle")?, path)
}

/// A CA bundle (PEM text) as a root store.
pub fn pem_roots(bytes: &[u8], origin: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(bytes, "CA bundle", origin)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: origin.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// Reads certificate revocation lists (PEM), each file holding one or more.
pub fn read_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let what = "revocation list";
    let mut crls = Vec::new();
    for path in paths {
        let bytes = read(path, what)?;
        let found = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what,
                path: path.clone(),
                message: e.to_string(),
            })?;
        if found.is_empty() {
            return Err(TlsError::Empty {
                what,
                path: path.clone(),
            });
        }
        crls.extend(found);
    }
    Ok(crls)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The files of a TLS client: the CA bundle that verifies servers and, for mutual TLS,
/// the client's certificate chain and key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ClientFiles {
    /// Every file, for [`watch`].
    pub fn paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.ca.clone())
            .chain(self.cert.clone())
            .chain(self.key.clone())
            .collect()
    }

    /// A client configuration: servers verified against the CA bundle (by the name or IP
    /// address the client dials), the client certificate presented when given.
    pub fn load(&self) -> Result<rustls::ClientConfig, TlsError> {
        let roots = read_roots(&self.ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(read_certs(cert, "certificate")?, read_key(key)?)?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(TlsError::Incomplete("a certificate", "its key")),
            (None, Some(_)) => return Err(TlsError::Incomplete("a key", "its certificate")),
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// A configuration that can be replaced while it is in use: readers take the current
/// one, cheaply, for each new connection.
#[derive(Debug)]
pub struct Swappable<T>(RwLock<Arc<T>>);

impl<T> Swappable<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write() = Arc::new(value);
    }
}

/// The TLS side of outgoing connections: the configuration new connections use.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<Swappable<rustls::ClientConfig>>,
}

impl ClientTls {
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self {
            config: Arc::new(Swappable::new(config)),
        }
    }

    /// Loads `files`, and keeps reloading them every `every` when they change (the task
    /// ends with the runtime). Must be called inside a tokio runtime when `every` is set.
    pub fn from_files(files: &ClientFiles, every: Option<Duration>) -> Result<Self, TlsError> {
        let tls = Self::new(files.load()?);
        if let Some(every) = every {
            let (files, target) = (files.clone(), tls.clone());
            watch(files.paths(), every, move || {
                target.set(files.load()?);
                Ok::<(), TlsError>(())
            });
        }
        Ok(tls)
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.get()
    }

    /// Replaces the configuration for new connections.
    pub fn set(&self, config: rustls::ClientConfig) {
        self.config.set(config);
    }
}

/// Checks `paths` every `every` and calls `reload` once their contents changed (and
/// every file is readable: a Secret being rewritten is read again at the next check).
/// A failed reload is logged and the old configuration kept; it is retried when the
/// files change again. Returns the watching task.
pub fn watch<E: std::fmt::Display>(
    paths: Vec<PathBuf>,
    every: Duration,
    reload: impl Fn() -> Result<(), E> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = fingerprint(&paths);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = fingerprint(&paths);
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            match reload() {
                Ok(()) => tracing::info!(files = ?paths, "files changed: reloaded"),
                Err(e) => tracing::error!(
                    files = ?paths,
                    error = %e,
                    "files changed but do not load; the previous ones stay in force"
                ),
            }
        }
    })
}

/// A hash of the files' contents, or `None` while one cannot be read.
fn fingerprint(paths: &[PathBuf]) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        std::fs::read(path).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_empty_and_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = ClientFiles {
            ca: dir.path().join("nope.pem"),
            ..Default::default()
        };
        let err = missing.load().unwrap_err().to_string();
        assert!(
            err.contains("CA bundle") && err.contains("nope.pem"),
            "{err}"
        );

        let empty = write(dir.path(), "empty.pem", "not pem at all\n");
        let err = ClientFiles {
            ca: empty,
            ..Default::default()
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(err.contains("holds no PEM CA bundle"), "{err}");

        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let ca_path = write(dir.path(), "ca.pem", &ca.cert.pem());
        let err = ClientFiles {
            ca: ca_path.clone(),
            cert: Some(ca_path.clone()),
            key: None,
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(err.contains("its key"), "{err}");
        let key_path = write(dir.path(), "key.pem", &ca.signing_key.serialize_pem());
        let config = ClientFiles {
            ca: ca_path.clone(),
            cert: Some(ca_path),
            key: Some(key_path),
        }
        .load()
        .unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN_H2.to_vec()]);
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let first = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let files = ClientFiles {
            ca: write(dir.path(), "ca.pem", &first.cert.pem()),
            ..Default::default()
        };
        let tls = ClientTls::from_files(&files, Some(Duration::from_millis(20))).unwrap();
        let before = tls.config();
        // Broken: the old configuration stays.
        write(dir.path(), "ca.pem", "garbage");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            Arc::ptr_eq(&before, &tls.config()),
            "a broken file replaced the config"
        );
        let second = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        write(dir.path(), "ca.pem", &second.cert.pem());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::ptr_eq(&before, &tls.config()) {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
