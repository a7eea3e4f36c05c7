//! Gossip membership and failure detection between real node processes: a node started
//! from seeds is seen everywhere; a killed or frozen node is suspected within 5 s, then
//! down, and trusted again once back; a heartbeat spreads to five nodes within three
//! rounds; and 64 clients of load make no verdict change. Each test prints what it
//! measured.

mod common;

use std::time::{Duration, Instant};

use common::*;
use dynamo_proto::v1::{
    ClusterHealthRequest, ClusterHealthResponse, GetRequest, MemberHealth, PartitionMapRequest,
};
use dynamo_tests::{Cluster, Options};

/// The gossip interval of the nodes (the default).
const ROUND: Duration = Duration::from_secs(1);

/// Node `i`'s view of the cluster, or `None` if it does not answer.
async fn health(c: &Cluster, i: usize) -> Option<ClusterHealthResponse> {
    let mut admin = c.admin(i);
    let call = admin.cluster_health(ClusterHealthRequest {});
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// What node `observer` says of node `id`.
async fn seen(c: &Cluster, observer: usize, id: &str) -> Option<MemberHealth> {
    health(c, observer)
        .await?
        .members
        .into_iter()
        .find(|m| m.id == id)
}

/// How long it took until every one of `observers` said of `id` something `ok` takes,
/// polling every 20 ms; `None` if not within `within`.
async fn until_all(
    c: &Cluster,
    observers: &[usize],
    id: &str,
    within: Duration,
    ok: impl Fn(&MemberHealth) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    let mut pending: Vec<usize> = observers.to_vec();
    while start.elapsed() < within {
        let mut still = Vec::new();
        for &o in &pending {
            if !seen(c, o, id).await.is_some_and(|m| ok(&m)) {
                still.push(o);
            }
        }
        if still.is_empty() {
            return Some(start.elapsed());
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn state_is(state: &'static str) -> impl Fn(&MemberHealth) -> bool {
    move |m| m.state == state
}

#[tokio::test]
async fn a_node_started_from_seeds_is_seen_by_every_node_and_serves() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        let joined = c.add_by_seeds(&[0]);
        let took = until_all(&c, &[0, 1, 2], "node-4", Duration::from_secs(10), |m| {
            m.state == "alive" && m.incarnation != 0 && !m.in_map
        })
        .await
        .expect("every node sees node-4 alive within 10 s");
        eprintln!("node-4 (seeded) seen alive by every member {took:?} after it was ready");
        // node-4 knows the members and holds their map, though it is in no preference list.
        let view = health(&c, joined).await.expect("node-4 answers");
        for id in ["node-1", "node-2", "node-3"] {
            let m = view.members.iter().find(|m| m.id == id).expect("member");
            assert!(m.in_map, "{id} is in node-4's map");
        }
        let map = c
            .admin(joined)
            .partition_map(PartitionMapRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((map.epoch, map.members.len()), (1, 3));
        assert_eq!(view.map_epoch, 1);
        // It coordinates requests (forwarding them to the replicas).
        put_ok(&c, joined, "seeded", "v", &[]).await;
        assert_eq!(values(&get_ok(&c, 0, "seeded").await), ["v"]);
        // With every replica gone it does not coordinate a write itself: outside the
        // map, a copy or hint it kept would escape tombstone purging's checks.
        for i in 0..3 {
            c.kill9(i);
        }
        // Once node-4 holds them all not alive, it forwards to none of them (a forward
        // sent before that may break off mid-request instead, also UNAVAILABLE).
        for id in ["node-1", "node-2", "node-3"] {
            until_all(&c, &[joined], id, Duration::from_secs(10), |m| {
                m.state != "alive"
            })
            .await
            .unwrap_or_else(|| panic!("node-4 still holds {id} alive after 10 s"));
        }
        let refused = put(&c, joined, "seeded-2", "v", &[]).await;
        assert_status(
            refused,
            tonic::Code::Unavailable,
            "not a member of the partition map",
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_killed_node_goes_suspect_then_down_and_is_trusted_again_after_restart() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        until_all(&c, &[0, 1], "node-3", Duration::from_secs(5), |m| {
            m.state == "alive" && m.incarnation != 0
        })
        .await
        .expect("node-3 heard of");
        let before = seen(&c, 0, "node-3").await.unwrap().incarnation;
        c.kill9(2);
        let suspected = until_all(&c, &[0, 1], "node-3", Duration::from_secs(8), |m| {
            m.state != "alive"
        })
        .await
        .expect("node-3 suspected");
        let down = until_all(
            &c,
            &[0, 1],
            "node-3",
            Duration::from_secs(15),
            state_is("down"),
        )
        .await
        .expect("node-3 down");
        eprintln!("kill -9: suspected after {suspected:?}, down {down:?} later");
        assert!(
            suspected <= Duration::from_secs(5),
            "suspected after {suspected:?}"
        );
        // While it is down, writes of its keys go to fallbacks without waiting on it.
        put_ok(&c, 0, "while-down", "v", &[]).await;
        c.restart(2);
        let back = until_all(&c, &[0, 1], "node-3", Duration::from_secs(10), |m| {
            m.state == "alive" && m.incarnation != before
        })
        .await
        .expect("node-3 trusted again, with a new incarnation (SIGKILL is an unclean stop)");
        eprintln!("restarted: trusted again by every node {back:?} after it was ready");
        assert!(back <= ROUND, "trusted again only after {back:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_frozen_node_is_suspected_within_five_seconds_and_trusted_after_it_thaws() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        until_all(
            &c,
            &[0, 2],
            "node-2",
            Duration::from_secs(5),
            state_is("alive"),
        )
        .await
        .expect("node-2 alive");
        c.freeze(1);
        let suspected = until_all(&c, &[0, 2], "node-2", Duration::from_secs(8), |m| {
            m.state != "alive"
        })
        .await
        .expect("node-2 suspected");
        c.thaw(1);
        let back = until_all(
            &c,
            &[0, 2],
            "node-2",
            Duration::from_secs(10),
            state_is("alive"),
        )
        .await
        .expect("node-2 trusted again");
        eprintln!("SIGSTOP: suspected after {suspected:?}; SIGCONT: trusted again after {back:?}");
        assert!(
            suspected <= Duration::from_secs(5),
            "suspected after {suspected:?}"
        );
        assert!(back <= 2 * ROUND, "trusted again only after {back:?}");
        // The thawed node trusts the others again too.
        until_all(
            &c,
            &[1],
            "node-1",
            Duration::from_secs(5),
            state_is("alive"),
        )
        .await
        .expect("node-2 trusts node-1 again");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_heartbeat_reaches_all_five_nodes_within_three_rounds() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            nodes: 5,
            ..Options::default()
        });
        let mut samples = Vec::new();
        for _ in 0..8 {
            // Wait for node-1 to count its heartbeat up, then for everyone to see it.
            let h = seen(&c, 0, "node-1").await.unwrap().heartbeat;
            let start = loop {
                let now = seen(&c, 0, "node-1").await.unwrap().heartbeat;
                if now > h {
                    break (now, Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let took = until_all(&c, &[1, 2, 3, 4], "node-1", 5 * ROUND, |m| {
                m.heartbeat >= start.0
            })
            .await
            .expect("the heartbeat spread");
            assert!(took <= start.1.elapsed());
            samples.push(start.1.elapsed());
        }
        let rounds: Vec<f64> = samples
            .iter()
            .map(|d| d.as_secs_f64() / ROUND.as_secs_f64())
            .collect();
        eprintln!("rounds for a heartbeat of node-1 to reach all 5 nodes: {rounds:.2?}");
        let worst = rounds.iter().cloned().fold(0.0, f64::max);
        assert!(worst <= 3.0, "a heartbeat took {worst:.2} rounds to spread");
    })
    .await
    .expect("test timed out");
}

/// Verdict changes every node has made about every other, summed.
async fn state_changes(c: &Cluster, nodes: usize) -> u64 {
    let mut total = 0;
    for i in 0..nodes {
        let view = health(c, i).await.expect("node answers");
        total += view.members.iter().map(|m| m.state_changes).sum::<u64>();
    }
    total
}

#[tokio::test]
async fn sixty_four_clients_of_load_make_no_verdict_change() {
    const NODES: usize = 5;
    const CLIENTS: usize = 64;
    const LOAD: Duration = Duration::from_secs(20);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            nodes: NODES,
            ..Options::default()
        });
        // Every node watched every other from its start; all should be alive by now.
        for i in 0..NODES {
            let id = format!("node-{}", i + 1);
            let others: Vec<usize> = (0..NODES).filter(|&o| o != i).collect();
            until_all(&c, &others, &id, Duration::from_secs(5), state_is("alive"))
                .await
                .expect("every node alive before the load");
        }
        let before = state_changes(&c, NODES).await;
        let stop = Instant::now() + LOAD;
        let clients = (0..CLIENTS).map(|k| {
            let mut kv = c.kv(k % NODES);
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut n = 0u64;
                while Instant::now() < stop {
                    n += 1;
                    let key = format!("load-{k}-{}", n % 100).into_bytes();
                    let ok = if n % 2 == 1 {
                        let put = dynamo_proto::v1::PutRequest {
                            key,
                            value: vec![7; 100],
                            context: Vec::new(),
                            w: None,
                        };
                        kv.put(put).await.is_ok()
                    } else {
                        kv.get(GetRequest { key, r: None }).await.is_ok()
                    };
                    done += u64::from(ok);
                }
                done
            })
        });
        let mut ok = 0;
        for client in clients.collect::<Vec<_>>() {
            ok += client.await.unwrap();
        }
        let after = state_changes(&c, NODES).await;
        eprintln!(
            "{CLIENTS} clients for {LOAD:?} on {NODES} nodes: {ok} requests succeeded \
             ({:.0}/s); verdict changes {before} before, {after} after",
            ok as f64 / LOAD.as_secs_f64()
        );
        assert!(ok > 0, "the load ran");
        assert_eq!(after, before, "verdicts changed under load (flapping)");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_cleanly_stopped_node_is_down_at_once_and_keeps_its_incarnation() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options::default());
        until_all(&c, &[0, 1], "node-3", Duration::from_secs(5), |m| {
            m.state == "alive" && m.incarnation != 0
        })
        .await
        .expect("node-3 heard of");
        let before = seen(&c, 0, "node-3").await.unwrap().incarnation;
        c.stop(2);
        // It said goodbye on its way out: no waiting for the detector.
        let down = until_all(&c, &[0, 1], "node-3", ROUND, state_is("down"))
            .await
            .expect("node-3 down within a round of its clean stop");
        c.restart(2);
        let back = until_all(&c, &[0, 1], "node-3", ROUND, |m| {
            m.state == "alive" && m.incarnation == before
        })
        .await
        .expect("node-3 alive again, with the incarnation its clean stop kept");
        eprintln!(
            "clean stop: down {down:?} after the stop returned; trusted {back:?} after restart"
        );
    })
    .await
    .expect("test timed out");
}
