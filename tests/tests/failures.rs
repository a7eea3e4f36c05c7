//! Availability under failure: a killed node, a frozen node, too few replicas.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dynamo_tests::{Cluster, Options};
use tonic::Code;

#[tokio::test]
async fn kill_9_of_one_node_leaves_puts_and_gets_working() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        for i in 0..20 {
            put_ok(&c, i % 3, &format!("before-{i}"), "v", &[]).await;
        }
        c.kill9(2);
        for i in 0..50 {
            let key = format!("after-{i}");
            put_ok(&c, i % 2, &key, &format!("v{i}"), &[]).await;
            assert_eq!(
                values(&get_ok(&c, (i + 1) % 2, &key).await),
                [format!("v{i}")]
            );
        }
        for i in 0..20 {
            assert_eq!(
                values(&get_ok(&c, i % 2, &format!("before-{i}")).await),
                ["v"]
            );
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_frozen_node_does_not_stall_the_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            request_timeout_ms: 1000,
            ..Options::default()
        });
        put_ok(&c, 0, "warm", "v", &[]).await;
        c.freeze(2);
        let bound = Duration::from_millis(1000 + 1500); // request timeout + scheduling slack
        for i in 0..20 {
            let key = format!("k{i}");
            let t = Instant::now();
            put_ok(&c, i % 2, &key, "v", &[]).await;
            assert_eq!(values(&get_ok(&c, (i + 1) % 2, &key).await), ["v"]);
            assert!(
                t.elapsed() < bound,
                "put+get took {:?} with a frozen node",
                t.elapsed()
            );
        }
        c.thaw(2);
        // After thawing, the node catches up (hints) and serves again.
        put_ok(&c, 2, "after-thaw", "v", &[]).await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn too_few_replicas_is_unavailable_with_counts_and_nothing_claimed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        put_ok(&c, 0, "k", "v", &[]).await;
        c.kill9(1);
        c.kill9(2);
        assert_status(
            put(&c, 0, "k2", "v", &[]).await,
            Code::Unavailable,
            "1 of 2 required replicas",
        );
        assert_status(
            get(&c, 0, "k").await,
            Code::Unavailable,
            "1 of 2 required replicas",
        );
        // R=1 still reads the surviving copy.
        let req = dynamo_proto::v1::GetRequest {
            key: b"k".to_vec(),
            r: Some(1),
        };
        let r = c.kv(0).get(req).await.expect("get with r=1").into_inner();
        assert_eq!(values(&r), ["v"]);
    })
    .await
    .expect("test timed out");
}
