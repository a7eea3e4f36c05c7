//! The real coordinator, store and handoff of several nodes in one process, connected by
//! the loopback transport: sloppy quorum, forwarding, hints, quorum failures.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{members, start_node, Spec};
use dynamo_node::coordinator;
use dynamo_node::error::RequestError;
use dynamo_node::handoff;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::storage::faulty::FaultyEngine;
use dynamo_node::storage::keys::data_key;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::storage::{Cf, Engine};
use dynamo_node::store::decode_stored;

fn cluster(s: usize, n: u32, w: u32) -> (Arc<LoopbackNet>, Vec<Arc<Node>>) {
    cluster_on(s, n, w, false, |_| Arc::new(MemoryEngine::new()))
}

/// A cluster whose node `i` stores on `engine(i)`; with `sync_writes`, the `always` policy.
fn cluster_on(
    s: usize,
    n: u32,
    w: u32,
    sync_writes: bool,
    engine: impl Fn(usize) -> Arc<dyn Engine>,
) -> (Arc<LoopbackNet>, Vec<Arc<Node>>) {
    let members = members(s);
    let net = LoopbackNet::new();
    let spec = Spec {
        n,
        w,
        request_timeout_ms: 500,
        sync_window: sync_writes.then_some(std::time::Duration::ZERO),
        ..Spec::default()
    };
    let nodes = (0..s)
        .map(|i| start_node(&net, &members, i, engine(i), &spec))
        .collect();
    (net, nodes)
}

fn index(nodes: &[Arc<Node>], id: &str) -> usize {
    nodes.iter().position(|n| n.id() == id).unwrap()
}

fn pref(nodes: &[Arc<Node>], key: &[u8]) -> Vec<usize> {
    let map = nodes[0].map();
    map.preference_list(map.partition_of(key))
        .map(|m| index(nodes, &m.id))
        .collect()
}

fn local_values(node: &Node, key: &[u8]) -> Vec<Bytes> {
    node.store.read(key).unwrap().values().cloned().collect()
}

/// What the node's engine itself holds for `key` (past the store's cache: after a
/// simulated crash, only the engine tells what survived).
fn engine_values(node: &Node, key: &[u8]) -> Vec<Bytes> {
    let dk = data_key(node.map().partition_of(key), key);
    let raw = node.store.engine().get(Cf::Data, &dk).unwrap();
    decode_stored(raw.as_deref())
        .unwrap()
        .values()
        .cloned()
        .collect()
}

#[tokio::test]
async fn sloppy_quorum_fallbacks_count_and_hand_off() {
    let (net, nodes) = cluster(5, 3, 3);
    let key = b"cart";
    let p = pref(&nodes, key);
    net.set_down(nodes[p[1]].id(), true);
    net.set_down(nodes[p[2]].id(), true);

    // W=3 with two of three replicas down: only fallbacks holding hints can make it.
    let w = coordinator::write(
        &nodes[p[0]],
        Bytes::from_static(key),
        Some(Bytes::from("v")),
        &[],
        None,
    )
    .await
    .expect("sloppy quorum write");
    assert_eq!(w.acks, 3);
    let fallbacks: Vec<usize> = (0..5).filter(|i| !p.contains(i)).collect();
    let held: u64 = fallbacks
        .iter()
        .flat_map(|&f| nodes[f].store.hint_summary().unwrap())
        .map(|(_, count, _)| count)
        .sum();
    assert_eq!(held, 2, "each fallback holds one hint for a down replica");
    for &f in &fallbacks {
        assert!(
            local_values(&nodes[f], key).is_empty(),
            "a fallback keeps hints, not data"
        );
    }

    net.set_down(nodes[p[1]].id(), false);
    net.set_down(nodes[p[2]].id(), false);
    for n in &nodes {
        handoff::round(n).await;
    }
    for &r in &p {
        assert_eq!(
            local_values(&nodes[r], key),
            [Bytes::from("v")],
            "replica {r}"
        );
    }
    for n in &nodes {
        assert!(
            n.store.hint_summary().unwrap().is_empty(),
            "{} still holds hints",
            n.id()
        );
    }
}

#[tokio::test]
async fn coordinator_keeps_a_hint_when_no_fallback_exists() {
    let (net, nodes) = cluster(3, 3, 2);
    let key = b"k";
    let p = pref(&nodes, key);
    net.set_down(nodes[p[2]].id(), true);
    coordinator::write(
        &nodes[p[0]],
        Bytes::from_static(key),
        Some(Bytes::from("v")),
        &[],
        None,
    )
    .await
    .expect("W=2 with one replica down");
    // The background replication finishes and records the hint.
    let mut held = Vec::new();
    for _ in 0..50 {
        held = nodes[p[0]].store.hint_summary().unwrap();
        if !held.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, nodes[p[2]].id());
    net.set_down(nodes[p[2]].id(), false);
    // The coordinator saw the failure, so the peer is "down" until a probe succeeds.
    for _ in 0..40 {
        handoff::round(&nodes[p[0]]).await;
        if !local_values(&nodes[p[2]], key).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(local_values(&nodes[p[2]], key), [Bytes::from("v")]);
}

#[tokio::test]
async fn requests_to_a_non_replica_are_forwarded() {
    let (_net, nodes) = cluster(5, 3, 2);
    let key = b"elsewhere";
    let p = pref(&nodes, key);
    let outsider = (0..5).find(|i| !p.contains(i)).unwrap();
    let route = coordinator::route(&nodes[outsider], key, false).unwrap();
    let coordinator::Route::Forward(targets) = route else {
        panic!("expected forwarding")
    };
    assert_eq!(targets.len(), 3);
    assert!(matches!(
        coordinator::route(&nodes[outsider], key, true),
        Err(RequestError::NoCoordinator(_))
    ));
}

#[tokio::test]
async fn too_few_replicas_is_unavailable_and_says_how_many() {
    let (net, nodes) = cluster(3, 3, 2);
    let key = b"k";
    let p = pref(&nodes, key);
    net.set_down(nodes[p[1]].id(), true);
    net.set_down(nodes[p[2]].id(), true);
    let err = coordinator::write(
        &nodes[p[0]],
        Bytes::from_static(key),
        Some(Bytes::from("v")),
        &[],
        None,
    )
    .await
    .err()
    .expect("must fail");
    assert!(
        err.to_string().contains("1 of 2 required replicas"),
        "{err}"
    );
    let err = coordinator::read(&nodes[p[0]], Bytes::from_static(key), None)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("get: 1 of 2 required replicas"),
        "{err}"
    );
}

#[tokio::test]
async fn with_synced_writes_a_put_waits_for_the_coordinators_own_sync() {
    let gated = Arc::new(FaultyEngine::new());
    let engine = gated.clone();
    let (_net, nodes) = cluster_on(1, 1, 1, true, move |_| engine.clone());
    gated.set_open(false);
    let node = nodes[0].clone();

    // W=1 and no other replica: only this node's synced copy can acknowledge the put.
    let put = {
        let node = node.clone();
        tokio::spawn(async move {
            coordinator::write(&node, Bytes::from("k"), Some(Bytes::from("v")), b"", None).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert!(!put.is_finished(), "acknowledged before its sync");
    assert_eq!(
        local_values(&node, b"k"),
        vec![Bytes::from("v")],
        "applied (visible) while the sync runs"
    );
    gated.set_open(true);
    let written = put.await.unwrap().expect("acknowledged once synced");
    assert_eq!(written.acks, 1);
    gated.crash();
    assert_eq!(engine_values(&node, b"k"), vec![Bytes::from("v")]);

    // A sync that outlasts the request timeout (500 ms) is not a success.
    gated.set_open(false);
    let put = {
        let node = node.clone();
        tokio::spawn(async move {
            coordinator::write(&node, Bytes::from("k2"), Some(Bytes::from("v2")), b"", None).await
        })
    };
    let result = tokio::time::timeout(std::time::Duration::from_secs(3), put)
        .await
        .expect("bounded by the request timeout")
        .unwrap();
    gated.set_open(true);
    match result {
        Err(RequestError::Unavailable { got, needed, .. }) => assert_eq!((got, needed), (0, 1)),
        Err(e) => panic!("expected UNAVAILABLE, got {e}"),
        Ok(_) => panic!("a put whose only copy never synced was acknowledged"),
    }
}

#[tokio::test]
async fn a_stalled_local_store_fails_the_put_within_the_request_timeout() {
    let gated = Arc::new(FaultyEngine::new());
    let engine = gated.clone();
    let (_net, nodes) = cluster_on(1, 1, 1, true, move |_| engine.clone());
    gated.gate_writes(true);
    gated.set_open(false);
    let node = nodes[0].clone();
    let put = tokio::spawn(async move {
        coordinator::write(&node, Bytes::from("k"), Some(Bytes::from("v")), b"", None).await
    });
    let result = tokio::time::timeout(std::time::Duration::from_secs(3), put)
        .await
        .expect("bounded by the request timeout (500 ms), not by the stalled store")
        .unwrap();
    gated.set_open(true);
    assert!(
        matches!(result, Err(RequestError::Unavailable { got: 0, .. })),
        "expected UNAVAILABLE with 0 acks, got {:?}",
        result.map(|w| w.acks)
    );
}

/// Waits (bounded) until `cond` holds; read repair runs in the background.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_get_repairs_only_a_stale_replica() {
    let (net, nodes) = cluster(3, 3, 2);
    let key = b"profile";
    let p = pref(&nodes, key);
    let k = || Bytes::from_static(key);
    coordinator::write(&nodes[p[0]], k(), Some(Bytes::from("v1")), &[], None)
        .await
        .unwrap();
    // Replication to the last replica finishes in the background.
    eventually("every replica holds v1", || {
        p.iter()
            .all(|&r| local_values(&nodes[r], key) == [Bytes::from("v1")])
    })
    .await;

    // Replicas that agree byte for byte: nothing to repair.
    let read = coordinator::read(&nodes[p[0]], k(), Some(3)).await.unwrap();
    assert_eq!(read.replies, 3);
    assert_eq!(read.set.values().cloned().collect::<Vec<_>>(), ["v1"]);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(nodes[p[0]].metrics.read_repairs.get(), 0);

    // The last replica misses v2 (its hint stays with the coordinator, undelivered).
    net.set_down(nodes[p[2]].id(), true);
    let ctx = nodes[p[0]].context_key.encode(read.set.context());
    coordinator::write(&nodes[p[0]], k(), Some(Bytes::from("v2")), &ctx, None)
        .await
        .unwrap();
    net.set_down(nodes[p[2]].id(), false);
    assert_eq!(local_values(&nodes[p[2]], key), [Bytes::from("v1")]);

    // A get sees the stale state, answers the newest, and repairs that replica only.
    let read = coordinator::read(&nodes[p[0]], k(), Some(3)).await.unwrap();
    assert_eq!(read.set.values().cloned().collect::<Vec<_>>(), ["v2"]);
    eventually("the stale replica is repaired", || {
        local_values(&nodes[p[2]], key) == [Bytes::from("v2")]
    })
    .await;
    assert_eq!(nodes[p[0]].metrics.read_repairs.get(), 1);
}

#[tokio::test]
async fn a_replica_with_a_corrupt_state_counts_as_not_answering() {
    use dynamo_node::storage::{keys::data_key, Batch, Cf};
    let (_net, nodes) = cluster(3, 3, 2);
    let key = b"ledger";
    let p = pref(&nodes, key);
    let k = || Bytes::from_static(key);
    coordinator::write(&nodes[p[0]], k(), Some(Bytes::from("v")), &[], None)
        .await
        .unwrap();
    let mut batch = Batch::default();
    let partition = nodes[0].map().partition_of(key);
    batch.put(Cf::Data, data_key(partition, key), vec![0xff, 1, 2, 3]);
    nodes[p[1]].store.engine().write(&batch, true).unwrap();
    nodes[p[1]].store.drop_cache();

    let err = coordinator::read(&nodes[p[0]], k(), Some(3))
        .await
        .err()
        .expect("only two of three replicas can answer");
    assert!(
        matches!(
            err,
            RequestError::Unavailable {
                got: 2,
                needed: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let read = coordinator::read(&nodes[p[0]], k(), Some(2)).await.unwrap();
    assert_eq!(read.set.values().cloned().collect::<Vec<_>>(), ["v"]);
}

#[tokio::test]
async fn puts_and_deletes_sent_to_a_non_replica_are_forwarded_intact() {
    use dynamo_node::service::kv::KvService;
    use dynamo_proto::v1::kv_server::Kv;
    use dynamo_proto::v1::{DeleteRequest, GetRequest, PutRequest};
    use tonic::Request;

    let (_net, nodes) = cluster(5, 3, 2);
    let key = b"forwarded";
    let p = pref(&nodes, key);
    let outsider = KvService::new(nodes[(0..5).find(|i| !p.contains(i)).unwrap()].clone());
    let replica = KvService::new(nodes[p[1]].clone());
    async fn get(svc: &KvService, key: &[u8]) -> dynamo_proto::v1::GetResponse {
        let req = Request::new(GetRequest {
            key: key.to_vec(),
            r: Some(2),
        });
        svc.get(req).await.unwrap().into_inner()
    }

    let put = PutRequest {
        key: key.to_vec(),
        value: b"v1".to_vec(),
        context: Vec::new(),
        w: Some(2),
    };
    let written = outsider.put(Request::new(put)).await.unwrap().into_inner();
    assert_eq!(written.acks, 2);
    let read = get(&replica, key).await;
    assert_eq!(read.siblings.len(), 1);
    assert_eq!(read.siblings[0].value, b"v1");

    let put = PutRequest {
        key: key.to_vec(),
        value: b"v2".to_vec(),
        context: written.context,
        w: None,
    };
    let written = outsider.put(Request::new(put)).await.unwrap().into_inner();
    let read = get(&replica, key).await;
    assert_eq!(read.siblings.len(), 1, "the context superseded v1");
    assert_eq!(read.siblings[0].value, b"v2");

    let delete = DeleteRequest {
        key: key.to_vec(),
        context: written.context,
        w: None,
    };
    outsider.delete(Request::new(delete)).await.unwrap();
    let read = get(&outsider, key).await;
    assert!(
        read.siblings.iter().all(|s| s.tombstone),
        "{:?}",
        read.siblings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_blind_puts_through_one_coordinator_all_survive() {
    // The coordinator makes each new version itself: concurrent puts of one key on one
    // node must still get distinct dots, or one would silently cover another.
    let (_net, nodes) = cluster(3, 3, 2);
    let key = b"counter";
    let coordinator = nodes[pref(&nodes, key)[0]].clone();
    let puts: Vec<_> = (0..40)
        .map(|i| {
            let node = coordinator.clone();
            tokio::spawn(async move {
                let value = Bytes::from(format!("v{i}"));
                coordinator::write(&node, Bytes::from_static(key), Some(value), b"", None).await
            })
        })
        .collect();
    for p in puts {
        p.await.unwrap().expect("put acknowledged");
    }
    let read = coordinator::read(&coordinator, Bytes::from_static(key), Some(3))
        .await
        .unwrap();
    let mut values: Vec<_> = read.set.values().cloned().collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 40, "every blind put is a sibling: {values:?}");
    for node in &nodes {
        eventually("every replica holds all 40", || {
            local_values(node, key).len() == 40
        })
        .await;
    }
}

#[tokio::test]
async fn a_write_no_replica_can_take_is_coordinated_by_a_fallback_and_handed_off() {
    use dynamo_node::service::kv::KvService;
    use dynamo_proto::v1::kv_server::Kv;
    use dynamo_proto::v1::{GetRequest, PutRequest};
    use tonic::Request;

    let (net, nodes) = cluster(5, 3, 2);
    let key = b"always-writable";
    let p = pref(&nodes, key);
    for &r in &p {
        net.set_down(nodes[r].id(), true);
    }
    let outsider = (0..5).find(|i| !p.contains(i)).unwrap();
    let svc = KvService::new(nodes[outsider].clone());
    let put = |value: &str| {
        Request::new(PutRequest {
            key: key.to_vec(),
            value: value.as_bytes().to_vec(),
            context: Vec::new(),
            w: None,
        })
    };
    // No replica is reachable: the node the client reached coordinates, and the two
    // fallbacks (itself one of them) hold the version as hints.
    let a = svc.put(put("a")).await.expect("a fallback coordinates");
    assert_eq!(a.into_inner().acks, 2);
    // A second blind put through the same fallback: it must get a new dot, or the
    // replicas would take it for the first one and drop it.
    let b = svc.put(put("b")).await.expect("a fallback coordinates");
    assert_eq!(b.into_inner().acks, 2);
    assert_eq!(nodes[outsider].metrics.fallback_writes.get(), 2);
    // A get still needs R replicas.
    let get = svc
        .get(Request::new(GetRequest {
            key: key.to_vec(),
            r: None,
        }))
        .await;
    assert_eq!(get.unwrap_err().code(), tonic::Code::Unavailable);

    for &r in &p {
        net.set_down(nodes[r].id(), false);
    }
    let all_there = || {
        p.iter()
            .all(|&r| local_values(&nodes[r], key) == [Bytes::from("a"), Bytes::from("b")])
    };
    for _ in 0..40 {
        for n in &nodes {
            handoff::round(n).await;
        }
        if all_there() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for &r in &p {
        assert_eq!(
            local_values(&nodes[r], key),
            [Bytes::from("a"), Bytes::from("b")],
            "replica {r}: both puts, as siblings"
        );
    }
}

#[tokio::test]
async fn a_forwarded_write_whose_coordinator_cannot_reach_its_replicas_fails_without_marking_it_down(
) {
    use dynamo_node::service::kv::KvService;
    use dynamo_proto::v1::kv_server::Kv;
    use dynamo_proto::v1::PutRequest;
    use tonic::Request;

    let (net, nodes) = cluster(5, 3, 2);
    let key = b"far";
    let p = pref(&nodes, key);
    let entry = (0..5).find(|i| !p.contains(i)).unwrap();
    let coordinator = p[0];
    // The first replica is cut off from every node but the one the client reached: it
    // coordinates the forwarded put, and with W=3 it waits out the request timeout for
    // acknowledgements that cannot come.
    let others: Vec<&str> = (0..5)
        .filter(|&i| i != entry && i != coordinator)
        .map(|i| nodes[i].id())
        .collect();
    net.partition(&[&[nodes[coordinator].id(), nodes[entry].id()], &others]);
    // The forwarded request reaches its coordinator a little after it was sent, so the
    // coordinator's deadline falls after the forwarder's request timeout.
    net.set_latency(std::time::Duration::from_millis(20));
    let svc = KvService::new(nodes[entry].clone());
    let put = PutRequest {
        key: key.to_vec(),
        value: b"v".to_vec(),
        context: Vec::new(),
        w: Some(3),
    };
    let err = svc.put(Request::new(put)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("of 3 required replicas answered"),
        "the coordinator's own answer, not a forwarding timeout: {}",
        err.message()
    );
    assert!(
        nodes[entry].health.is_up(nodes[coordinator].id()),
        "a coordinator that answered is not believed down"
    );
}
