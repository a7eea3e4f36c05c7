//! Tombstone purging and the clean-up of fallback copies, on in-process clusters: a
//! deleted key is purged only once every replica holds its tombstone and nobody holds an
//! older version, and it never comes back, whether a replica was down or wiped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{members, put_w as put, start_node, Spec};
use dynamo_node::antientropy::purge::{pass, Candidates, PurgeReport};
use dynamo_node::antientropy::{self, Peers};
use dynamo_node::handoff;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{DeleteRequest, GetRequest, PutRequest};
use tonic::Request;

async fn delete(node: &Arc<Node>, key: &str, context: Vec<u8>) {
    let req = DeleteRequest {
        key: key.into(),
        context,
        w: Some(2),
    };
    KvService::new(node.clone())
        .delete(Request::new(req))
        .await
        .unwrap_or_else(|s| panic!("delete {key}: {s:?}"));
}

/// Live values of `key` read from every replica (R=3).
async fn values(node: &Arc<Node>, key: &str) -> Vec<String> {
    let req = GetRequest {
        key: key.into(),
        r: Some(3),
    };
    let read = KvService::new(node.clone())
        .get(Request::new(req))
        .await
        .unwrap()
        .into_inner();
    common::values(&read)
}

/// One purge pass on every node, with no grace, twice (a key is noted, then purged).
async fn purge_everywhere(nodes: &[Arc<Node>], c: &mut [Candidates]) -> PurgeReport {
    let mut total = PurgeReport::default();
    for _ in 0..2 {
        for (n, cands) in nodes.iter().zip(c.iter_mut()) {
            let r = pass(n, Duration::ZERO, cands).await;
            total.purged += r.purged;
            total.cleaned += r.cleaned;
            total.errors.extend(r.errors);
        }
    }
    total
}

fn held(nodes: &[Arc<Node>], key: &str) -> usize {
    nodes
        .iter()
        .filter(|n| n.store.read_raw(key.as_bytes()).unwrap().is_some())
        .count()
}

/// Brings `id` back. No gossip runs here: peers are presumed up, and only the network
/// says otherwise.
fn back(net: &LoopbackNet, id: &str) {
    net.set_down(id, false);
}

/// Deletes `k` while node 3 is down (`wipe`: and then loses its disk), and checks the
/// tombstone is purged only once node 3 holds it too, and that `v1` never returns.
async fn deleted_key_stays_deleted(wipe: bool) {
    let net = LoopbackNet::new();
    let m = members(3);
    let mut nodes: Vec<Arc<Node>> = (0..3)
        .map(|i| start_node(&net, &m, i, Arc::new(MemoryEngine::new()), &Spec::default()))
        .collect();
    let mut cands: Vec<Candidates> = (0..3).map(|_| Candidates::default()).collect();
    let ctx = put(&nodes[0], "k", "v1", 3).await;
    net.set_down("n3", true);
    delete(&nodes[0], "k", ctx).await;

    // Node 3 is down: it may hold anything, so nothing is purged.
    let r = purge_everywhere(&nodes, &mut cands).await;
    assert_eq!(r.purged, 0, "{r:?}");
    assert!(!r.errors.is_empty(), "the pass says who did not vouch");
    if wipe {
        nodes[2] = start_node(&net, &m, 2, Arc::new(MemoryEngine::new()), &Spec::default());
    }
    back(&net, "n3");
    // Back, but without the tombstone (it holds v1, or nothing): still no purge.
    let r = purge_everywhere(&nodes, &mut cands).await;
    assert_eq!(r.purged, 0, "node 3 lacks the tombstone: {r:?}");
    assert_eq!(held(&nodes, "k"), if wipe { 2 } else { 3 });

    // Anti-entropy brings node 3 the tombstone; the coordinator's hint for node 3 is
    // delivered too. Then every member vouches, and the key goes everywhere.
    let ae = antientropy::sweep(&nodes[0], None, Peers::All).await;
    assert!(ae.errors.is_empty(), "{ae:?}");
    handoff::round(&nodes[0]).await;
    let r = purge_everywhere(&nodes, &mut cands).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.purged, 1, "{r:?}");
    assert_eq!(held(&nodes, "k"), 0, "purged on every replica");

    // Nothing brings v1 back: repair everywhere, then read every replica.
    for n in &nodes {
        let ae = antientropy::sweep(n, None, Peers::All).await;
        assert_eq!(ae.differing, 0, "{ae:?}");
    }
    assert!(values(&nodes[1], "k").await.is_empty());
    assert_eq!(held(&nodes, "k"), 0);
    // And the key can be written again.
    put(&nodes[2], "k", "v2", 3).await;
    assert_eq!(values(&nodes[0], "k").await, ["v2"]);
}

#[tokio::test]
async fn a_key_deleted_while_a_replica_was_down_is_purged_only_once_it_holds_the_tombstone() {
    deleted_key_stays_deleted(false).await;
}

#[tokio::test]
async fn a_key_deleted_while_a_replica_was_wiped_is_purged_only_once_it_holds_the_tombstone() {
    deleted_key_stays_deleted(true).await;
}

#[tokio::test]
async fn a_fallback_drops_its_copy_once_the_replicas_hold_it() {
    let net = LoopbackNet::new();
    let m = members(4);
    let nodes: Vec<Arc<Node>> = (0..4)
        .map(|i| start_node(&net, &m, i, Arc::new(MemoryEngine::new()), &Spec::default()))
        .collect();
    let mut cands: Vec<Candidates> = (0..4).map(|_| Candidates::default()).collect();
    // A key the fourth node does not replicate.
    let p_of = |k: &str| nodes[0].map().partition_of(k.as_bytes());
    let key = (0..)
        .map(|i| format!("fb-{i}"))
        .find(|k| !nodes[3].map().is_replica(p_of(k), "n4"))
        .unwrap();
    let replicas: Vec<String> = nodes[0]
        .map()
        .preference_list(p_of(&key))
        .map(|mb| mb.id.clone())
        .collect();
    for r in &replicas {
        net.set_down(r, true);
    }
    // Every replica down: node 4 coordinates as a fallback and keeps a copy and hints.
    let req = PutRequest {
        key: key.clone().into_bytes(),
        value: b"v".to_vec(),
        context: Vec::new(),
        w: Some(1),
    };
    let _ = KvService::new(nodes[3].clone())
        .put(Request::new(req))
        .await;
    assert!(nodes[3].store.read_raw(key.as_bytes()).unwrap().is_some());
    // The put returned at its one acknowledgement; the hints for the replicas may still
    // be on their way to the store.
    let hinted = || -> usize {
        let summary = nodes[3].store.hint_summary().unwrap();
        summary.iter().map(|(_, n, _)| *n as usize).sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hinted() < replicas.len() {
        assert!(std::time::Instant::now() < deadline, "hints never stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in &replicas {
        back(&net, r);
    }
    // Its hints are not delivered yet: the copy stays.
    let r = purge_everywhere(&nodes, &mut cands).await;
    assert_eq!(r.cleaned, 0, "{r:?}");
    assert!(nodes[3].store.read_raw(key.as_bytes()).unwrap().is_some());
    handoff::round(&nodes[3]).await;
    let r = purge_everywhere(&nodes, &mut cands).await;
    assert_eq!(r.cleaned, 1, "{r:?}");
    assert!(nodes[3].store.read_raw(key.as_bytes()).unwrap().is_none());
    assert_eq!(values(&nodes[0], &key).await, ["v"], "the replicas kept it");
}

/// A replica that received a tombstone moments before a purge pass (by anti-entropy:
/// writes are synced only every so often) vouches for it; had it not synced it first, a
/// power cut right after the purge would bring its older version back, and anti-entropy
/// would give that version back to every replica.
#[tokio::test]
async fn a_tombstone_a_replica_vouched_for_survives_its_power_cut() {
    let run = async {
        let net = LoopbackNet::new();
        let m = members(3);
        // Writes are not synced before they are acknowledged, as with `periodic` (and no
        // periodic sync runs: whatever is not synced is lost on a power cut).
        let disks: Vec<Arc<MemoryEngine>> = (0..3).map(|_| Arc::new(MemoryEngine::new())).collect();
        let start = |i: usize| start_node(&net, &m, i, disks[i].clone(), &Spec::default());
        let mut nodes: Vec<Arc<Node>> = (0..3).map(start).collect();
        let mut cands: Vec<Candidates> = (0..3).map(|_| Candidates::default()).collect();
        let ctx = put(&nodes[0], "k", "v1", 3).await;
        for n in &nodes {
            n.store.sync().await.unwrap();
        }
        // Deleted while node 3 is down; node 2's tombstone is synced, and node 1, the
        // coordinator, loses its power before it synced its tombstone and its hint for
        // node 3. Node 3 still holds v1, durably.
        net.set_down("n3", true);
        delete(&nodes[0], "k", ctx).await;
        nodes[1].store.sync().await.unwrap();
        disks[0].crash();
        nodes[0] = start(0);
        back(&net, "n3");

        // Anti-entropy brings nodes 1 and 3 the tombstone (not synced); every member
        // then vouches for it, and it is purged everywhere.
        for n in &nodes {
            let ae = antientropy::sweep(n, None, Peers::All).await;
            assert!(ae.errors.is_empty(), "{ae:?}");
        }
        assert!(
            nodes.iter().all(|n| !n
                .store
                .holds_hint(b"k", ["n1", "n2", "n3"].into_iter())
                .unwrap()),
            "no hint left to deliver"
        );
        let r = purge_everywhere(&nodes, &mut cands).await;
        assert!(r.errors.is_empty(), "{r:?}");
        assert_eq!(r.purged, 1, "{r:?}");
        assert_eq!(held(&nodes, "k"), 0, "purged on every replica");

        // Node 3 loses its power right after the purge.
        disks[2].crash();
        nodes[2] = start(2);
        for n in &nodes {
            let ae = antientropy::sweep(n, None, Peers::All).await;
            assert!(ae.errors.is_empty(), "{ae:?}");
        }
        assert_eq!(
            values(&nodes[1], "k").await,
            Vec::<String>::new(),
            "the deleted v1 came back"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("test timed out");
}
