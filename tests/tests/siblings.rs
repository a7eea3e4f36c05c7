//! Concurrent blind writes become siblings; a put with the merged context resolves them;
//! a delete with a context leaves a concurrent write standing.

mod common;

use common::*;
use dynamo_tests::{Cluster, Options};

#[tokio::test]
async fn concurrent_blind_writes_are_siblings_until_resolved() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options::default());
        // Two clients write the same key without a context, through different nodes.
        put_ok(&c, 0, "cart", "milk", &[]).await;
        put_ok(&c, 1, "cart", "eggs", &[]).await;
        let r = get_ok(&c, 2, "cart").await;
        assert_eq!(
            values(&r),
            ["eggs", "milk"],
            "both concurrent writes survive as siblings"
        );
        assert!(r.replies >= 2);

        // The application merges and writes back with the context it read.
        put_ok(&c, 2, "cart", "eggs,milk", &r.context).await;
        for node in 0..3 {
            let r = get_ok(&c, node, "cart").await;
            assert_eq!(values(&r), ["eggs,milk"], "via node {node}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn put_context_supersedes_only_what_was_seen() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options::default());
        let ctx1 = put_ok(&c, 0, "k", "a", &[]).await;
        // Someone else writes concurrently (blind) after our first write.
        put_ok(&c, 1, "k", "b", &[]).await;
        // Our next write uses the context of our own put: it supersedes "a" only.
        put_ok(&c, 0, "k", "a2", &ctx1).await;
        let r = get_ok(&c, 2, "k").await;
        assert_eq!(values(&r), ["a2", "b"]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn delete_with_context_keeps_concurrent_write() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options::default());
        put_ok(&c, 0, "k", "v1", &[]).await;
        let seen = get_ok(&c, 0, "k").await;
        // A concurrent writer that saw the same version updates it...
        put_ok(&c, 1, "k", "v2", &seen.context).await;
        // ...while another deletes what it saw.
        delete(&c, 2, "k", &seen.context).await.expect("delete");
        let r = get_ok(&c, 0, "k").await;
        assert_eq!(
            values(&r),
            ["v2"],
            "the concurrent write survives the delete"
        );
        assert!(
            r.siblings.iter().any(|s| s.tombstone),
            "the delete is a sibling too"
        );

        // Deleting with the merged context removes everything.
        delete(&c, 0, "k", &r.context).await.expect("delete");
        let r = get_ok(&c, 1, "k").await;
        assert!(values(&r).is_empty(), "deleted: {r:?}");
    })
    .await
    .expect("test timed out");
}
