//! The client library against fake nodes over real gRPC: round trips, error codes,
//! failover, routing by key, and the bench's sibling discipline.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use dynamo_client::bench::{self, BenchConfig, Stop};
use dynamo_client::{Client, ClientConfig, Context};
use support::{dead_addr, FakeNode, Proxy};

#[tokio::test]
async fn put_get_delete_round_trip() {
    let node = FakeNode::start("node-1").await;
    let client = Client::connect(&[node.addr.to_string()]).await.unwrap();

    let got = client.get("cart", None).await.unwrap();
    assert!(!got.is_found());
    assert!(got.context.is_empty());

    let ctx = client
        .put("cart", "milk", &Context::empty(), None)
        .await
        .unwrap();
    let ctx2 = client
        .put("cart", "eggs", &Context::empty(), Some(1))
        .await
        .unwrap();
    let got = client.get("cart", Some(3)).await.unwrap();
    assert_eq!(got.replies, 3);
    let mut values: Vec<_> = got.values().cloned().collect();
    values.sort();
    assert_eq!(values, ["eggs", "milk"], "blind writes are siblings");
    assert_ne!(ctx, ctx2);

    // Merge and write back with the context read: one sibling left.
    let merged = client
        .put("cart", "eggs,milk", &got.context, None)
        .await
        .unwrap();
    let got = client.get("cart", None).await.unwrap();
    assert_eq!(got.values().collect::<Vec<_>>(), ["eggs,milk"]);

    // The text form of a context works like the context.
    let parsed = Context::from_base64(&merged.to_base64()).unwrap();
    let deleted = client.delete_detailed("cart", &parsed, None).await.unwrap();
    assert_eq!(deleted.acks, 2);
    let got = client.get("cart", None).await.unwrap();
    assert!(!got.is_found());
    assert_eq!(got.siblings.len(), 1);
    assert_eq!(got.siblings[0].value, None, "tombstone");
}

#[tokio::test]
async fn node_errors_keep_code_and_message_and_are_not_retried() {
    let a = FakeNode::start("a").await;
    let b = FakeNode::start("b").await;
    let client = Client::connect(&[a.addr.to_string(), b.addr.to_string()])
        .await
        .unwrap();

    let err = client.get("", None).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert_eq!(
        err.to_string(),
        "INVALID_ARGUMENT: key is empty: keys are 1 to 1024 bytes"
    );

    let before = a.calls() + b.calls();
    let err = client
        .put("fail-quorum", "v", &Context::empty(), None)
        .await
        .unwrap_err();
    assert_eq!(err.category(), "UNAVAILABLE");
    assert!(err.message().contains("1 of 2 replicas"), "{err}");
    assert!(!err.is_connect_failure());
    assert_eq!(
        a.calls() + b.calls(),
        before + 1,
        "a quorum failure is not retried elsewhere"
    );
}

#[tokio::test]
async fn connection_refused_is_a_connect_failure() {
    let client = Client::connect(&[dead_addr()]).await.unwrap();
    let err = client.get("k", None).await.unwrap_err();
    assert_eq!(err.category(), "UNAVAILABLE", "{err}");
    assert!(err.is_connect_failure(), "{err}");
    let err = client
        .put("k", "v", &Context::empty(), None)
        .await
        .unwrap_err();
    assert!(err.is_connect_failure(), "{err}");
}

#[tokio::test]
async fn fails_over_from_an_unreachable_node() {
    let live = FakeNode::start("live").await;
    let mut config = ClientConfig::new(&[dead_addr(), live.addr.to_string()]);
    config.connect_timeout = Duration::from_millis(500);
    let client = config.connect().await.unwrap();
    for i in 0..6 {
        let key = format!("k{i}");
        let ctx = client
            .put(&key, "v", &Context::empty(), None)
            .await
            .unwrap();
        assert!(!ctx.is_empty());
        assert!(client.get(&key, None).await.unwrap().is_found());
        client.node_info().await.unwrap();
    }
    assert_eq!(live.calls(), 12);
}

#[tokio::test]
async fn a_node_that_stops_answering_is_tried_last_after_one_timeout() {
    let a = FakeNode::start("node-a").await;
    let b = FakeNode::start("node-b").await;
    let mut config = ClientConfig::new(&[a.addr.to_string(), b.addr.to_string()]);
    config.request_timeout = Duration::from_millis(300);
    config.down_for = Duration::from_secs(60);
    let client = config.connect().await.unwrap();
    client.warm_up("k").await;

    // Node a freezes with its connection open: nothing refuses, nothing answers.
    a.state
        .frozen
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let before = a.calls();
    let mut failed = Vec::new();
    for i in 0..8 {
        let key = format!("k{i}");
        // A put that timed out may have been applied: it is not sent again elsewhere.
        if let Err(e) = client.put(&key, "v", &Context::empty(), None).await {
            assert!(e.is_transport_failure(), "{e}");
            failed.push(key);
        }
    }
    assert!(
        failed.len() <= 1,
        "only the first request to the frozen node should wait for it: {failed:?}"
    );
    // Reads go elsewhere at once too.
    for i in 0..8 {
        client.get(format!("k{i}"), None).await.unwrap();
    }
    assert!(
        a.calls() - before <= 1,
        "{} requests sent to the frozen node",
        a.calls() - before
    );
}

#[tokio::test]
async fn a_node_that_answers_again_gets_requests_again_after_its_down_period() {
    let a = FakeNode::start("node-a").await;
    let b = FakeNode::start("node-b").await;
    let members = vec![
        ("node-a".to_string(), a.addr.to_string()),
        ("node-b".to_string(), b.addr.to_string()),
    ];
    *a.state.members.lock().unwrap() = members.clone();
    *b.state.members.lock().unwrap() = members;
    let mut config = ClientConfig::new(&[a.addr.to_string(), b.addr.to_string()]);
    config.request_timeout = Duration::from_millis(300);
    config.down_for = Duration::from_millis(300);
    config.route_by_key = true;
    let client = config.connect().await.unwrap();
    assert_eq!(client.refresh_routes().await.unwrap(), 1);
    // The fake's map: Q=16, N=1, partition p owned by member p % 2 (members sorted by id).
    let owned_by = |owner: u32| {
        (0..)
            .map(|i| format!("key-{i}"))
            .filter(move |k| dynamo_core::ring::partition_of(k.as_bytes(), 16) % 2 == owner)
    };
    let (a_keys, b_keys): (Vec<_>, Vec<_>) =
        (owned_by(0).take(8).collect(), owned_by(1).take(8).collect());

    a.state
        .frozen
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Times out on a, is read from b instead, and marks a down.
    client.get(&a_keys[0], None).await.unwrap();
    a.state
        .frozen
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Node a's down period is over. Requests for b's keys go to b first and b answers:
    // they must not use up a's trial without trying a.
    for key in &b_keys {
        client.get(key, None).await.unwrap();
    }
    let before = a.calls();
    for key in &a_keys {
        client.get(key, None).await.unwrap();
    }
    assert_eq!(
        a.calls() - before,
        8,
        "node a answers again: its keys go to it"
    );
}

#[tokio::test]
async fn requests_share_one_session_and_a_slow_one_times_out_alone() {
    let node = FakeNode::start("node-1").await;
    let mut config = ClientConfig::new(&[node.addr.to_string()]);
    config.request_timeout = Duration::from_millis(300);
    let client = config.connect().await.unwrap();

    let puts: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                client
                    .put(&key, format!("v{i}"), &Context::empty(), None)
                    .await
            })
        })
        .collect();
    let hang = {
        let client = client.clone();
        tokio::spawn(async move { client.get("hang", None).await })
    };
    for p in puts {
        p.await.unwrap().unwrap();
    }
    for i in 0..50 {
        let got = client.get(format!("k{i}"), None).await.unwrap();
        let want = format!("v{i}");
        assert_eq!(
            got.values().collect::<Vec<_>>(),
            [&want],
            "each answer is its own"
        );
    }
    let err = hang.await.unwrap().unwrap_err();
    assert_eq!(err.category(), "CANCELLED", "{err}");
    assert!(err.message().contains("Timeout expired"), "{err}");
    assert!(
        err.is_transport_failure() && !err.is_connect_failure(),
        "{err}"
    );

    // The session outlived the timeout: everything went over one.
    client.get("k0", None).await.unwrap();
    assert_eq!(node.sessions(), 1);
}

#[tokio::test]
async fn a_broken_session_fails_what_is_in_flight_and_the_next_request_reopens() {
    let node = FakeNode::start("node-1").await;
    let proxy = Proxy::start(node.addr).await;
    let mut config = ClientConfig::new(&[proxy.addr.to_string()]);
    config.request_timeout = Duration::from_secs(20);
    let client = config.connect().await.unwrap();
    client.put("k", "v", &Context::empty(), None).await.unwrap();

    let hang = {
        let client = client.clone();
        tokio::spawn(async move { client.get("hang", None).await })
    };
    // Let the get reach the node, then break the connection under it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while node.calls() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the get reaches the node");
    proxy.cut();
    let err = tokio::time::timeout(Duration::from_secs(10), hang)
        .await
        .expect("the broken session fails its requests at once")
        .unwrap()
        .unwrap_err();
    assert!(err.is_transport_failure(), "{err}");
    assert!(
        !err.is_connect_failure(),
        "a request in flight may have been applied: {err}"
    );

    // The next request opens a new session (the channel reconnects) and succeeds.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.get("k", None).await {
                Ok(got) => break got,
                Err(e) => {
                    assert!(e.is_transport_failure(), "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await
    .expect("a new session within 10 s");
    assert_eq!(got.values().collect::<Vec<_>>(), ["v"]);
    assert!(node.sessions() >= 2, "{} sessions", node.sessions());
}

#[tokio::test]
async fn routes_each_key_to_its_owner() {
    let a = FakeNode::start("node-a").await;
    let b = FakeNode::start("node-b").await;
    let members = vec![
        ("node-a".to_string(), a.addr.to_string()),
        ("node-b".to_string(), b.addr.to_string()),
    ];
    *a.state.members.lock().unwrap() = members.clone();
    *b.state.members.lock().unwrap() = members;

    let mut config = ClientConfig::new(&[a.addr.to_string()]);
    config.route_by_key = true;
    let client = config.connect().await.unwrap();
    assert_eq!(client.refresh_routes().await.unwrap(), 1);

    // The fake's map: Q=16, N=1, partition p owned by member p % 2 (members sorted by id).
    let mut want_a = 0;
    for i in 0..50u32 {
        let key = format!("key-{i}");
        let p = dynamo_core::ring::partition_of(key.as_bytes(), 16);
        if p.is_multiple_of(2) {
            want_a += 1;
        }
        client
            .put(&key, "v", &Context::empty(), None)
            .await
            .unwrap();
    }
    assert_eq!(a.calls(), want_a);
    assert_eq!(b.calls(), 50 - want_a);
}

#[tokio::test]
async fn bench_counts_ops_and_keeps_one_sibling_per_key() {
    let node = FakeNode::start("node-1").await;
    let client = Client::connect(&[node.addr.to_string()]).await.unwrap();
    let cfg = BenchConfig {
        concurrency: 8,
        keys: 50,
        key_size: 16,
        value_size: 100,
        read_ratio: 0.3,
        stop: Stop::Ops(2000),
        prefill: true,
        rate: None,
        r: None,
        w: None,
        progress: false,
        seed: 7,
        timeline: None,
        skip: Duration::ZERO,
    };
    let outcome = bench::run(&client, &cfg).await.unwrap();
    let r = &outcome.report;
    assert_eq!(r.ops, 2000);
    assert_eq!(r.errors, 0);
    assert_eq!(r.read.ops + r.write.ops, 2000);
    assert!(r.read.ops > 300 && r.write.ops > 1000, "{r:?}");
    assert!(outcome.prefill.is_some());
    assert_eq!(outcome.context_reads, 0, "prefill hands out every context");
    assert_eq!(
        node.state.max_siblings.load(Ordering::Relaxed),
        1,
        "no sibling pile-up"
    );

    // A second run without prefill fetches contexts lazily and still adds no sibling.
    let cfg = BenchConfig {
        prefill: false,
        rate: None,
        read_ratio: 0.0,
        stop: Stop::Ops(500),
        ..cfg
    };
    let outcome = bench::run(&client, &cfg).await.unwrap();
    assert_eq!(outcome.report.write.ops, 500);
    assert!(outcome.context_reads > 0);
    assert_eq!(node.state.max_siblings.load(Ordering::Relaxed), 1);

    // Prefill on a filled store only reads.
    let before = node.calls();
    let prefill_only = BenchConfig {
        prefill: true,
        rate: None,
        stop: Stop::Ops(0),
        ..cfg.clone()
    };
    let outcome = bench::run(&client, &prefill_only).await.unwrap();
    assert_eq!(outcome.report.ops, 0);
    assert_eq!(node.calls() - before, 50, "one get per key");

    // Duration-bounded runs stop.
    let cfg = BenchConfig {
        stop: Stop::After(Duration::from_millis(300)),
        ..cfg
    };
    let outcome = bench::run(&client, &cfg).await.unwrap();
    assert!(outcome.report.seconds < 2.0);
    assert!(outcome.report.ops > 0);
    let unpaced = outcome.report.ops;

    // An open-loop run keeps to its rate: 4 workers at 200 ops/s in total send every
    // 20 ms each, so 0.5 s holds at most 26 requests per worker.
    let paced = BenchConfig {
        concurrency: 4,
        rate: Some(200.0),
        stop: Stop::After(Duration::from_millis(500)),
        timeline: Some(Duration::from_millis(100)),
        ..cfg
    };
    let outcome = bench::run(&client, &paced).await.unwrap();
    assert!(outcome.report.ops > 0);
    // Its timeline: 100 ms slices over the half second, every operation in one.
    let slices = outcome.report.timeline.as_ref().expect("a timeline");
    assert!((5..=6).contains(&slices.len()), "{slices:?}");
    assert_eq!(
        slices.iter().map(|s| s.ops).sum::<u64>(),
        outcome.report.ops
    );
    assert!(slices[..5]
        .iter()
        .all(|s| s.ops > 0 && s.max_ms >= s.p50_ms));
    assert!(
        outcome.report.ops <= 4 * 26,
        "paced run sent {} requests (closed loop: {unpaced} in 300 ms)",
        outcome.report.ops
    );

    // A lead-in is sent and shown in the timeline but not counted: 300 ms of it, then
    // 300 ms measured, at 200 ops/s.
    let led_in = BenchConfig {
        skip: Duration::from_millis(300),
        stop: Stop::After(Duration::from_millis(300)),
        ..paced
    };
    let outcome = bench::run(&client, &led_in).await.unwrap();
    let r = &outcome.report;
    let slices = r.timeline.as_ref().expect("a timeline");
    let shown: u64 = slices.iter().map(|s| s.ops).sum();
    assert!((6..=7).contains(&slices.len()), "{slices:?}");
    assert!(r.ops > 0 && r.ops <= 4 * 16, "{} counted", r.ops);
    assert!(
        shown >= r.ops + 4 * 14,
        "the lead-in's requests are in the timeline: {shown} shown, {} counted",
        r.ops
    );
    assert!(
        r.seconds < 0.5,
        "ops/s over the measured window: {} s",
        r.seconds
    );
}

#[tokio::test]
async fn warm_up_opens_every_session_before_any_request() {
    let a = FakeNode::start("a").await;
    let b = FakeNode::start("b").await;
    let mut config = ClientConfig::new(&[a.addr.to_string(), b.addr.to_string(), dead_addr()]);
    config.channels_per_node = 3;
    let client = config.connect().await.unwrap();
    assert_eq!((a.sessions(), b.sessions()), (0, 0), "channels are lazy");

    assert_eq!(
        client.warm_up("warm").await,
        6,
        "3 sessions on each live node"
    );
    assert_eq!((a.sessions(), b.sessions()), (3, 3));
    // Warm sessions are reused, not reopened.
    assert_eq!(client.warm_up("warm").await, 6);
    assert_eq!((a.sessions(), b.sessions()), (3, 3));
}

#[tokio::test]
async fn bench_opens_its_sessions_before_the_clock_even_without_prefill() {
    let node = FakeNode::start("node-1").await;
    let mut config = ClientConfig::new(&[node.addr.to_string()]);
    config.channels_per_node = 2;
    let client = config.connect().await.unwrap();
    let cfg = BenchConfig {
        concurrency: 4,
        keys: 10,
        key_size: 16,
        value_size: 10,
        read_ratio: 1.0,
        stop: Stop::Ops(0),
        prefill: false,
        rate: None,
        r: None,
        w: None,
        progress: false,
        seed: 1,
        timeline: None,
        skip: Duration::ZERO,
    };
    let outcome = bench::run(&client, &cfg).await.unwrap();
    assert_eq!(outcome.report.ops, 0, "nothing timed");
    assert_eq!(node.sessions(), 2, "both sessions opened by the warm-up");
}
