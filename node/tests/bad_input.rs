//! Bad input on the client and the replica path gets a clear error and changes nothing
//! stored: an oversized sibling set, and replica entries that a client could not send
//! (issue 15: the replica path validates like the client path).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{members, start_node, Spec};
use dynamo_core::codec::{encode_set, encode_vv, put_varint, FORMAT_VV};
use dynamo_core::limits::MAX_COUNTER;
use dynamo_core::{Actor, CausalContext, SiblingSet, VersionVector};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::network::WriteEntry;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::PutRequest;
use tonic::{Code, Request};

fn cluster(spec: &Spec) -> Vec<Arc<Node>> {
    let members = members(3);
    let net = LoopbackNet::new();
    (0..3)
        .map(|i| start_node(&net, &members, i, Arc::new(MemoryEngine::new()), spec))
        .collect()
}

async fn put(node: &Arc<Node>, key: &str, value: Vec<u8>) -> Result<(), tonic::Status> {
    let req = PutRequest {
        key: key.into(),
        value,
        context: vec![],
        w: None,
    };
    KvService::new(node.clone())
        .put(Request::new(req))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_put_that_would_make_a_key_too_big_to_merge_is_refused_naming_the_limit() {
    let spec = Spec {
        max_value_bytes: 1000,
        max_set_bytes: 2500,
        ..Spec::default()
    };
    let nodes = cluster(&spec);
    put(&nodes[0], "k", vec![1; 1000]).await.unwrap();
    put(&nodes[0], "k", vec![2; 1000]).await.unwrap();
    // A third concurrent sibling would take the key over 2,500 bytes.
    let err = put(&nodes[0], "k", vec![3; 1000]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("limit is 2500 bytes"), "{err:?}");
    assert!(err.message().contains("max_set_bytes"), "{err:?}");
    // The first two puts were acknowledged by W=2 replicas; the third replica's copy may
    // still be on its way. It lands (bounded wait), and the refused put never does.
    let count = |node: &Node| node.store.read(b"k").unwrap().values().count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while nodes.iter().any(|n| count(n) < 2) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for node in &nodes {
        assert_eq!(count(node), 2, "{}", node.id());
    }
}

fn entry(key: &[u8], set: Vec<u8>, hint_for: Option<&str>) -> WriteEntry {
    WriteEntry {
        key: Bytes::copy_from_slice(key),
        set: Bytes::from(set),
        hint_for: hint_for.map(str::to_owned),
        sync: false,
    }
}

fn set_of(value: Vec<u8>) -> Vec<u8> {
    let mut s = SiblingSet::new();
    s.update(
        &CausalContext::new(),
        &Actor::new("n1", 1),
        Some(value.into()),
    )
    .unwrap();
    encode_set(&s)
}

#[tokio::test]
async fn replica_entries_are_checked_like_client_requests() {
    let spec = Spec {
        max_value_bytes: 1000,
        max_set_bytes: 2000,
        ..Spec::default()
    };
    let nodes = cluster(&spec);
    let node = &nodes[0];
    let ok = set_of(b"fine".to_vec());
    let mut huge_counter = vec![FORMAT_VV];
    let vv: VersionVector = [(Actor::new("n1", 1), MAX_COUNTER + 1)]
        .into_iter()
        .collect();
    encode_vv(&mut huge_counter, &vv);
    put_varint(&mut huge_counter, 0);
    let cases: Vec<(WriteEntry, &str)> = vec![
        (entry(b"", ok.clone(), None), "key is empty"),
        (entry(&[7; 1025], ok.clone(), None), "1025 bytes"),
        (entry(b"k", set_of(vec![0; 1001]), None), "limit is 1000"),
        (entry(b"k", vec![0; 8001], None), "at most 8000"),
        (entry(b"k", huge_counter, None), "implausible"),
        (entry(b"k", b"garbage".to_vec(), None), "corrupt"),
        (entry(b"k", ok.clone(), Some("n1\0x")), "not a member"),
        (entry(b"k", ok.clone(), Some("stranger")), "not a member"),
    ];
    for (bad, why) in cases {
        // A good entry alongside: a bad one refuses the whole request, storing nothing.
        let batch = vec![entry(b"good", ok.clone(), None), bad];
        let err = node.accept(batch).await.unwrap_err().to_string();
        assert!(err.contains(why), "{why}: {err}");
        assert!(node.store.read(b"good").unwrap().is_empty(), "{why}");
        assert!(node.store.hint_summary().unwrap().is_empty(), "{why}");
    }
    node.accept(vec![entry(b"good", ok, Some("n2"))])
        .await
        .unwrap();
    assert_eq!(
        node.store.hint_summary().unwrap().len(),
        1,
        "a member's hint is kept"
    );
}
