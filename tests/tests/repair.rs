//! Hinted handoff and read repair bring stale replicas up to date.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use dynamo_core::codec::{decode_set, encode_set};
use dynamo_core::{Actor, CausalContext, SiblingSet};
use dynamo_proto::v1::{ReplicaEntry, ReplicaReadRequest, ReplicaWriteRequest};
use dynamo_tests::{eventually, http_get, Cluster, Options};

/// The live values node `i` holds for `key`, read from its local store (no repair).
async fn local_values(c: &Cluster, i: usize, key: &str) -> Vec<String> {
    let req = ReplicaReadRequest {
        keys: vec![Bytes::copy_from_slice(key.as_bytes())],
        cluster_id: "test-cluster".into(),
        map_epoch: 0,
    };
    let set = c
        .replica(i)
        .read(req)
        .await
        .expect("replica read")
        .into_inner()
        .sets
        .pop()
        .expect("one set per key");
    if set.is_empty() {
        return Vec::new();
    }
    let set = decode_set(&set).expect("decode");
    let mut v: Vec<String> = set
        .values()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_node_that_was_down_gets_missed_writes_by_hinted_handoff() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        c.kill9(2);
        for i in 0..30 {
            put_ok(&c, i % 2, &format!("missed-{i}"), &format!("v{i}"), &[]).await;
        }
        // Hints are recorded once each write's background replication gives up on node 3.
        let held = eventually(Duration::from_secs(10), async || {
            hints_pending(&c, 0).await + hints_pending(&c, 1).await >= 30
        })
        .await;
        assert!(
            held,
            "the coordinators keep a hint for the dead replica for every write"
        );
        c.restart(2);
        // No client read touches node 3: only hinted handoff can bring it the writes.
        let delivered = eventually(Duration::from_secs(20), async || {
            hints_pending(&c, 0).await + hints_pending(&c, 1).await == 0
        })
        .await;
        assert!(delivered, "hints still pending after 20 s");
        for i in 0..30 {
            assert_eq!(
                local_values(&c, 2, &format!("missed-{i}")).await,
                [format!("v{i}")]
            );
        }
        let (_, metrics) = http_get(c.nodes[0].http, "/metrics").expect("metrics");
        assert!(
            metrics.contains("dynamo_hints_delivered_total"),
            "{metrics}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn read_repair_fixes_a_stale_replica() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options::default());
        // Make node 3 stale without hints: write a version straight into nodes 1 and 2.
        let mut set = SiblingSet::new();
        set.update(
            &CausalContext::new(),
            &Actor::new("node-1", 12345),
            Some(Bytes::from("fresh")),
        )
        .unwrap();
        for i in 0..2 {
            let entry = ReplicaEntry {
                key: Bytes::from_static(b"stale-key"),
                set: encode_set(&set).into(),
                hint_for: String::new(),
                sync: false,
            };
            let req = ReplicaWriteRequest {
                entries: vec![entry],
                cluster_id: "test-cluster".into(),
                map_epoch: 0,
            };
            c.replica(i).write(req).await.expect("replica write");
        }
        assert!(local_values(&c, 2, "stale-key").await.is_empty());
        // R=3 makes the coordinator hear node 3 too; repair follows in the background.
        let req = dynamo_proto::v1::GetRequest {
            key: b"stale-key".to_vec(),
            r: Some(3),
        };
        let r = c.kv(0).get(req).await.expect("get").into_inner();
        assert_eq!(values(&r), ["fresh"]);
        let repaired = eventually(Duration::from_secs(10), async || {
            local_values(&c, 2, "stale-key").await == ["fresh"]
        })
        .await;
        assert!(repaired, "node 3 was not repaired");
        let (_, metrics) = http_get(c.nodes[0].http, "/metrics").expect("metrics");
        let counter = |name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let repairs = counter("dynamo_read_repairs_total");
        assert!(repairs >= 1.0, "read repair not counted:\n{metrics}");
        // The coordinator's own read of the key it had just been written came from the
        // cache of recent sets.
        let hits = counter("dynamo_set_cache_hits_total");
        assert!(hits >= 1.0, "no cache hit counted:\n{metrics}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn with_every_replica_of_a_key_killed_a_put_is_still_taken_and_handed_off() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            nodes: 5,
            ..Options::default()
        });
        let key = "always-writable";
        let replicas = replicas_of(&c, key).await;
        assert_eq!(replicas.len(), 3);
        let outsiders: Vec<usize> = (0..5).filter(|i| !replicas.contains(i)).collect();
        for &r in &replicas {
            c.kill9(r);
        }

        // The node the client reached cannot forward the put to any replica: it
        // coordinates it itself, and the two nodes left keep it as hints.
        let req = dynamo_proto::v1::PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            context: Vec::new(),
            w: None,
        };
        let written = c
            .kv(outsiders[0])
            .put(req)
            .await
            .expect("a put with every replica down is still taken")
            .into_inner();
        assert_eq!(written.acks, 2);

        for &r in &replicas {
            c.restart(r);
        }
        let delivered = eventually(Duration::from_secs(30), async || {
            let mut held = 0;
            for &o in &outsiders {
                held += hints_pending(&c, o).await;
            }
            held == 0
        })
        .await;
        assert!(
            delivered,
            "hints still pending 30 s after the replicas came back"
        );
        for &r in &replicas {
            assert_eq!(local_values(&c, r, key).await, ["v"], "node {}", r + 1);
        }
    })
    .await
    .expect("test timed out");
}
