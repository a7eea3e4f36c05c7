//! What Merkle anti-entropy costs: three in-process replicas (memory engines, the real
//! store, trees and exchange over the loopback transport) holding `--keys` keys of
//! 100-byte values, with the third missing a fraction of them; one sweep of the third
//! node (each partition against the next replica) is timed and its bytes counted.
//!
//! ```text
//! cargo run --release --no-default-features -p dynamo-node --example antientropy_bench -- [KEYS] [RUNS]
//! ```
//!
//! Prints, for identical replicas and for 0.1% and 1% of the keys missing, the median
//! over the runs of the bytes exchanged, the time, and the ratio of bytes exchanged to
//! the missing keys' own size (key plus encoded set).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dynamo_core::codec::encode_set;
use dynamo_core::{planner, Actor, CausalContext, Member, SiblingSet};
use dynamo_node::antientropy::{self, Peers};
use dynamo_node::clock::SystemClock;
use dynamo_node::config::NodeConfig;
use dynamo_node::identity;
use dynamo_node::network::loopback::{LoopbackNet, LoopbackTransport};
use dynamo_node::node::Node;
use dynamo_node::storage::memory::MemoryEngine;
use dynamo_node::store::{Change, Store};

const Q: u32 = 256;

fn start(net: &Arc<LoopbackNet>, members: &[Member], i: usize) -> Arc<Node> {
    let m = &members[i];
    let cfg = NodeConfig {
        node_id: m.id.clone(),
        cluster_id: "bench".into(),
        cluster_secret: "bench-secret-0123456789abcdef".into(),
        members: members.to_vec(),
        partitions: Q,
        ..NodeConfig::default()
    };
    let engine = Arc::new(MemoryEngine::new());
    let identity = identity::open(&*engine, &m.id, &cfg.cluster_id).unwrap();
    let map = planner::plan(None, members, Q, 3).unwrap();
    let store = Store::new(engine, Q, false);
    let transport = Arc::new(LoopbackTransport::new(net.clone(), m.id.clone()));
    let node = Arc::new(Node::new(
        cfg,
        identity,
        dynamo_core::map_state::MapState::in_force(map),
        store,
        transport,
        Arc::new(SystemClock),
    ));
    net.register(&node);
    node
}

/// Key `i`'s set: one 100-byte value written by n1.
fn set_of(i: usize) -> SiblingSet {
    let mut s = SiblingSet::new();
    let value = format!("{i:0>100}");
    s.update(
        &CausalContext::new(),
        &Actor::new("n1", 1).at_epoch(1 + i as u64),
        Some(Bytes::from(value)),
    )
    .unwrap();
    s
}

struct Run {
    bytes: u64,
    millis: f64,
    missing_bytes: u64,
    pulled: u64,
}

async fn run(keys: usize, missing_every: Option<usize>) -> Run {
    let net = LoopbackNet::new();
    let members: Vec<Member> = (1..=3)
        .map(|i| Member::new(format!("n{i}"), format!("mem:{i}")))
        .collect();
    let nodes: Vec<Arc<Node>> = (0..3).map(|i| start(&net, &members, i)).collect();
    let mut missing_bytes = 0;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        for (n, node) in nodes.iter().enumerate() {
            let changes: Vec<Change> = chunk
                .iter()
                .filter(|&&i| n < 2 || missing_every.is_none_or(|every| i % every != 0))
                .map(|&i| Change::Join {
                    key: Bytes::from(format!("key-{i:08}")),
                    set: set_of(i),
                })
                .collect();
            node.store.apply_all(changes).await.unwrap();
        }
        if let Some(every) = missing_every {
            missing_bytes += chunk
                .iter()
                .filter(|&&i| i % every == 0)
                .map(|&i| (12 + encode_set(&set_of(i)).len()) as u64)
                .sum::<u64>();
        }
    }
    let started = Instant::now();
    let report = antientropy::sweep(&nodes[2], None, Peers::Next).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    Run {
        bytes: report.bytes,
        millis,
        missing_bytes,
        pulled: report.pulled,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map_or(1_000_000, |a| a.parse().expect("KEYS"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    println!(
        "{keys} keys of 100 bytes, 3 replicas, Q={Q}; medians of {runs} runs; one sweep of node 3"
    );
    println!(
        "{:<14} {:>12} {:>10} {:>14} {:>10} {:>8}",
        "divergence", "bytes", "ms", "missing bytes", "ratio", "pulled"
    );
    for (name, every) in [
        ("identical", None),
        ("0.1% missing", Some(1000)),
        ("1% missing", Some(100)),
    ] {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(run(keys, every).await);
        }
        let bytes = median(all.iter().map(|r| r.bytes as f64).collect());
        let ms = median(all.iter().map(|r| r.millis).collect());
        let missing = all[0].missing_bytes as f64;
        let ratio = if missing > 0.0 {
            format!("{:.2}", bytes / missing)
        } else {
            "-".into()
        };
        println!(
            "{name:<14} {bytes:>12.0} {ms:>10.1} {missing:>14.0} {ratio:>10} {:>8}",
            all[0].pulled
        );
    }
}
