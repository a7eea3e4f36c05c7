//! Acknowledged writes survive restarts; a wiped node never makes new writes lose to old.

mod common;

use common::*;
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
