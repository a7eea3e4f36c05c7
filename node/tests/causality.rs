//! Causal correctness of the request path, the ways clients really call it: contexts
//! returned by puts chained without a read, several clients through one coordinator, a
//! poisoned store, forged and hostile contexts (issue 15).

mod common;

use std::sync::Arc;

use common::{assert_dots_unique, elements, members, start_node, values, Spec};
use dynamo_core::limits::MAX_COUNTER;
use dynamo_core::{Actor, CausalContext, Dot, VersionVector};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::faulty::FaultyEngine;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::storage::Engine;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{GetRequest, GetResponse, PutRequest};
use tonic::{Code, Request};

/// Three nodes (N=3, W=2); node `i` stores on `engine(i)`.
fn cluster(engine: impl Fn(usize) -> Arc<dyn Engine>) -> Vec<Arc<Node>> {
    let members = members(3);
    let net = LoopbackNet::new();
    (0..3)
        .map(|i| start_node(&net, &members, i, engine(i), &Spec::default()))
        .collect()
}

async fn put(
    node: &Arc<Node>,
    key: &str,
    value: &str,
    context: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let req = PutRequest {
        key: key.into(),
        value: value.into(),
        context,
        w: None,
    };
    let kv = KvService::new(node.clone());
    Ok(kv.put(Request::new(req)).await?.into_inner().context)
}

async fn get_all(node: &Arc<Node>, key: &str) -> GetResponse {
    let req = GetRequest {
        key: key.into(),
        r: Some(3),
    };
    let kv = KvService::new(node.clone());
    kv.get(Request::new(req)).await.unwrap().into_inner()
}

/// The tour of issue 15, all through one node: client 1 writes blind, client 2 writes
/// blind and then updates its own write with the context its put returned. Client 2
/// never saw "b", so "b" must survive on every replica.
#[tokio::test]
async fn a_put_on_a_returned_context_keeps_a_write_its_client_never_saw() {
    let nodes = cluster(|_| Arc::new(MemoryEngine::new()));
    let coordinator = &nodes[0];
    put(coordinator, "k", "b", vec![]).await.unwrap();
    let c = put(coordinator, "k", "a", vec![]).await.unwrap();
    let c = put(coordinator, "k", "a2", c).await.unwrap();
    assert_eq!(values(&get_all(coordinator, "k").await), ["a2", "b"]);
    // Chaining on, without reading, still never supersedes "b"; and the context stays
    // small however long the chain.
    let mut c = c;
    for i in 0..200 {
        c = put(coordinator, "k", &format!("a{i:03}"), c).await.unwrap();
    }
    assert!(c.len() < 128, "a chained context grew to {} bytes", c.len());
    let read = get_all(coordinator, "k").await;
    assert_eq!(values(&read), ["a199", "b"]);
    // A get's context covers what it read: merging resolves both.
    put(coordinator, "k", "merged", read.context).await.unwrap();
    assert_eq!(values(&get_all(coordinator, "k").await), ["merged"]);
    assert_dots_unique(&nodes, &["k".into()]);
}

/// Several clients chain puts on their own returned contexts through one coordinator,
/// concurrently: every client's latest write survives, as a sibling of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chains_through_one_coordinator_keep_each_others_writes() {
    let nodes = cluster(|_| Arc::new(MemoryEngine::new()));
    let chains: Vec<_> = (0..4)
        .map(|client| {
            let node = nodes[1].clone();
            tokio::spawn(async move {
                let mut c = vec![];
                for i in 0..25 {
                    c = put(&node, "cart", &format!("c{client}-{i}"), c)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for c in chains {
        c.await.unwrap();
    }
    let read = get_all(&nodes[1], "cart").await;
    assert_eq!(values(&read), ["c0-24", "c1-24", "c2-24", "c3-24"]);
    assert_dots_unique(&nodes, &["cart".into()]);
}

/// A write that fails on the coordinator's disk poisons its store: the next put of the
/// same key through it is refused, so the dot of the failed write is never made again
/// with other bytes (which the other replicas' joins would silently drop).
#[tokio::test]
async fn after_a_failed_local_write_the_coordinator_makes_no_more_dots() {
    let faulty = Arc::new(FaultyEngine::new());
    let nodes = cluster(|i| {
        if i == 0 {
            faulty.clone()
        } else {
            Arc::new(MemoryEngine::new())
        }
    });
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| {
            let map = nodes[0].map();
            let owner = map.owner(map.partition_of(k.as_bytes()));
            owner.id == nodes[0].id()
        })
        .unwrap();
    faulty.fail_writes(true);
    // Acknowledged by the two other replicas, though the local write failed.
    let first = put(&nodes[0], &key, "first", vec![]).await;
    // The put may be acknowledged by the other two before the local write fails.
    let poisoned_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !nodes[0].store.is_poisoned() {
        assert!(
            std::time::Instant::now() < poisoned_by,
            "the failed write poisons the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    faulty.fail_writes(false);
    let second = put(&nodes[0], &key, "second", vec![]).await;
    let err = second.expect_err("a poisoned coordinator must refuse the next put");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("refuses writes"), "{err:?}");
    if first.is_ok() {
        assert_eq!(values(&get_all(&nodes[1], &key).await), ["first"]);
    }
    assert_dots_unique(&nodes, &[key]);
}

/// A context signed by this cluster but naming `counter` for `actor`.
fn signed(node: &Node, actor: Actor, counter: u64) -> Vec<u8> {
    node.context_key.encode(&CausalContext::from_parts(
        VersionVector::new(),
        [Dot { actor, counter }],
    ))
}

#[tokio::test]
async fn forged_and_hostile_contexts_are_refused_and_break_nothing() {
    let nodes = cluster(|_| Arc::new(MemoryEngine::new()));
    let node = &nodes[0];
    let c = put(node, "k", "kept", vec![]).await.unwrap();
    let refused = |r: Result<Vec<u8>, tonic::Status>, why: &str| {
        let err = r.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(why), "{why}: {err:?}");
    };
    // Edited: any changed byte breaks the MAC.
    let mut edited = c.clone();
    edited[12] ^= 1;
    refused(put(node, "k", "x", edited).await, "MAC");
    // Signed by another cluster's secret under this cluster's id.
    let stranger =
        dynamo_core::context::ContextKey::new(&node.cfg.cluster_id, b"not our secret, 16+");
    let forged = stranger.encode(&CausalContext::from_parts(
        VersionVector::new(),
        [Dot {
            actor: node.actor.clone(),
            counter: 1,
        }],
    ));
    refused(put(node, "k", "x", forged).await, "MAC");
    // Validly signed, yet claiming writes the coordinator never made.
    let coordinator = (0..3)
        .map(|i| &nodes[i])
        .find(|n| n.map().is_replica(n.map().partition_of(b"k"), n.id()))
        .unwrap();
    // (The key's actor there: the coordinator at the key's epoch.)
    let actor = coordinator.store.read(b"k").unwrap().siblings()[0]
        .dot
        .actor
        .clone();
    assert!(actor.same_incarnation(&coordinator.actor), "{actor}");
    let ahead = signed(coordinator, actor.clone(), 1000);
    refused(put(coordinator, "k", "x", ahead).await, "implausible");
    // Or writes of an epoch the coordinator has not minted yet.
    let unminted = coordinator.actor.at_epoch(coordinator.epochs.next());
    refused(
        put(coordinator, "k", "x", signed(coordinator, unminted, 1)).await,
        "has not begun",
    );
    // Counters near the end of u64 for any actor, which would exhaust the counter.
    let huge = signed(node, Actor::new("n9", 1), MAX_COUNTER + 1);
    refused(put(node, "k", "x", huge).await, "implausible");
    let huge = signed(node, Actor::new("n9", 1), u64::MAX);
    refused(put(node, "k", "x", huge).await, "implausible");
    // Nothing stored was touched, and the key still takes writes.
    assert_eq!(values(&get_all(node, "k").await), ["kept"]);
    put(node, "k", "next", c).await.unwrap();
    let read = get_all(node, "k").await;
    assert_eq!(elements(&read).into_iter().collect::<Vec<_>>(), ["next"]);
}
