//! Merkle anti-entropy between real node processes: a replica whose disk was wiped
//! recovers every key with no read touching it, in the background or through
//! `dynamoctl repair`.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use dynamo_proto::v1::{PutRequest, ReplicaReadRequest};
use dynamo_tests::{dynamoctl_binary, eventually, Cluster, Options};

const KEYS: usize = 300;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("ae-{i}")).collect()
}

/// Writes every key to all three replicas (W=3), through the nodes in turn.
async fn write_all(c: &Cluster) {
    for (i, k) in keys().iter().enumerate() {
        let req = PutRequest {
            key: k.clone().into_bytes(),
            value: format!("v{i}").into_bytes(),
            context: Vec::new(),
            w: Some(3),
        };
        c.kv(i % 3)
            .put(req)
            .await
            .unwrap_or_else(|s| panic!("put {k}: {s:?}"));
    }
}

/// How many of the keys node `i` holds, read from its local store (no repair).
async fn held(c: &Cluster, i: usize) -> usize {
    let req = ReplicaReadRequest {
        keys: keys().into_iter().map(Bytes::from).collect(),
        cluster_id: "test-cluster".into(),
        map_epoch: 0,
    };
    let sets = c
        .replica(i)
        .read(req)
        .await
        .expect("replica read")
        .into_inner()
        .sets;
    sets.iter().filter(|s| !s.is_empty()).count()
}

/// Whether every node has the same Merkle root for every partition.
async fn converged(c: &Cluster) -> bool {
    let mut roots = Vec::new();
    for i in 0..3 {
        match c.roots(i).await {
            Ok(r) => roots.push(r),
            Err(_) => return false,
        }
    }
    roots.windows(2).all(|w| w[0] == w[1])
}

/// Stops node 3, deletes its data directory and starts it again, empty.
fn wipe_third(c: &mut Cluster) {
    c.stop(2);
    c.wipe(2);
    c.restart(2);
}

#[tokio::test]
async fn a_wiped_replica_recovers_every_key_through_background_anti_entropy() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            extra: vec!["--anti-entropy-interval-ms".into(), "300".into()],
            ..Options::default()
        });
        write_all(&c).await;
        assert!(
            eventually(Duration::from_secs(10), async || converged(&c).await).await,
            "replicas written with W=3 have equal roots"
        );
        wipe_third(&mut c);
        // No client reads anything, and no write left a hint: only anti-entropy can
        // bring node 3 its keys (its background sweep may have begun already).
        let recovered = eventually(Duration::from_secs(30), async || converged(&c).await).await;
        assert!(recovered, "node 3's Merkle roots never matched the others'");
        assert_eq!(held(&c, 2).await, KEYS);
        let state = c
            .admin(2)
            .anti_entropy_state(dynamo_proto::v1::AntiEntropyStateRequest {})
            .await
            .expect("anti-entropy state")
            .into_inner();
        assert!(state.swept && state.interval_ms == 300, "{state:?}");
        assert!(
            state.last.is_some_and(|l| l.compared == 64),
            "one peer per partition"
        );
        let metrics = dynamo_tests::http_get(c.nodes[2].http, "/metrics")
            .expect("metrics")
            .1;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("dynamo_anti_entropy_keys_total") && !l.ends_with(" 0")),
            "anti-entropy counted the keys it moved:\n{metrics}"
        );
    })
    .await
    .expect("test timed out");
}

/// Runs `dynamoctl repair --json` against node `i` (alone, or every member).
fn dynamoctl_repair(c: &Cluster, i: usize, this_node: bool) -> serde_json::Value {
    let mut cmd = Command::new(dynamoctl_binary());
    cmd.args(["--addr", &c.nodes[i].grpc.to_string(), "repair", "--json"]);
    if this_node {
        cmd.arg("--this-node");
    }
    let out = cmd.output().expect("run dynamoctl");
    assert!(
        out.status.success(),
        "dynamoctl repair failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[tokio::test]
async fn dynamoctl_repair_brings_a_wiped_replica_back_and_reports_it() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // No background anti-entropy: only the repair can do it.
        let mut c = Cluster::start(Options {
            extra: vec!["--anti-entropy-interval-ms".into(), "0".into()],
            ..Options::default()
        });
        write_all(&c).await;
        wipe_third(&mut c);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(held(&c, 2).await, 0, "nothing repairs node 3 by itself");
        assert!(!converged(&c).await);

        let report = dynamoctl_repair(&c, 2, true);
        assert_eq!(report["pulled"], KEYS, "{report}");
        assert_eq!(report["pushed"], 0, "{report}");
        assert_eq!(held(&c, 2).await, KEYS);
        assert!(converged(&c).await);

        // Every member now: nothing differs, and it costs roots only.
        let report = dynamoctl_repair(&c, 0, false);
        assert_eq!(
            report["nodes"].as_array().map(Vec::len),
            Some(3),
            "{report}"
        );
        assert_eq!(report["differing"], 0, "{report}");
        assert_eq!(report["compared"], 3 * 2 * 64, "{report}");
        assert!(
            report["bytes"].as_u64().unwrap() <= 3 * 2 * (16 + 12 * 64),
            "{report}"
        );
    })
    .await
    .expect("test timed out");
}

/// The live values of `key` on every replica (R=3).
async fn values_all(c: &Cluster, key: &str) -> Vec<String> {
    let req = dynamo_proto::v1::GetRequest {
        key: key.as_bytes().to_vec(),
        r: Some(3),
    };
    values(&c.kv(0).get(req).await.expect("get R=3").into_inner())
}

/// How many nodes hold any copy of `key` (a tombstone included), read locally.
async fn holders(c: &Cluster, key: &str) -> usize {
    let mut n = 0;
    for i in 0..3 {
        let req = ReplicaReadRequest {
            keys: vec![Bytes::copy_from_slice(key.as_bytes())],
            cluster_id: "test-cluster".into(),
            map_epoch: 0,
        };
        if let Ok(r) = c.replica(i).read(req).await {
            n += usize::from(r.into_inner().sets.iter().any(|s| !s.is_empty()));
        }
    }
    n
}

/// Deletes a key while node 3 is SIGKILLed (`wipe`: and its disk lost), and checks the
/// tombstone outlives the grace period while node 3 is away, is purged everywhere once
/// it is back, and the value never returns.
async fn deleted_key_stays_deleted(wipe: bool) {
    let mut c = Cluster::start(Options {
        extra: vec![
            "--anti-entropy-interval-ms".into(),
            "300".into(),
            "--tombstone-grace-ms".into(),
            "1000".into(),
        ],
        ..Options::default()
    });
    let req = PutRequest {
        key: b"gone".to_vec(),
        value: b"v1".to_vec(),
        context: Vec::new(),
        w: Some(3),
    };
    let ctx = c.kv(0).put(req).await.expect("put").into_inner().context;
    c.kill9(2);
    delete(&c, 0, "gone", &ctx).await.expect("delete with W=2");
    // Well past the grace: node 3 may hold anything, so the tombstones stay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holders(&c, "gone").await,
        2,
        "purged while a replica was away"
    );
    if wipe {
        c.wipe(2);
    }
    c.restart(2);
    let purged = eventually(Duration::from_secs(30), async || {
        holders(&c, "gone").await == 0
    })
    .await;
    assert!(
        purged,
        "the tombstone was never purged once every replica was back"
    );
    let report = dynamoctl_repair(&c, 0, false);
    assert_eq!(report["pulled"], 0, "{report}");
    assert!(
        values_all(&c, "gone").await.is_empty(),
        "the deleted value came back"
    );
    assert_eq!(holders(&c, "gone").await, 0);
}

#[tokio::test]
async fn a_key_deleted_while_a_replica_was_down_stays_deleted_after_the_purge() {
    tokio::time::timeout(TEST_TIMEOUT, deleted_key_stays_deleted(false))
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn a_key_deleted_while_a_replica_was_wiped_stays_deleted_after_the_purge() {
    tokio::time::timeout(TEST_TIMEOUT, deleted_key_stays_deleted(true))
        .await
        .expect("test timed out");
}
