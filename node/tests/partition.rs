//! Both sides of a network partition keep taking writes, and the writes merge when it
//! heals (Dynamo's "always writable").
//!
//! Five in-process nodes on the loopback transport are split two | three; calls across
//! the cut get no answer until their timeout, as on a network that drops packets. The
//! nodes gossip (every 100 ms here), so each side soon suspects the other and stops
//! waiting on it. Clients
//! on each side, each reaching only its side's nodes, keep a set per key through siblings
//! (read-modify-write, or a blind put when a read cannot find R replicas on its side).
//! Every key must be written on both sides during the partition, a key whose replicas
//! are all on the majority side included. After it heals and the
//! hints drain, every acknowledged element of both sides is read back from the replicas,
//! and a put with the merged context leaves a single version.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_dots_unique, elements, members, merge, start_node, with_element, Chain, Outcome, Sets,
    Spec,
};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::{gossip, handoff};
use dynamo_proto::v1::kv_server::Kv;
use dynamo_proto::v1::{GetRequest, PutRequest};
use tonic::Request;

const NODES: usize = 5;
const KEYS: usize = 4;
const SPLIT: Duration = Duration::from_secs(3);

/// Adds elements named `<name>.<n>` to the keys in turn through `kvs` until `stop`; with
/// `chained`, never reading, on the contexts its own puts returned.
async fn client(
    name: String,
    kvs: Vec<Arc<KvService>>,
    stop: Arc<AtomicBool>,
    chained: bool,
) -> Outcome {
    let mut out = Outcome::default();
    let mut chain = chained.then(Chain::default);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("set-{}", n % KEYS);
        let kv = &kvs[n % kvs.len()];
        let element = format!("{name}.{n}");
        let get = GetRequest {
            key: key.clone().into_bytes(),
            r: None,
        };
        // Without R replicas on this side, a blind put: it becomes a sibling.
        let (value, context) = match &mut chain {
            Some(chain) => chain.next(&key, &element),
            None => match kv.get(Request::new(get)).await {
                Ok(read) => with_element(read.into_inner(), &element),
                Err(_) => (element.clone(), Vec::new()),
            },
        };
        let returned = out.put(kv, key.clone(), element, value, context).await;
        if let (Some(chain), Some(returned)) = (&mut chain, returned) {
            chain.returned(&key, returned);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_partition_take_writes_that_merge_when_it_heals() {
    let run = async {
        let members = members(NODES);
        let net = LoopbackNet::new();
        let spec = Spec {
            request_timeout_ms: 300,
            gossip_interval_ms: 100,
            ..Spec::default()
        };
        let nodes: Vec<Arc<Node>> = (0..NODES)
            .map(|i| {
                let node = start_node(&net, &members, i, Arc::new(MemoryEngine::new()), &spec);
                tokio::spawn(handoff::run(node.clone()));
                tokio::spawn(gossip::run(node.clone()));
                node
            })
            .collect();
        let kvs: Vec<Arc<KvService>> = nodes
            .iter()
            .map(|n| Arc::new(KvService::new(n.clone())))
            .collect();

        // The case that needs a fallback coordinator: a key whose replicas are all on the
        // far side of the minority's cut.
        let map = nodes[0].map();
        let far = (0..KEYS).find(|k| {
            let key = format!("set-{k}");
            map.preference_list(map.partition_of(key.as_bytes()))
                .all(|m| !["n1", "n2"].contains(&m.id.as_str()))
        });
        assert!(
            far.is_some(),
            "no key has all its replicas on the majority side"
        );

        net.partition(&[&["n1", "n2"], &["n3", "n4", "n5"]]);
        let stop = Arc::new(AtomicBool::new(false));
        let sides = [("minority", 0..2), ("majority", 2..5)];
        let mut clients = Vec::new();
        for (side, range) in sides.clone() {
            for c in 0..3 {
                let kvs = kvs[range.clone()].to_vec();
                let name = format!("{side}{c}");
                let chained = c == 2;
                let client = client(name, kvs, stop.clone(), chained);
                clients.push((side, tokio::spawn(client)));
            }
        }
        tokio::time::sleep(SPLIT).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Outcome::default();
        let mut acked_by_side: BTreeMap<&str, Sets> = BTreeMap::new();
        for (side, c) in clients {
            let out = c.await.unwrap();
            merge(acked_by_side.entry(side).or_default(), out.acked.clone());
            all.absorb(out);
        }
        for (side, by_key) in &acked_by_side {
            let counts: Vec<usize> = (0..KEYS)
                .map(|k| by_key.get(&format!("set-{k}")).map_or(0, BTreeSet::len))
                .collect();
            eprintln!("{side}: puts acknowledged per key {counts:?}");
            assert!(
                counts.iter().all(|&n| n > 0),
                "the {side} side could not write every key: {counts:?}"
            );
        }

        net.heal();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending: u64 = nodes
                .iter()
                .flat_map(|n| n.store.hint_summary().unwrap())
                .map(|(_, n, _)| n)
                .sum();
            if pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} hints still pending 30 s after the partition healed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let keys: Vec<String> = (0..KEYS).map(|k| format!("set-{k}")).collect();
        assert_dots_unique(&nodes, &keys);
        for k in 0..KEYS {
            let key = format!("set-{k}");
            let get = |r| GetRequest {
                key: key.clone().into_bytes(),
                r,
            };
            let read = kvs[0]
                .get(Request::new(get(Some(3))))
                .await
                .unwrap_or_else(|s| panic!("get {key} from all replicas: {s:?}"))
                .into_inner();
            let stored = elements(&read);
            all.check(&key, &stored);

            // The application merges the siblings: one version is left.
            let merged = PutRequest {
                key: key.clone().into_bytes(),
                value: stored
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes(),
                context: read.context,
                w: Some(3),
            };
            kvs[4].put(Request::new(merged)).await.expect("merge put");
            let after = kvs[2]
                .get(Request::new(get(Some(3))))
                .await
                .expect("get after merge")
                .into_inner();
            assert_eq!(after.siblings.len(), 1, "{key}: siblings left after merge");
        }
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("test timed out");
}
