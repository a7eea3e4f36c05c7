//! TLS and authorization with real node processes: who the peer port lets in, what a
//! valid caller may call, a node of another cluster or CA kept out, roles checked on
//! every request (sessions included), and certificates rotated under load without a
//! failed request.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dynamo_client::{ClientConfig, Context};
use dynamo_core::access::token_sha256;
use dynamo_core::identity::{Identity, Kind};
use dynamo_proto::tls::ClientTls;
use dynamo_proto::v1::{
    admin_client::AdminClient, replica_client::ReplicaClient, NodeInfoRequest, ReplicaReadRequest,
};
use dynamo_tests::pki::{self, CertFiles, CLUSTER};
use dynamo_tests::{endpoint, http_get, Cluster, Options};
use tonic::transport::Channel;
use tonic::Code;

fn channel(addr: SocketAddr, tls: Option<ClientTls>) -> Channel {
    endpoint(addr).connect_with_connector_lazy(dynamo_proto::cork::connector(tls))
}

fn read_request() -> ReplicaReadRequest {
    ReplicaReadRequest {
        keys: vec![b"k".to_vec().into()],
        cluster_id: CLUSTER.into(),
        map_epoch: 0,
    }
}

/// What node `i` counted of refused handshakes.
fn refused_handshakes(c: &Cluster, i: usize) -> u64 {
    let (_, body) = http_get(c.nodes[i].http, "/metrics").expect("metrics");
    body.lines()
        .find(|l| l.starts_with("dynamo_tls_handshakes_refused_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("the refused-handshake counter")
}

/// Waits until node `i`'s log says `needle`.
async fn log_says(c: &Cluster, i: usize, needle: &str) -> bool {
    dynamo_tests::eventually(Duration::from_secs(10), async || c.log(i).contains(needle)).await
}

/// Calls `Replica.Read` on node 0's peer port as the holder of `cert` (CA: `ca`).
async fn replica_read_as(
    c: &Cluster,
    cert: Option<&CertFiles>,
    pki: &pki::Pki,
) -> Result<(), tonic::Status> {
    let mut client = ReplicaClient::new(channel(c.nodes[0].peer, Some(pki.client(cert))));
    client.read(read_request()).await.map(|_| ())
}

#[tokio::test]
async fn the_peer_port_takes_only_certificates_of_the_cluster_and_only_nodes_replicate() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            tls: true,
            ..Options::default()
        });
        let pki = c.pki.as_ref().unwrap();
        // The nodes replicate to each other over mutual TLS.
        put_ok(&c, 0, "k", "v", &[]).await;
        assert_eq!(get_ok(&c, 1, "k").await.siblings.len(), 1);

        // Refused in the handshake, each with its reason in the node's log and counted.
        let before = refused_handshakes(&c, 0);
        let stranger = pki::foreign(
            &c.dir().join("foreign"),
            Identity::new(CLUSTER, Kind::Node, "node-9"),
        );
        let other_cluster = pki.issue(Identity::new("other-cluster", Kind::Node, "node-1"));
        let expired = pki.expired(Identity::new(CLUSTER, Kind::Node, "old"));
        let revoked = pki.issue(Identity::new(CLUSTER, Kind::Node, "lost-laptop"));
        assert!(replica_read_as(&c, Some(&revoked), pki).await.is_ok());
        pki.revoke(&revoked);
        let cases: [(&str, Option<&CertFiles>, &str); 4] = [
            ("another CA", Some(&stranger), "UnknownIssuer"),
            (
                "another cluster",
                Some(&other_cluster),
                "not of this cluster",
            ),
            ("expired", Some(&expired), "certificate expired"),
            ("revoked", Some(&revoked), "Revoked"),
        ];
        for (what, cert, reason) in cases {
            // A revoked certificate is refused once the node reloaded the list.
            let refused = dynamo_tests::eventually(Duration::from_secs(10), async || {
                replica_read_as(&c, cert, pki).await.is_err()
            })
            .await;
            assert!(refused, "{what}: let in");
            // In TLS 1.3 the client finishes its side of the handshake before the node
            // checks its certificate: it sees the connection fail, the node says why.
            let err = replica_read_as(&c, cert, pki).await.unwrap_err();
            assert!(
                matches!(err.code(), Code::Unavailable | Code::Unknown),
                "{what}: {err:?}"
            );
            assert!(
                log_says(&c, 0, reason).await,
                "{what}: no {reason:?} in the log"
            );
        }
        assert!(refused_handshakes(&c, 0) >= before + 4);

        // No certificate: TLS lets the caller in to be told what it lacks, nothing more.
        let err = replica_read_as(&c, None, pki).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(
            err.message().contains("certificate of this cluster's CA"),
            "{err:?}"
        );
        let mut anonymous = AdminClient::new(channel(c.nodes[0].peer, Some(pki.client(None))));
        let err = anonymous.node_info(NodeInfoRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

        // Plaintext to a TLS port gets nowhere either.
        let mut plain = AdminClient::new(channel(c.nodes[0].peer, None));
        assert!(plain.node_info(NodeInfoRequest {}).await.is_err());

        // Valid certificates of the cluster that are not nodes' get in, and may not
        // replicate: PERMISSION_DENIED saying what is needed.
        for (kind, name) in [(Kind::Client, "alice"), (Kind::Admin, "operator")] {
            let cert = pki.issue(Identity::new(CLUSTER, kind, name));
            let err = replica_read_as(&c, Some(&cert), pki).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{kind:?}: {err:?}");
            assert!(err.message().contains("node certificate"), "{err:?}");
            assert!(err.message().contains(name), "{err:?}");
            let mut admin =
                AdminClient::new(channel(c.nodes[0].peer, Some(pki.client(Some(&cert)))));
            admin
                .node_info(NodeInfoRequest {})
                .await
                .expect("read-only admin calls are open to the cluster's certificates");
        }
        // The client port takes clients with server verification alone.
        let client = ClientConfig::new(&[c.nodes[0].grpc.to_string()])
            .with_tls(&pki.client_files(None), None)
            .unwrap()
            .connect()
            .await
            .unwrap();
        client
            .put(b"tls-key", &b"v"[..], &Context::default(), None)
            .await
            .expect("put over TLS");
        let got = client.get(b"tls-key", None).await.expect("get over TLS");
        assert_eq!(got.siblings.len(), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_node_with_a_certificate_of_another_ca_cannot_join() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            tls: true,
            ..Options::default()
        });
        // node-4 claims to be of this cluster with a certificate a stranger signed.
        let forged = pki::foreign(
            &c.dir().join("forged"),
            Identity::new(CLUSTER, Kind::Node, "node-4"),
        );
        let ports: Vec<u16> = (0..3).map(|_| dynamo_tests::free_port_block(1)).collect();
        let data = c.dir().join("node-4");
        let log = std::fs::File::create(c.dir().join("node-4.log")).unwrap();
        let mut intruder = std::process::Command::new(dynamo_tests::node_binary())
            .args(["--node-id", "node-4", "--cluster-id", CLUSTER])
            .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
            .args(["--peer-listen", &format!("127.0.0.1:{}", ports[1])])
            .args(["--http-listen", &format!("127.0.0.1:{}", ports[2])])
            .arg("--data-dir")
            .arg(&data)
            .args(["--cluster-secret-file", &c.secret_file()])
            .args(["--seeds", &c.nodes[0].peer.to_string()])
            .arg("--tls-cert")
            .arg(&forged.cert)
            .arg("--tls-key")
            .arg(&forged.key)
            // It trusts our CA: only its own certificate is forged.
            .arg("--tls-ca")
            .arg(c.pki.as_ref().unwrap().ca_path())
            .args(["--gossip-interval-ms", "200"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the intruder");
        assert!(
            log_says(&c, 0, "UnknownIssuer").await,
            "node-1 never refused the intruder"
        );
        // It never gets the cluster's map, and no member ever hears of it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ready = dynamo_tests::http_status(
            format!("127.0.0.1:{}", ports[2]).parse().unwrap(),
            "/readyz",
        );
        assert_ne!(ready, Some(200), "the intruder became ready");
        for j in 0..c.nodes.len() {
            let health = c
                .admin(j)
                .cluster_health(dynamo_proto::v1::ClusterHealthRequest {})
                .await
                .expect("cluster health")
                .into_inner();
            let text = format!("{health:?}");
            assert!(
                !text.contains("node-4"),
                "node {j} heard of the intruder: {text}"
            );
        }
        let _ = intruder.kill();
        let _ = intruder.wait();
        // A node of this cluster with a certificate of this CA does join.
        let joined = c.add_by_seeds(&[0]);
        assert!(c.log(joined).contains("node serving"));
    })
    .await
    .expect("test timed out");
}

fn users(reader_role: &str) -> String {
    format!(
        "anonymous: none\nusers:\n  - name: reader\n    role: {reader_role}\n    token_sha256: {}\n  \
         - name: app\n    role: write\n    token_sha256: {}\n  - name: ops\n    role: admin\n",
        token_sha256("reader-token"),
        token_sha256("app-token"),
    )
}

#[tokio::test]
async fn roles_are_checked_on_every_request_and_the_file_reloads() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // The file must exist before the nodes start: write it in a directory of ours.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.yaml");
        pki::write_atomically(&path, &users("read"));
        let c = Cluster::start(Options {
            tls: true,
            extra: vec!["--auth-file".into(), path.display().to_string()],
            ..Options::default()
        });
        let pki = c.pki.as_ref().unwrap();
        let addr = c.nodes[0].grpc.to_string();
        let connect = |token: Option<&str>, cert: Option<&CertFiles>| {
            let mut config = ClientConfig::new(std::slice::from_ref(&addr))
                .with_tls(&pki.client_files(cert), None)
                .unwrap();
            if let Some(token) = token {
                config = config.with_token(token).unwrap();
            }
            config.connect()
        };

        // No credentials: UNAUTHENTICATED, saying what to send.
        let anonymous = connect(None, None).await.unwrap();
        let err = anonymous.get(b"k", None).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
        assert!(err.message().contains("no credentials"), "{err}");
        // A token nobody has: UNAUTHENTICATED too.
        let wrong = connect(Some("guess"), None).await.unwrap();
        let err = wrong.get(b"k", None).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
        assert!(err.message().contains("matches no user"), "{err}");

        // app writes (through the client's session), reader only reads.
        let app = connect(Some("app-token"), None).await.unwrap();
        app.put(b"k", &b"by-app"[..], &Context::default(), None)
            .await
            .expect("app may write");
        let reader = connect(Some("reader-token"), None).await.unwrap();
        let got = reader.get(b"k", None).await.expect("reader may read");
        assert_eq!(got.siblings[0].value.as_deref(), Some(&b"by-app"[..]));
        let err = reader
            .put(b"k", &b"by-reader"[..], &got.context, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
        assert!(
            err.message().contains("write role") && err.message().contains("reader"),
            "{err}"
        );
        // Unary calls are checked the same way as the session's.
        let mut kv = dynamo_proto::v1::kv_client::KvClient::new(channel(
            c.nodes[0].grpc,
            Some(pki.client(None)),
        ));
        let mut req = tonic::Request::new(dynamo_proto::v1::DeleteRequest {
            key: b"k".to_vec(),
            context: Vec::new(),
            w: None,
        });
        req.metadata_mut()
            .insert("authorization", "Bearer reader-token".parse().unwrap());
        let err = kv.delete(req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        // ops is named by a client certificate; admin calls are its, not app's.
        let ops_cert = pki.issue(Identity::new(CLUSTER, Kind::Client, "ops"));
        let ops = connect(None, Some(&ops_cert)).await.unwrap();
        ops.node_info()
            .await
            .expect("ops reads the cluster's state");
        let app_peer = ClientConfig::new(&[c.nodes[0].peer.to_string()])
            .with_tls(
                &pki.client_files(Some(&pki.issue(Identity::new(
                    CLUSTER,
                    Kind::Client,
                    "app",
                )))),
                None,
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let err = app_peer.repair(None).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
        assert!(err.message().contains("admin role"), "{err}");

        // The file is reloaded: reader may write once the file says so.
        pki::write_atomically(&path, &users("write"));
        let mut last = None;
        let wrote = dynamo_tests::eventually(Duration::from_secs(10), async || {
            let put = reader
                .put(b"k", &b"by-reader"[..], &got.context, None)
                .await;
            last = put.as_ref().err().map(|e| e.to_string());
            put.is_ok()
        })
        .await;
        assert!(wrote, "the new role never applied: {last:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_request() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            tls: true,
            ..Options::default()
        });
        let pki = c.pki.as_ref().unwrap();
        let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc.to_string()).collect();
        let client = ClientConfig::new(&addrs)
            .with_tls(&pki.client_files(None), None)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut writers = Vec::new();
        for w in 0..8 {
            let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("rot-{w}-{n}");
                    match client
                        .put(
                            key.as_bytes(),
                            key.clone().into_bytes(),
                            &Context::default(),
                            None,
                        )
                        .await
                    {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("{key}: {e}")),
                    }
                    n += 1;
                }
                (n, failures)
            }));
        }
        // Twice, every node gets a new key and certificate; each node's new
        // connections (clients' and peers') must then see the new one.
        for round in 0..2 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            for (i, old) in c.certs.iter().enumerate() {
                let new = pki.node(&c.nodes[i].id);
                // Key first, then certificate: a reload in between fails to match them
                // and keeps the old pair, and the next check takes the new pair.
                pki::write_atomically(&old.key, &std::fs::read_to_string(&new.key).unwrap());
                pki::write_atomically(&old.cert, &std::fs::read_to_string(&new.cert).unwrap());
            }
            for (i, node) in c.nodes.iter().enumerate() {
                let want = der_of(&c.certs[i].cert);
                let served = dynamo_tests::eventually(Duration::from_secs(10), async || {
                    served_certificate(node.grpc, pki).await.as_ref() == Some(&want)
                })
                .await;
                assert!(
                    served,
                    "round {round}: node {i} still serves its old certificate"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for w in writers {
            let (n, failures) = w.await.unwrap();
            assert!(
                failures.is_empty(),
                "requests failed during rotation: {failures:?}"
            );
            total += n;
        }
        assert!(total > 50, "only {total} writes during the rotations");
        assert_eq!(acked.load(Ordering::Relaxed), total);
        // Every acknowledged write is there, read through new connections.
        let fresh = ClientConfig::new(&addrs)
            .with_tls(&pki.client_files(None), None)
            .unwrap()
            .connect()
            .await
            .unwrap();
        for key in ["rot-0-0", "rot-7-3"] {
            let got = fresh.get(key.as_bytes(), None).await.expect("read back");
            assert_eq!(got.siblings.len(), 1, "{key}");
        }
    })
    .await
    .expect("test timed out");
}

/// The certificate (DER) a new TLS connection to `addr` is served.
async fn served_certificate(addr: SocketAddr, pki: &pki::Pki) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(pki.client(None).config());
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let stream = connector.connect(name, tcp).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// The certificate (DER) in a PEM file.
fn der_of(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .expect("a certificate")
        .to_vec()
}

/// Kills the launcher (and with it its nodes) however the test ends.
struct Launcher(std::process::Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child: SIGTERM lets it stop its nodes.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        if dynamo_tests::wait_exit(&mut self.0, Duration::from_secs(20)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn dynamoctl_cluster_with_tls_serves_dynamoctl_given_its_ca() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer, http) = (
            dynamo_tests::free_port_block(4),
            dynamo_tests::free_port_block(4),
            dynamo_tests::free_port_block(4),
        );
        let log = dir.path().join("cluster.log");
        let out = std::fs::File::create(&log).unwrap();
        let launcher = Launcher(
            std::process::Command::new(dynamo_tests::dynamoctl_binary())
                .args(["cluster", "--tls", "--nodes", "3", "--partitions", "32"])
                .args(["--base-port", &client.to_string()])
                .args(["--peer-base-port", &peer.to_string()])
                .args(["--http-base-port", &http.to_string()])
                .arg("--data-dir")
                .arg(dir.path().join("cluster"))
                .arg("--node-bin")
                .arg(dynamo_tests::node_binary())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("dynamoctl cluster"),
        );
        // The banner, printed once every node is ready, says what to export.
        let ready = dynamo_tests::eventually(Duration::from_secs(60), async || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("DYNAMO_CA=")
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            ready,
            "the cluster never got ready, or its banner did not say what to export:\n{text}"
        );
        let tls = dir.path().join("cluster/tls");
        let addr = format!("127.0.0.1:{}", client + 1);
        let ctl = |args: &[&str], env: &[(&str, std::path::PathBuf)]| {
            let mut cmd = std::process::Command::new(dynamo_tests::dynamoctl_binary());
            cmd.args(["--addr", &addr, "--timeout", "5s"]).args(args);
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.output().expect("dynamoctl")
        };
        let with_ca = [("DYNAMO_CA", tls.join("ca.pem"))];
        let put = ctl(&["put", "greeting", "hello"], &with_ca);
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
        let got = ctl(&["get", "greeting"], &with_ca);
        assert!(String::from_utf8_lossy(&got.stdout).contains("hello"));
        // Plaintext gets nowhere.
        let plain = ctl(&["get", "greeting"], &[]);
        assert!(!plain.status.success());
        // Repair goes to the peer port: it needs the admin certificate.
        let repair = ctl(&["repair"], &with_ca);
        assert!(!repair.status.success(), "repair without a certificate");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&repair.stdout),
            String::from_utf8_lossy(&repair.stderr)
        );
        assert!(said.contains("certificate of this cluster's CA"), "{said}");
        let admin = [
            ("DYNAMO_CA", tls.join("ca.pem")),
            ("DYNAMO_CERT", tls.join("dynamoctl.pem")),
            ("DYNAMO_KEY", tls.join("dynamoctl-key.pem")),
        ];
        let repair = ctl(&["repair"], &admin);
        assert!(
            repair.status.success(),
            "{}",
            String::from_utf8_lossy(&repair.stderr)
        );
        drop(launcher);
    })
    .await
    .expect("test timed out");
}
