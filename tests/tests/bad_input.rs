//! Every bad input gets INVALID_ARGUMENT naming the problem, and stored data stays intact.

mod common;

use common::*;
use dynamo_core::context::ContextKey;
use dynamo_core::{Actor, VersionVector};
use dynamo_proto::v1::{DeleteRequest, GetRequest, PutRequest};
use dynamo_tests::{node_binary, wait_exit, Cluster, Options};
use tonic::Code;

#[tokio::test]
async fn bad_requests_are_refused_and_store_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            extra: vec!["--max-value-bytes".into(), "1000".into()],
            ..Options::default()
        });
        put_ok(&c, 0, "keep", "original", &[]).await;
        let before = get_ok(&c, 1, "keep").await;

        let put_raw = |key: Vec<u8>, value: Vec<u8>, context: Vec<u8>, w: Option<u32>| {
            let mut kv = c.kv(0);
            async move {
                kv.put(PutRequest {
                    key,
                    value,
                    context,
                    w,
                })
                .await
                .map(|r| r.into_inner())
            }
        };
        assert_status(
            put_raw(vec![], b"v".to_vec(), vec![], None).await,
            Code::InvalidArgument,
            "key is empty",
        );
        assert_status(
            put_raw(vec![b'k'; 1025], b"v".to_vec(), vec![], None).await,
            Code::InvalidArgument,
            "1024 bytes",
        );
        assert_status(
            put_raw(b"keep".to_vec(), vec![0; 1001], vec![], None).await,
            Code::InvalidArgument,
            "limit is 1000 bytes",
        );
        let mut corrupt = before.context.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_status(
            put_raw(b"keep".to_vec(), b"x".to_vec(), corrupt.clone(), None).await,
            Code::InvalidArgument,
            "context is corrupt",
        );
        assert_status(
            put_raw(b"keep".to_vec(), b"x".to_vec(), b"garbage".to_vec(), None).await,
            Code::InvalidArgument,
            "context is corrupt",
        );
        let vv: VersionVector = [(Actor::new("node-1", 1), 5)].into_iter().collect();
        let foreign =
            ContextKey::new("another-cluster", b"another cluster's secret").encode(&vv.into());
        assert_status(
            put_raw(b"keep".to_vec(), b"x".to_vec(), foreign, None).await,
            Code::InvalidArgument,
            "another cluster",
        );
        assert_status(
            put_raw(b"keep".to_vec(), b"x".to_vec(), vec![], Some(0)).await,
            Code::InvalidArgument,
            "w = 0",
        );
        assert_status(
            put_raw(b"keep".to_vec(), b"x".to_vec(), vec![], Some(4)).await,
            Code::InvalidArgument,
            "w = 4",
        );
        for r in [0, 4] {
            let res = c
                .kv(1)
                .get(GetRequest {
                    key: b"keep".to_vec(),
                    r: Some(r),
                })
                .await;
            assert_status(res, Code::InvalidArgument, &format!("r = {r}"));
        }
        let res = c
            .kv(2)
            .delete(DeleteRequest {
                key: b"keep".to_vec(),
                context: vec![],
                w: None,
            })
            .await;
        assert_status(res, Code::InvalidArgument, "delete needs the context");
        let res = c
            .kv(2)
            .delete(DeleteRequest {
                key: b"keep".to_vec(),
                context: corrupt,
                w: None,
            })
            .await;
        assert_status(res, Code::InvalidArgument, "context is corrupt");

        // Nothing stored changed, on any node.
        for node in 0..3 {
            let after = get_ok(&c, node, "keep").await;
            assert_eq!(values(&after), ["original"]);
            assert_eq!(after.context, before.context, "via node {node}");
        }
    })
    .await
    .expect("test timed out");
}

#[test]
fn a_node_refuses_to_start_with_bad_configuration() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(node_binary())
            .args(args)
            .env("DYNAMO_CLUSTER_SECRET", SECRET)
            .output()
            .expect("run dynamo-node");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should fail with exit code 2"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = [
        "--data-dir",
        "/nonexistent/never-created",
        "--members",
        "a=127.0.0.1:1,b=127.0.0.1:2,c=127.0.0.1:3",
        "--cluster-id",
        "bad-config",
    ];
    let err = run(&[&base[..2], &base[2..4], &["--node-id", "a"]].concat());
    assert!(err.contains("cluster_id is not set"), "{err}");
    let err = run(&[
        &base[..],
        &["--node-id", "a", "--n", "4", "--r", "1", "--w", "1"],
    ]
    .concat());
    assert!(err.contains("n=4 needs at least 4 members"), "{err}");
    let err = run(&[&base[..], &["--node-id", "zz"]].concat());
    assert!(err.contains("\"zz\" is not among the members"), "{err}");
    let err = run(&[&base[..], &["--node-id", "a", "--w", "5"]].concat());
    assert!(err.contains("w=5"), "{err}");
    let err = run(&[&base[..], &["--node-id", "a", "--partitions", "1000"]].concat());
    assert!(err.contains("power of two"), "{err}");
    let err = run(&["--node-id", "a", "--members", "a=nohost"]);
    assert!(err.contains("invalid member"), "{err}");
    let out = std::process::Command::new(node_binary())
        .args(base)
        .args(["--node-id", "a"])
        .env_remove("DYNAMO_CLUSTER_SECRET")
        .output()
        .expect("run dynamo-node");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the cluster secret is not set"), "{err}");
}

/// A cluster secret for nodes started by hand here.
const SECRET: &str = "bad-input-test-secret-0123456789";

#[test]
fn a_node_whose_port_is_taken_exits_naming_it() {
    // Held for the whole test, so the port cannot change hands; the other port is any
    // free one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    // Several starts, with both CPUs kept busy: exiting used to race the store's writer
    // closing RocksDB and kill the process (SIGSEGV, or an abort with "pthread lock:
    // Invalid argument"), in about one start in ten on a busy machine. The node now joins
    // the writer and closes RocksDB before it exits.
    let _busy = BusyCpus::start(2);
    for start in 1..=20 {
        // Starts find the client port, the peer port or the HTTP port taken in turn (each
        // bound after the one before, with the earlier listeners already open).
        let free = "127.0.0.1:0";
        let (grpc, peer, http, which) = match start % 3 {
            0 => (taken_addr.as_str(), free, free, "the client gRPC"),
            1 => (free, taken_addr.as_str(), free, "the peer gRPC"),
            _ => (free, free, taken_addr.as_str(), "HTTP"),
        };
        let mut child = std::process::Command::new(node_binary())
            .args(["--node-id", "a", "--members", "a=127.0.0.1:1"])
            .args([
                "--listen",
                grpc,
                "--peer-listen",
                peer,
                "--http-listen",
                http,
            ])
            .args(["--data-dir", dir.path().to_str().expect("utf-8 path")])
            .args(["--n", "1", "--r", "1", "--w", "1"])
            .args(["--cluster-id", "port-taken"])
            .env("DYNAMO_CLUSTER_SECRET", SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dynamo-node");
        let status = wait_exit(&mut child, std::time::Duration::from_secs(20))
            .expect("the node exits when its port is taken");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("read stderr");
        assert_eq!(
            status.code(),
            Some(1),
            "start {start}: an error exit, not a crash ({status}): {err}"
        );
        assert!(
            err.contains(&format!("binding {which} address {taken_addr}")),
            "start {start}: {err}"
        );
    }
    drop(taken);
}

/// Threads spinning until dropped, to keep the CPUs busy.
struct BusyCpus {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start(threads: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
