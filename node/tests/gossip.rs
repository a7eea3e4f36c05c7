//! Gossip between in-process nodes on the loopback transport: a newer partition map
//! committed on one node spreads to every node and is put in force there; a node cut off
//! is suspected by the others and trusted again once the cut heals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{members, start_node, Spec};
use dynamo_core::map_state::MapState;
use dynamo_core::planner;
use dynamo_node::gossip;
use dynamo_node::network::loopback::LoopbackNet;
use dynamo_node::node::Node;
use dynamo_node::storage::memory::MemoryEngine;

/// Gossip rounds of these tests.
const ROUND: Duration = Duration::from_millis(100);

fn cluster(s: usize) -> (Arc<LoopbackNet>, Vec<Arc<Node>>) {
    let members = members(s);
    let net = LoopbackNet::new();
    let spec = Spec {
        gossip_interval_ms: ROUND.as_millis() as u64,
        ..Spec::default()
    };
    let nodes: Vec<Arc<Node>> = (0..s)
        .map(|i| start_node(&net, &members, i, Arc::new(MemoryEngine::new()), &spec))
        .collect();
    for n in &nodes {
        tokio::spawn(gossip::run(n.clone()));
    }
    (net, nodes)
}

/// Waits up to `rounds` gossip rounds for `cond`; how many it took, or `None`.
async fn within_rounds(rounds: u32, cond: impl Fn() -> bool) -> Option<f64> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < ROUND * rounds {
        if cond() {
            return Some(start.elapsed().as_secs_f64() / ROUND.as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_map_spreads_to_every_node_and_an_older_one_does_not() {
    let (_net, nodes) = cluster(5);
    // Past the first rounds, in which every node talks to every other.
    tokio::time::sleep(ROUND * 3).await;
    let current = nodes[0].map();
    let next = planner::plan(Some(&current), &current.members, current.partitions, 3).unwrap();
    assert_eq!(next.epoch, 2);
    let mut state = MapState::in_force(next.clone());
    state.version = 2;
    assert!(nodes[2].install(state).unwrap());
    let took = within_rounds(10, || nodes.iter().all(|n| *n.map() == next))
        .await
        .expect("every node adopts epoch 2 within 10 rounds");
    eprintln!("a map of a newer epoch reached 5 nodes in {took:.2} rounds");
    assert!(took <= 3.0, "the map took {took:.2} rounds to spread");
    // An older state is never taken back, neither installed directly nor by gossip.
    assert!(!nodes[4]
        .install(MapState::in_force((*current).clone()))
        .unwrap());
    tokio::time::sleep(ROUND * 2).await;
    assert!(nodes.iter().all(|n| n.map().epoch == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_is_suspected_and_trusted_again_when_the_cut_heals() {
    let (net, nodes) = cluster(3);
    let ids: Vec<&str> = nodes.iter().map(|n| n.id()).collect();
    within_rounds(20, || nodes[0].gossip.entries().len() == 3)
        .await
        .expect("everyone known");
    net.partition(&[&[ids[0], ids[1]], &[ids[2]]]);
    let suspected = within_rounds(60, || {
        !nodes[0].health.is_up(ids[2]) && !nodes[2].health.is_up(ids[0])
    })
    .await
    .expect("both sides suspect each other");
    assert!(nodes[0].health.is_up(ids[1]), "the same side is trusted");
    net.heal();
    let healed = within_rounds(30, || {
        nodes[0].health.is_up(ids[2]) && nodes[2].health.is_up(ids[0])
    })
    .await
    .expect("trusted again after the cut heals");
    eprintln!("cut: suspected after {suspected:.1} rounds; healed: trusted after {healed:.1}");
}
