//! Merkle anti-entropy between in-process replicas: a wiped replica recovers every key
//! with no read touching it, replicas that each missed writes end up both holding all of
//! them, and identical replicas cost one root each.

mod common;

use std::sync::Arc;

use common::{members, put_w as put, start_node, Spec, Q};
use dynamo_node::antientropy::{self, Peers};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::storage::memory::MemoryEngine;

fn cluster(net: &Arc<LoopbackNet>) -> Vec<Arc<Node>> {
    let m = members(3);
    (0..3)
        .map(|i| start_node(net, &m, i, Arc::new(MemoryEngine::new()), &Spec::default()))
        .collect()
}

/// Every key `a` and `b` store, with the same stored bytes, and equal Merkle roots.
fn assert_same(a: &Node, b: &Node, keys: &[String]) {
    for k in keys {
        assert_eq!(
            a.store.read_raw(k.as_bytes()).unwrap(),
            b.store.read_raw(k.as_bytes()).unwrap(),
            "{k} differs between {} and {}",
            a.id(),
            b.id()
        );
    }
    for p in 0..Q {
        assert_eq!(
            a.store.trees().root(p),
            b.store.trees().root(p),
            "partition {p}"
        );
    }
}

#[tokio::test]
async fn a_wiped_replica_recovers_every_key_through_anti_entropy_alone() {
    let net = LoopbackNet::new();
    let nodes = cluster(&net);
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&nodes[i % 3], k, &format!("v{i}"), 3).await;
    }
    assert_same(&nodes[0], &nodes[2], &keys);

    // Node 3 loses its disk and comes back empty. Nobody reads anything.
    let m = members(3);
    let wiped = start_node(&net, &m, 2, Arc::new(MemoryEngine::new()), &Spec::default());
    assert!(wiped.store.read_raw(keys[0].as_bytes()).unwrap().is_none());
    let report = antientropy::sweep(&wiped, None, Peers::Next).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.compared, u64::from(Q), "one peer per partition");
    assert_eq!(report.pulled, keys.len() as u64, "{report:?}");
    assert_eq!(report.pushed, 0, "{report:?}");
    assert_same(&nodes[0], &wiped, &keys);
    assert_same(&nodes[1], &wiped, &keys);

    // Now identical: one root per partition and nothing else.
    let again = antientropy::sweep(&wiped, None, Peers::All).await;
    assert_eq!((again.compared, again.differing), (2 * u64::from(Q), 0));
    assert_eq!((again.pulled, again.pushed, again.leaves), (0, 0, 0));
    assert!(again.bytes <= 2 * (16 + 12 * u64::from(Q)), "{again:?}");
}

/// A wiped replica holding a few hundred keys per partition: each differing partition
/// is fetched whole, in transfer chunks, instead of a key at a time.
#[tokio::test]
async fn a_wiped_replica_with_many_keys_streams_whole_partitions() {
    let net = LoopbackNet::new();
    let nodes = cluster(&net);
    let keys: Vec<String> = (0..4000).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&nodes[i % 3], k, &format!("v{i}"), 3).await;
    }
    let m = members(3);
    let wiped = start_node(&net, &m, 2, Arc::new(MemoryEngine::new()), &Spec::default());
    let report = antientropy::sweep(&wiped, None, Peers::Next).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.streamed, u64::from(Q), "{report:?}");
    assert_eq!(report.pulled, keys.len() as u64, "{report:?}");
    assert_same(&nodes[0], &wiped, &keys);
    assert_same(&nodes[1], &wiped, &keys);
}

#[tokio::test]
async fn replicas_that_each_missed_writes_both_end_with_all_of_them() {
    let net = LoopbackNet::new();
    let nodes = cluster(&net);
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    // n2 misses the first half, n3 the second (hints stay with the coordinators, whose
    // handoff does not run here).
    // No gossip runs here: peers are presumed up, and only the network says otherwise.
    let back = |id: &str| net.set_down(id, false);
    for (half, missing) in [(0..100, "n2"), (100..200, "n3")] {
        net.set_down(missing, true);
        for i in half {
            put(&nodes[0], &keys[i], &format!("v{i}"), 2).await;
        }
        back(missing);
    }
    // A concurrent version of one key on n2 alone, which n1 and n3 lack.
    net.set_down("n1", true);
    net.set_down("n3", true);
    put(&nodes[1], "k150", "on-n2", 1).await;
    back("n1");
    back("n3");

    let report = antientropy::sweep(&nodes[1], None, Peers::Next).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.differing > 0 && report.pulled > 0 && report.pushed > 0,
        "{report:?}"
    );
    assert_eq!(
        report.streamed, 0,
        "a few keys per partition are read one by one"
    );
    // Each of n2's partitions went to one peer (the next after n2); a round on every
    // node links every pair.
    for n in [&nodes[2], &nodes[0]] {
        let r = antientropy::sweep(n, None, Peers::Next).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let stragglers = antientropy::sweep(&nodes[1], None, Peers::All).await;
    assert_eq!(
        stragglers.differing, 0,
        "converged after one round: {stragglers:?}"
    );
    assert_same(&nodes[0], &nodes[1], &keys);
    assert_same(&nodes[0], &nodes[2], &keys);
    let k150 = nodes[2].store.read(b"k150").unwrap();
    assert_eq!(k150.values().count(), 2, "both versions of k150 everywhere");
}
