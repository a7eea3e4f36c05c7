//! Certificates of a local cluster run with TLS (`dynamoctl cluster --tls`): a throwaway
//! CA made once in the cluster's directory, a node certificate per node (naming
//! `dynamo://<cluster>/node/node-i`, valid for the listening host, `localhost` and
//! 127.0.0.1) and an admin certificate for `dynamoctl`. Kept across restarts; `--wipe`
//! does not remove them, deleting `<data-dir>/tls` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use dynamo_core::identity::{Identity, Kind};
use dynamo_proto::certs::{Ca, Leaf};

use super::ClusterConfig;

/// How long the throwaway certificates last.
const VALID_FOR: Duration = Duration::from_secs(365 * 24 * 3600);
/// The name in the admin certificate `dynamoctl` uses.
pub const ADMIN_NAME: &str = "dynamoctl";

/// The directory of the cluster's TLS files.
pub fn dir(cfg: &ClusterConfig) -> PathBuf {
    cfg.data_dir.join("tls")
}

pub fn ca(cfg: &ClusterConfig) -> PathBuf {
    dir(cfg).join("ca.pem")
}

fn ca_key(cfg: &ClusterConfig) -> PathBuf {
    dir(cfg).join("ca-key.pem")
}

/// The certificate and key of `name` (a node id, or [`ADMIN_NAME`]).
pub fn cert_and_key(cfg: &ClusterConfig, name: &str) -> (PathBuf, PathBuf) {
    (
        dir(cfg).join(format!("{name}.pem")),
        dir(cfg).join(format!("{name}-key.pem")),
    )
}

/// Makes whatever certificates are missing.
pub fn ensure(cfg: &ClusterConfig) -> anyhow::Result<()> {
    let tls = dir(cfg);
    std::fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
    let authority = match (ca(cfg).exists(), ca_key(cfg).exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(ca(cfg))?;
            let key = std::fs::read_to_string(ca_key(cfg))?;
            Ca::from_pem(&cert, &key)
                .with_context(|| format!("reading the local CA in {}", tls.display()))?
        }
        _ => {
            let made = Ca::generate(&cfg.cluster_id, 10 * VALID_FOR)?;
            write(&ca_key(cfg), &made.key_pem(), true)?;
            write(&ca(cfg), made.cert_pem(), false)?;
            made
        }
    };
    let mut hosts = vec![cfg.host.clone(), "localhost".into(), "127.0.0.1".into()];
    hosts.dedup();
    let mut holders: Vec<(String, Kind)> = (1..=cfg.nodes)
        .map(|i| (format!("node-{i}"), Kind::Node))
        .collect();
    holders.push((ADMIN_NAME.into(), Kind::Admin));
    for (name, kind) in holders {
        let (cert, key) = cert_and_key(cfg, &name);
        if cert.exists() && key.exists() {
            continue;
        }
        let identity = Identity::new(cfg.cluster_id.clone(), kind, name);
        let issued = authority.issue(&Leaf::new(identity, hosts.clone(), VALID_FOR))?;
        write(&key, &issued.key_pem, true)?;
        write(&cert, &issued.cert_pem, false)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ClusterConfig {
            data_dir: dir.path().to_owned(),
            nodes: 2,
            tls: true,
            ..ClusterConfig::default()
        };
        ensure(&cfg).unwrap();
        let (node_cert, _) = cert_and_key(&cfg, "node-2");
        let first = std::fs::read_to_string(&node_cert).unwrap();
        assert!(first.contains("BEGIN CERTIFICATE"));
        let (_, admin_key) = cert_and_key(&cfg, ADMIN_NAME);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&admin_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are the owner's alone");
        ensure(&cfg).unwrap();
        assert_eq!(std::fs::read_to_string(&node_cert).unwrap(), first);
        // A lost node certificate is made again by the same CA.
        std::fs::remove_file(&node_cert).unwrap();
        let ca_before = std::fs::read_to_string(ca(&cfg)).unwrap();
        ensure(&cfg).unwrap();
        assert_ne!(std::fs::read_to_string(&node_cert).unwrap(), first);
        assert_eq!(std::fs::read_to_string(ca(&cfg)).unwrap(), ca_before);
    }
}
