//! Acknowledged writes survive restarts and crashes, synced ones under concurrent load too;
//! a wiped node never makes new writes lose to old.

mod common;

use common::*;
use dynamo_proto::v1::PutRequest;
use dynamo_tests::{Cluster, Options};

#[tokio::test]
async fn a_full_cluster_restart_loses_nothing_acknowledged() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        for i in 0..100 {
            put_ok(&c, i % 3, &format!("k{i}"), &format!("v{i}"), &[]).await;
        }
        // Clean stop of every node, then start again.
        for i in 0..3 {
            c.stop(i);
        }
        // A log that goes to a file (as in a pod) is plain text, no colour codes.
        let log = c.log(0);
        assert!(
            log.contains("stopped cleanly") && !log.contains('\x1b'),
            "{log}"
        );
        for i in 0..3 {
            c.restart(i);
        }
        for i in 0..100 {
            assert_eq!(
                values(&get_ok(&c, (i + 1) % 3, &format!("k{i}")).await),
                [format!("v{i}")]
            );
        }
        // Now SIGKILL every node at once (a crash, not a clean stop) and start again.
        for i in 100..200 {
            put_ok(&c, i % 3, &format!("k{i}"), &format!("v{i}"), &[]).await;
        }
        for i in 0..3 {
            c.kill9(i);
        }
        for i in 0..3 {
            c.restart(i);
        }
        for i in 0..200 {
            assert_eq!(
                values(&get_ok(&c, i % 3, &format!("k{i}")).await),
                [format!("v{i}")],
                "k{i}"
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_wiped_node_does_not_make_new_writes_lose_to_old_ones() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        // node-3 coordinates the first write of the key: its dot is node-3's first event.
        put_ok(&c, 2, "k", "old", &[]).await;
        let info = c
            .admin(2)
            .node_info(dynamo_proto::v1::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        c.stop(2);
        c.wipe(2);
        c.restart(2);
        let after = c
            .admin(2)
            .node_info(dynamo_proto::v1::NodeInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_ne!(
            info.incarnation, after.incarnation,
            "a wiped node must get a new incarnation"
        );
        // A new blind write coordinated by the wiped node would reuse the dot "node-3:1"
        // if the actor were the node id alone, and be silently dominated.
        put_ok(&c, 2, "k", "new", &[]).await;
        let r = get_ok(&c, 0, "k").await;
        assert_eq!(
            values(&r),
            ["new", "old"],
            "the new write must survive as a sibling"
        );
        // And a write with that context supersedes both.
        put_ok(&c, 2, "k", "final", &r.context).await;
        assert_eq!(values(&get_ok(&c, 1, "k").await), ["final"]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn synced_writes_from_many_clients_survive_every_node_killed_mid_load() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            extra: vec!["--fsync".into(), "always".into()],
            ..Options::default()
        });
        // Sixteen clients, each waiting for its put's acknowledgement before the next:
        // the closed loop the syncer's pacing is built around. Each records the keys
        // acknowledged to it and stops at its first error.
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let mut kv = c.kv(w % 3);
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0.. {
                        let key = format!("w{w}-{i}");
                        let req = PutRequest {
                            key: key.clone().into_bytes(),
                            value: format!("v{i}").into_bytes(),
                            context: Vec::new(),
                            w: None,
                        };
                        match kv.put(req).await {
                            Ok(_) => acked.push(key),
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        // Let them write for a while, then SIGKILL every node with writes in flight.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        for i in 0..3 {
            c.kill9(i);
        }
        let mut acked = Vec::new();
        for w in writers {
            acked.extend(w.await.expect("writer task"));
        }
        assert!(
            acked.len() >= 160,
            "only {} synced puts acknowledged in 1.5 s",
            acked.len()
        );
        for i in 0..3 {
            c.restart(i);
        }
        for (n, key) in acked.iter().enumerate() {
            let i = key.rsplit('-').next().expect("index");
            assert_eq!(
                values(&get_ok(&c, n % 3, key).await),
                [format!("v{i}")],
                "{key} was acknowledged"
            );
        }
    })
    .await
    .expect("test timed out");
}
