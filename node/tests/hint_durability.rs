//! A hint is deleted only when its target can no longer lose it: with the default
//! `periodic` fsync policy a node acknowledges replica writes before its WAL is synced,
//! so a delivered hint must be synced on its target before the target acknowledges it
//! (the holder deletes the hint then). Here a write lives only as hints (every replica
//! was unreachable when it was made), the hints are delivered, and all three replicas
//! lose their power at once right after: the write must still be read back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{members, start_node, Spec};
use dynamo_node::handoff;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{GetRequest, PutRequest};
use tonic::Request;

fn hints_pending(nodes: &[Arc<Node>]) -> u64 {
    nodes
        .iter()
        .flat_map(|n| n.store.hint_summary().unwrap())
        .map(|(_, n, _)| n)
        .sum()
}

#[tokio::test]
async fn a_write_that_lived_only_as_hints_survives_a_power_cut_of_its_replicas_after_delivery() {
    let run = async {
        let members = members(5);
        let net = LoopbackNet::new();
        // Writes not synced before they are acknowledged, as with `periodic` (and no
        // periodic sync runs here: whatever is not synced is lost on a power cut).
        let spec = Spec::default();
        let disks: Vec<Arc<MemoryEngine>> = (0..5).map(|_| Arc::new(MemoryEngine::new())).collect();
        let mut nodes: Vec<Arc<Node>> = (0..5)
            .map(|i| start_node(&net, &members, i, disks[i].clone(), &spec))
            .collect();
        let key = b"only-hints";
        let map = nodes[0].map();
        let replicas: Vec<usize> = map
            .preference_list(map.partition_of(key))
            .map(|m| members.iter().position(|x| x.id == m.id).unwrap())
            .collect();
        for &r in &replicas {
            net.set_down(nodes[r].id(), true);
        }
        let outsider = (0..5).find(|i| !replicas.contains(i)).unwrap();
        let put = PutRequest {
            key: key.to_vec(),
            value: b"kept".to_vec(),
            context: vec![],
            w: None,
        };
        KvService::new(nodes[outsider].clone())
            .put(Request::new(put))
            .await
            .expect("the fallbacks acknowledge it as hints");
        assert!(hints_pending(&nodes) > 0);

        for &r in &replicas {
            net.set_down(nodes[r].id(), false);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while hints_pending(&nodes) > 0 {
            assert!(Instant::now() < deadline, "hints not delivered in 30 s");
            for n in &nodes {
                handoff::round(n).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Every replica loses its power at once, right after the delivery, and starts
        // again on what its disk kept.
        for &r in &replicas {
            disks[r].crash();
        }
        for &r in &replicas {
            nodes[r] = start_node(&net, &members, r, disks[r].clone(), &spec);
        }
        let get = GetRequest {
            key: key.to_vec(),
            r: Some(3),
        };
        let read = KvService::new(nodes[replicas[0]].clone())
            .get(Request::new(get))
            .await
            .unwrap()
            .into_inner();
        let values: Vec<&[u8]> = read.siblings.iter().map(|s| &s.value[..]).collect();
        assert_eq!(
            values,
            [b"kept"],
            "the write lived only in the delivered hints"
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("test timed out");
}
