//! A clean stop never loses a dot.
//!
//! The clean-shutdown marker lets the next start keep the node's incarnation, so the
//! counters of its actor go on from what its disk holds. A version whose dot the node
//! already sent to other replicas, but which its own store had only queued when it
//! stopped, is not on its disk: if the marker were written anyway, the next write through
//! the node would take that dot again for other bytes, and one of the two versions would
//! silently win everywhere (Riak's KV679).
//!
//! Three nodes on the loopback transport, all replicas of the key, writes not synced.
//! Node n1's store writer is held on a slow read while a put through n1 is acknowledged
//! by the other two; n1 then stops with a short grace, its process "dies" (the engine
//! handle is fenced, so the held writer can no longer land anything), and it starts
//! again on the same disk. A blind put through it must make a new version beside the
//! first, not a second version with the first's dot.
//!
//! And the other way round: with nothing stuck, the stop is clean (the store drains the
//! local copy of an acknowledged put first), and the restart keeps the incarnation and
//! goes on from the counters its disk holds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{members, start_node, values, Spec};
use dynamo_core::version::Dot;
use dynamo_core::SiblingSet;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::shutdown::{self, Background};
use dynamo_node::storage::faulty::FaultyEngine;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{GetRequest, PutRequest};
use tonic::Request;

const KEY: &str = "k";

/// Runs a blocking wait off the runtime's threads, so that the test's timeout still fires
/// if it never returns.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking step")
}

/// A blind put of `value` to [`KEY`] through `node`.
async fn put(node: &Arc<Node>, value: &str) -> Result<(), tonic::Status> {
    let req = PutRequest {
        key: KEY.into(),
        value: value.into(),
        context: vec![],
        w: None,
    };
    KvService::new(node.clone())
        .put(Request::new(req))
        .await
        .map(drop)
}

/// Every dot stored for [`KEY`] on any of `nodes`, with the values stored under it.
fn dots(nodes: &[&Arc<Node>]) -> BTreeMap<Dot, BTreeSet<Option<Bytes>>> {
    let mut dots: BTreeMap<Dot, BTreeSet<Option<Bytes>>> = BTreeMap::new();
    for node in nodes {
        for s in node.store.read(KEY.as_bytes()).unwrap().siblings() {
            dots.entry(s.dot.clone())
                .or_default()
                .insert(s.value.clone());
        }
    }
    dots
}

/// The values of [`KEY`], read through `node` from all three replicas.
async fn read_all(node: &Arc<Node>) -> Vec<String> {
    let req = GetRequest {
        key: KEY.into(),
        r: Some(3),
    };
    let read = KvService::new(node.clone())
        .get(Request::new(req))
        .await
        .expect("read from all three replicas");
    values(&read.into_inner())
}

/// The dots that carry different values on `nodes`, with those values.
fn reused_dots(nodes: &[&Arc<Node>]) -> Vec<(Dot, BTreeSet<Option<Bytes>>)> {
    dots(nodes)
        .into_iter()
        .filter(|(_, values)| values.len() > 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_nothing_stuck_is_clean_and_the_restart_goes_on_from_its_disk() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let net = LoopbackNet::new();
        let members = members(3);
        let spec = Spec::default();
        let disk = Arc::new(MemoryEngine::new());
        let n1 = start_node(&net, &members, 0, disk.clone(), &spec);
        let others: Vec<Arc<Node>> = (1..3)
            .map(|i| start_node(&net, &members, i, Arc::new(MemoryEngine::new()), &spec))
            .collect();
        // Acknowledged maybe before n1's own copy is applied: the stop drains it.
        put(&n1, "X").await.expect("X is acknowledged");
        let grace = Instant::now() + Duration::from_secs(10);
        shutdown::finish(&n1, Background::default(), grace)
            .await
            .expect("nothing in flight: a clean stop");
        let incarnation = n1.identity.incarnation;
        // The stop joined the store's threads: nothing writes to the disk any more.
        blocking(move || drop(n1)).await;

        let n1 = start_node(&net, &members, 0, disk, &spec);
        assert!(!n1.identity.new_incarnation, "the marker was written");
        assert_eq!(n1.identity.incarnation, incarnation);
        put(&n1, "Y").await.expect("Y is acknowledged");
        let reused = reused_dots(&[&n1, &others[0], &others[1]]);
        assert!(reused.is_empty(), "dots handed out twice: {reused:?}");
        assert_eq!(read_all(&n1).await, ["X", "Y"]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_with_a_write_still_queued_is_not_clean_and_the_restart_reuses_no_dot() {
    tokio::time::timeout(Duration::from_secs(30), scenario())
        .await
        .expect("test timed out");
}

async fn scenario() {
    let net = LoopbackNet::new();
    let members = members(3);
    let spec = Spec::default();
    let disk = Arc::new(FaultyEngine::new());
    let n1 = start_node(&net, &members, 0, disk.clone(), &spec);
    let others: Vec<Arc<Node>> = (1..3)
        .map(|i| start_node(&net, &members, i, Arc::new(MemoryEngine::new()), &spec))
        .collect();

    // n1's writer reads a key it never wrote, from the engine, and is held there.
    n1.store.drop_cache();
    disk.pause_next_read();
    let held = {
        let n1 = n1.clone();
        tokio::spawn(async move { n1.store.join(Bytes::from("held"), SiblingSet::new()).await })
    };
    blocking({
        let disk = disk.clone();
        move || disk.wait_read_paused()
    })
    .await;

    // X is acknowledged by n2 and n3 (W=2) while n1's own copy waits behind the held read.
    put(&n1, "X")
        .await
        .expect("X is acknowledged by the other two replicas");

    // A clean stop whose grace ends before the writer can go on.
    let stopped = shutdown::finish(
        &n1,
        Background::default(),
        Instant::now() + Duration::from_millis(300),
    )
    .await;

    // The process dies: nothing the old store still holds reaches the disk.
    disk.fence();
    disk.release_read();
    let _ = held.await;
    blocking(move || drop(n1)).await;

    // Back on the same disk.
    let n1 = start_node(&net, &members, 0, Arc::new(disk.reopen()), &spec);
    put(&n1, "Y").await.expect("Y is acknowledged");

    let reused = reused_dots(&[&n1, &others[0], &others[1]]);
    assert!(
        reused.is_empty(),
        "dots handed out twice, for different values (KV679): {reused:?}"
    );
    assert_eq!(
        read_all(&n1).await,
        ["X", "Y"],
        "both acknowledged puts are kept"
    );
    let err = stopped.expect_err("a stop with a write still queued must not be clean");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(
        n1.identity.new_incarnation,
        "the restart takes a new incarnation"
    );
}
