//! Changing members of a running in-process cluster (loopback transport, gossip, the
//! change tasks) under a set-workload writer: 3→4 then 4→3, and an aborted change.
//! Every acknowledged element must be on the replicas of the final map, and every node
//! must hold only the partitions it replicates.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{elements, members, start_node, start_node_with, Chain, Outcome, Spec, Q};
use dynamo_core::map_state::MapState;
use dynamo_core::{planner, Member, PartitionMap};
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::service::kv::KvService;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::{change, gossip, handoff};
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::GetRequest;
use tonic::Request;

const KEYS: usize = 40;

fn spec() -> Spec {
    Spec {
        gossip_interval_ms: 100,
        request_timeout_ms: 1000,
        ..Spec::default()
    }
}

fn run_tasks(n: &Arc<Node>) {
    tokio::spawn(gossip::run(n.clone()));
    tokio::spawn(change::run(n.clone()));
    tokio::spawn(handoff::run(n.clone()));
}

/// A writer chaining puts on returned contexts over every key, through the nodes in
/// turn, until `stop`.
async fn writer(nodes: Vec<Arc<Node>>, stop: Arc<AtomicBool>, tag: &'static str) -> Outcome {
    let mut out = Outcome::default();
    let mut chain = Chain::default();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", i % KEYS);
        let element = format!("{tag}{i}");
        let (value, ctx) = chain.next(&key, &element);
        let kv = KvService::new(nodes[i % nodes.len()].clone());
        if let Some(ctx) = out.put(&kv, key.clone(), element, value, ctx).await {
            chain.returned(&key, ctx);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    out
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Commits `map` through `via` (passed on to the claimant), waits for every move, then
/// finalizes it (retrying while moves are left).
async fn change_to(via: &Arc<Node>, map: PartitionMap) -> MapState {
    let epoch = map.epoch;
    let committed = change::commit(via, map, false).await.expect("commit");
    assert_eq!(committed.pending.as_ref().map(|m| m.epoch), Some(epoch));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match change::finalize(via, epoch, false).await {
            Ok(state) => return state,
            Err(change::ChangeError::NotReady(why)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not finalized in time: {why}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("finalize: {e}"),
        }
    }
}

/// Every acknowledged element is on every replica of the final map (after the clean-up
/// dropped what non-replicas held).
async fn check(nodes: &[Arc<Node>], outcome: &Outcome, map: &PartitionMap) {
    for k in 0..KEYS {
        let key = format!("k{k}");
        let p = map.partition_of(key.as_bytes());
        for m in map.preference_list(p) {
            let node = nodes.iter().find(|n| n.id() == m.id).unwrap();
            let set = node.store.read(key.as_bytes()).unwrap();
            let stored: BTreeSet<String> = set
                .values()
                .flat_map(|v| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .filter(|e| !e.is_empty())
                .collect();
            outcome.check(&key, &stored);
        }
        outcome.check(&key, &elements(&get(&nodes[0], &key).await));
    }
}

/// Nodes `all[..3]` holding the map of those three in force, and the rest started with no
/// map (as nodes started later from seeds): they learn a change's map when it is committed.
fn three_in_force_and_newcomers(
    net: &Arc<LoopbackNet>,
    all: &[Member],
    spec: &Spec,
) -> Vec<Arc<Node>> {
    let mut nodes: Vec<Arc<Node>> = (0..3)
        .map(|i| start_node(net, &all[..3], i, Arc::new(MemoryEngine::new()), spec))
        .collect();
    for i in 3..all.len() {
        nodes.push(start_node_with(
            net,
            all,
            i,
            Arc::new(MemoryEngine::new()),
            spec,
            MapState::default(),
        ));
    }
    nodes
}

/// A client's get of `key` through `node`.
async fn get(node: &Arc<Node>, key: &str) -> dynamo_proto::v1::GetResponse {
    KvService::new(node.clone())
        .get(Request::new(GetRequest {
            key: key.as_bytes().to_vec(),
            r: None,
        }))
        .await
        .unwrap()
        .into_inner()
}

fn holds(node: &Node, p: u32) -> bool {
    node.store.trees().root(p) != Some(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_and_in_under_a_writer_loses_nothing() {
    let net = LoopbackNet::new();
    let all: Vec<Member> = members(4);
    let spec = spec();
    let nodes = three_in_force_and_newcomers(&net, &all, &spec);
    for n in &nodes {
        run_tasks(n);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(nodes[..3].to_vec(), stop.clone(), "a"));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3 → 4, committed through a node that is not the claimant.
    let old = nodes[0].map();
    let grown = planner::plan(Some(&old), &all, Q, 3).unwrap();
    let state = change_to(&nodes[2], grown.clone()).await;
    assert_eq!(state.current.as_ref(), Some(&grown));
    wait_for("every node holds epoch 2", 10, || {
        nodes
            .iter()
            .all(|n| n.try_map().is_some_and(|m| m.epoch == 2))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 4 → 3: n2 leaves.
    let rest: Vec<Member> = all.iter().filter(|m| m.id != "n2").cloned().collect();
    let shrunk = planner::plan(Some(&grown), &rest, Q, 3).unwrap();
    let drained = change::progress::drained(&nodes[0], "n2").await;
    assert!(drained.is_err(), "n2 is a member of the map in force");
    let state = change_to(&nodes[3], shrunk.clone()).await;
    assert_eq!(state.current.as_ref(), Some(&shrunk));
    change::progress::drained(&nodes[0], "n2")
        .await
        .expect("n2 is drained once its partitions moved");
    stop.store(true, Ordering::Relaxed);
    let outcome = w.await.unwrap();
    let acked: usize = outcome.acked.values().map(BTreeSet::len).sum();
    assert!(acked > 100, "the writer got {acked} puts acknowledged");

    wait_for("every node holds epoch 3", 10, || {
        nodes
            .iter()
            .all(|n| n.try_map().is_some_and(|m| m.epoch == 3))
    })
    .await;
    // Clean-up: every node ends holding exactly the partitions it replicates.
    wait_for("non-replicas drop their partitions", 20, || {
        nodes
            .iter()
            .all(|n| (0..Q).all(|p| shrunk.is_replica(p, n.id()) || !holds(n, p)))
    })
    .await;
    let live: Vec<Arc<Node>> = nodes.iter().filter(|n| n.id() != "n2").cloned().collect();
    // The nodes forget n2, and n2 (still running, still gossiping what it knows) does
    // not come back into their views.
    wait_for("the members forget n2", 10, || {
        live.iter().all(|n| n.gossip.entry("n2").is_none())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10 * spec.gossip_interval_ms)).await;
    for n in &live {
        assert!(n.gossip.entry("n2").is_none(), "{} took n2 back", n.id());
        assert!(!n.health.is_down("n2"), "{} still watches n2", n.id());
    }
    check(&live, &outcome, &shrunk).await;
    eprintln!("3→4→3 under a writer: {acked} acknowledged elements, none lost");
}

/// The claimant (the lowest id of the map in force) dies. Once the failure detector
/// holds it down, the next member stands in for it: a change removing it commits, its
/// partitions move from their other old replicas, and the change is finalized, under a
/// writer, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_claimant_is_removed_through_the_next_member() {
    let net = LoopbackNet::new();
    let all: Vec<Member> = members(4);
    let spec = Spec {
        down_after_ms: 1000,
        ..spec()
    };
    let nodes: Vec<Arc<Node>> = (0..4)
        .map(|i| start_node(&net, &all, i, Arc::new(MemoryEngine::new()), &spec))
        .collect();
    for n in &nodes {
        run_tasks(n);
    }
    let rest = &nodes[1..];
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(rest.to_vec(), stop.clone(), "a"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = nodes[1].map();
    assert_eq!(nodes[1].live().state.claimant().unwrap().id, "n1");

    // Dead: no call reaches it, and none it makes gets through.
    net.partition(&[&["n1"], &["n2", "n3", "n4"]]);
    wait_for("the others hold n1 down", 15, || {
        rest.iter().all(|n| n.health.is_down("n1"))
    })
    .await;
    let without: Vec<Member> = all.iter().filter(|m| m.id != "n1").cloned().collect();
    let shrunk = planner::plan(Some(&old), &without, Q, 3).unwrap();
    let state = change_to(&nodes[3], shrunk.clone()).await;
    assert_eq!(state.current.as_ref(), Some(&shrunk));
    stop.store(true, Ordering::Relaxed);
    let outcome = w.await.unwrap();
    let acked: usize = outcome.acked.values().map(BTreeSet::len).sum();
    assert!(acked > 100, "the writer got {acked} puts acknowledged");
    wait_for("the others hold epoch 2", 10, || {
        rest.iter()
            .all(|n| n.try_map().is_some_and(|m| m.epoch == 2))
    })
    .await;
    wait_for("non-replicas drop their partitions", 20, || {
        rest.iter()
            .all(|n| (0..Q).all(|p| shrunk.is_replica(p, n.id()) || !holds(n, p)))
    })
    .await;
    check(rest, &outcome, &shrunk).await;
}

/// A node that no longer replicates a partition hands what it holds of it and the new
/// replicas lack off to them before it drops its copy. (Such a copy can hold the only
/// copy of an acknowledged write: a node down through a whole change comes back under the
/// old map, its peers refuse its replica writes, and with W=1 its own copy acknowledges
/// one.) Here the version is put into the giving node's store directly, after the change
/// is finalized and before its clean-up runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_handed_off_before_it_is_dropped() {
    let net = LoopbackNet::new();
    let all: Vec<Member> = members(4);
    let spec = spec();
    let nodes = three_in_force_and_newcomers(&net, &all, &spec);
    // n1's change task (transfers in, clean-up) starts only once the version is in.
    for n in &nodes {
        tokio::spawn(gossip::run(n.clone()));
        tokio::spawn(handoff::run(n.clone()));
    }
    for n in &nodes[1..] {
        tokio::spawn(change::run(n.clone()));
    }
    let old = nodes[0].map();
    let grown = planner::plan(Some(&old), &all, Q, 3).unwrap();
    change_to(&nodes[1], grown.clone()).await;
    wait_for("every node holds epoch 2", 10, || {
        nodes
            .iter()
            .all(|n| n.try_map().is_some_and(|m| m.epoch == 2))
    })
    .await;
    let given = (0..Q)
        .find(|&p| old.is_replica(p, "n1") && !grown.is_replica(p, "n1"))
        .expect("n1 gives a partition to n4");
    let key = (0..)
        .map(|i| format!("orphan-{i}"))
        .find(|k| grown.partition_of(k.as_bytes()) == given)
        .unwrap();
    let mut set = dynamo_core::SiblingSet::new();
    let actor = dynamo_core::Actor::new("n1", 99);
    let value = bytes::Bytes::from_static(b"only-on-n1");
    set.update(&Default::default(), &actor, Some(value))
        .unwrap();
    let entry = dynamo_node::network::WriteEntry {
        key: key.clone().into(),
        set: dynamo_core::codec::encode_set(&set).into(),
        hint_for: None,
        sync: false,
    };
    nodes[0].accept(vec![entry]).await.unwrap();
    tokio::spawn(change::run(nodes[0].clone()));
    wait_for("n1 drops the partition it gave", 20, || {
        !holds(&nodes[0], given)
    })
    .await;
    for m in grown.preference_list(given) {
        let node = nodes.iter().find(|n| n.id() == m.id).unwrap();
        let held = node.store.read(key.as_bytes()).unwrap();
        assert_eq!(
            held.values().collect::<Vec<_>>(),
            [&bytes::Bytes::from_static(b"only-on-n1")],
            "{} lacks the version n1 held alone",
            m.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_change_loses_nothing_and_racing_commits_have_one_winner() {
    let net = LoopbackNet::new();
    let all: Vec<Member> = members(5);
    let spec = spec();
    let nodes = three_in_force_and_newcomers(&net, &all, &spec);
    for n in &nodes {
        run_tasks(n);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(nodes[..3].to_vec(), stop.clone(), "b"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = nodes[0].map();
    let to4 = planner::plan(Some(&old), &all[..4], Q, 3).unwrap();
    let to5 = planner::plan(Some(&old), &all, Q, 3).unwrap();
    assert_eq!((to4.epoch, to5.epoch), (2, 2));
    // Two committers race on epoch 2 through different nodes: one wins, the other is told.
    let (a, b) = tokio::join!(
        change::commit(&nodes[1], to4.clone(), false),
        change::commit(&nodes[2], to5.clone(), false)
    );
    let winner = match (a, b) {
        (Ok(_), Err(change::ChangeError::Conflict(_))) => to4.clone(),
        (Err(change::ChangeError::Conflict(_)), Ok(_)) => to5.clone(),
        (a, b) => panic!("expected one winner and one conflict: {a:?} {b:?}"),
    };
    wait_for("every node holds the winner as pending", 10, || {
        nodes
            .iter()
            .filter(|n| winner.member(n.id()).is_some())
            .all(|n| n.live().state.pending.as_ref() == Some(&winner))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        change::abort(&nodes[4], 2, false).await,
        Err(change::ChangeError::Unavailable(_)) | Ok(_)
    ));
    change::abort(&nodes[3], 2, false).await.expect("abort");
    wait_for("every node dropped the pending map", 10, || {
        nodes
            .iter()
            .filter(|n| winner.member(n.id()).is_some())
            .all(|n| n.live().state.pending.is_none())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcome = w.await.unwrap();
    check(&nodes[..3], &outcome, &old).await;
}

/// While a change is pending (and no transfer runs), a get reads the new replicas of its
/// key for repair only: one that holds a stale version receives the join of what was
/// read; one that holds nothing is taken to be still receiving the partition (the
/// transfer brings the key), is not repaired, and is not read for repair in that
/// partition for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_covers_the_pending_preference_list() {
    let net = LoopbackNet::new();
    let all: Vec<Member> = members(4);
    let spec = spec();
    let nodes = three_in_force_and_newcomers(&net, &all, &spec);
    // No change task runs, so nothing is transferred: only read repair can bring a key
    // to the new replica.
    let old = nodes[0].map();
    let grown = planner::plan(Some(&old), &all, Q, 3).unwrap();
    let moving: Vec<String> = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| grown.is_replica(grown.partition_of(k.as_bytes()), "n4"))
        .take(200)
        .collect();
    let partition = |k: &String| old.partition_of(k.as_bytes());
    // Two keys of one partition n4 receives, and one of another.
    let (empty, same_partition, stale) = moving
        .iter()
        .find_map(|a| {
            let b = moving
                .iter()
                .find(|b| *b != a && partition(b) == partition(a))?;
            let c = moving.iter().find(|c| partition(c) != partition(a))?;
            Some((a.clone(), b.clone(), c.clone()))
        })
        .expect("keys to test with");
    let via = |k: &String| {
        nodes
            .iter()
            .find(|n| old.is_replica(partition(k), n.id()))
            .unwrap()
            .clone()
    };
    let mut out = Outcome::default();
    for k in [&empty, &same_partition] {
        let kv = KvService::new(via(k));
        out.put(&kv, k.clone(), "x".into(), "x".into(), Vec::new())
            .await
            .expect("put acknowledged");
    }
    // n4 holds `stale`'s first version, which a second put supersedes before the change.
    let kv = KvService::new(via(&stale));
    let ctx = out
        .put(&kv, stale.clone(), "x".into(), "x".into(), Vec::new())
        .await
        .expect("put acknowledged");
    let first = via(&stale).store.read(stale.as_bytes()).unwrap();
    nodes[3]
        .store
        .join(bytes::Bytes::from(stale.clone()), first)
        .await
        .unwrap();
    out.put(&kv, stale.clone(), "y".into(), "x,y".into(), ctx)
        .await
        .expect("put acknowledged");
    change::commit(&nodes[1], grown.clone(), false)
        .await
        .expect("commit");
    wait_for("n4 holds the pending map", 10, || {
        nodes[3].live().state.pending.as_ref() == Some(&grown)
    })
    .await;
    let values = |k: &String| -> BTreeSet<String> {
        nodes[3]
            .store
            .read(k.as_bytes())
            .unwrap()
            .values()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };

    // The stale new replica is repaired.
    out.check(&stale, &elements(&get(&via(&stale), &stale).await));
    wait_for("the stale new replica is repaired", 10, || {
        values(&stale) == BTreeSet::from(["x,y".to_owned()])
    })
    .await;

    // The empty one is not, and is not read again in that partition for a while.
    let coordinator = via(&empty);
    let arriving = || coordinator.metrics.read_repairs_arriving.get();
    // (A read for repair only takes the budget; one over it is not sent: try again.)
    for _ in 0..50 {
        out.check(&empty, &elements(&get(&coordinator, &empty).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if arriving() > 0 {
            break;
        }
    }
    assert_eq!(
        arriving(),
        1,
        "the empty new replica is found still receiving"
    );
    let (p, version) = (partition(&empty), coordinator.live().state.version);
    let now = tokio::time::Instant::now();
    assert!(coordinator.arriving.skip("n4", p, version, now));
    assert!(!coordinator
        .arriving
        .skip("n4", partition(&stale), version, now));
    out.check(
        &same_partition,
        &elements(&get(&coordinator, &same_partition).await),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(arriving(), 1, "not read again in that partition");
    assert!(values(&empty).is_empty(), "not repaired key by key");
    assert!(values(&same_partition).is_empty());
}

/// The in-process transport carries the sender's map epoch and is refused as the gRPC
/// replica service refuses: a write from a node that missed a pending map, of a key whose
/// partition the pending map moves away from the receiver, is refused there (so its W
/// acknowledgements come from replicas that stay); a hint is not; and once the
/// sender holds the pending map too, the same write is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loopback_transport_refuses_writes_made_under_a_map_that_missed_a_change() {
    use dynamo_node::network::WriteEntry;

    let net = LoopbackNet::new();
    let all: Vec<Member> = members(4);
    let spec = spec();
    let nodes: Vec<Arc<Node>> = (0..4)
        .map(|i| start_node(&net, &all, i, Arc::new(MemoryEngine::new()), &spec))
        .collect();
    let old = nodes[0].map();
    let rest: Vec<Member> = all.iter().filter(|m| m.id != "n4").cloned().collect();
    let shrunk = planner::plan(Some(&old), &rest, Q, 3).unwrap();
    let pending = MapState::in_force((*old).clone())
        .commit(shrunk.clone())
        .unwrap()
        .unwrap();
    // Only n4 (leaving) learns the change; n1 still writes under epoch 1.
    assert!(nodes[3].install(pending.clone()).unwrap());
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let p = old.partition_of(k.as_bytes());
            old.is_replica(p, "n4") && old.is_replica(p, "n1")
        })
        .unwrap();
    let entry = |hint_for: Option<&str>| WriteEntry {
        key: key.clone().into(),
        set: dynamo_core::codec::encode_set(&dynamo_core::SiblingSet::new()).into(),
        hint_for: hint_for.map(str::to_owned),
        sync: false,
    };
    let timeout = Duration::from_secs(1);
    let refused = nodes[0]
        .transport
        .write(&all[3], vec![entry(None)], timeout)
        .await
        .expect_err("n4 refuses a write that would leave with the partition");
    assert!(
        refused.to_string().contains("is pending"),
        "the refusal says why: {refused}"
    );
    nodes[0]
        .transport
        .write(&all[3], vec![entry(Some("n2"))], timeout)
        .await
        .expect("a hint is kept");
    assert!(nodes[0].install(pending).unwrap());
    nodes[0]
        .transport
        .write(&all[3], vec![entry(None)], timeout)
        .await
        .expect("a sender that holds the pending map writes to both lists");
}

/// A plan's estimate of what it moves comes from the store's key count and size, not a
/// scan: with every key on every node (N = 3 of 3), each moved partition replica counts
/// as the node's keys over its partitions.
#[tokio::test]
async fn a_plan_estimates_the_keys_and_bytes_it_moves() {
    let net = LoopbackNet::new();
    let m = members(4);
    let nodes: Vec<Arc<Node>> = (0..3)
        .map(|i| start_node(&net, &m[..3], i, Arc::new(MemoryEngine::new()), &spec()))
        .collect();
    let keys = 20 * Q as u64;
    for i in 0..keys {
        common::put_w(&nodes[0], &format!("estimate-{i}"), "v", 3).await;
    }
    let req = dynamo_proto::v1::PlanRequest {
        members: m.iter().map(dynamo_proto::maps::member_to_proto).collect(),
        partitions: 0,
        replication: 0,
    };
    let plan = change::plan::preview(&nodes[0], req).expect("a plan");
    assert!(!plan.moves.is_empty(), "adding a node moves partitions");
    assert_eq!(
        plan.estimated_keys,
        keys / u64::from(Q) * plan.moves.len() as u64,
        "{} keys on node 1 over its {Q} partitions, times {} moves",
        keys,
        plan.moves.len()
    );
    assert!(plan
        .moves
        .iter()
        .all(|mv| mv.estimated_keys == keys / u64::from(Q)));
    assert!(plan.estimated_bytes >= plan.estimated_keys * "v".len() as u64);
}
