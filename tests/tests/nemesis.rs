//! Acknowledged writes survive a random schedule of faults, checked end to end.
//!
//! Clients keep a set per key in the store, Riak style: read every sibling, take the union
//! of their elements, add a new element and write the result back with the read's
//! context. Half of them send raw gRPC to a node picked at random for each request; the
//! other half use the client library (requests to the key's replicas, failing over on
//! connection failures). Meanwhile a nemesis SIGKILLs, restarts, freezes and thaws nodes
//! at random (at most two of five faulty at a time, so a sloppy quorum can always be
//! found), partitions the nodes (1 | 4 or 2 | 3; the nodes reach each other through
//! `dynamo_tests::proxy` links, which hold every byte across the cut) and heals them, and
//! once a run it restarts a killed node with its data directory wiped. Once every node is back
//! and every hint delivered, a read of each key from all its replicas must hold every
//! element whose put was acknowledged, and nothing no client ever tried to add.
//!
//! What this catches: a put that supersedes a sibling its context did not cover, a dot
//! handed out twice (a wiped node reusing its old counters), an acknowledgement without
//! W copies once a node holding one is wiped. (Killed processes keep what they wrote in
//! the page cache, so this does not test syncs; `durability.rs` and the store's crash
//! tests do. A lost hint is mostly masked here, since elements are carried forward by
//! later writes; `repair.rs` tests handoff on its own.)
//!
//! The schedule comes from a seed, printed at the start; `NEMESIS_SEED=<n>` replays it.
//! The node processes are real, so the interleaving of requests is not replayed exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dynamo_core::codec::decode_set;
use dynamo_proto::v1::{
    kv_client::KvClient, GetRequest, HintsRequest, PutRequest, ReplicaReadRequest,
};
use dynamo_tests::{eventually, Cluster, Options};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const NODES: usize = 5;
const KEYS: usize = 6;
const CLIENTS: usize = 6;
const MAX_FAULTY: usize = 2;
const CHAOS: Duration = Duration::from_secs(20);
/// A client gives up on a request after this long (the nodes' own timeout is 1 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// What one client saw of the elements it tried to add.
#[derive(Default)]
struct Outcome {
    /// Elements whose put was acknowledged, per key.
    acked: BTreeMap<String, BTreeSet<String>>,
    /// Elements whose put failed: they may or may not have been stored.
    uncertain: BTreeMap<String, BTreeSet<String>>,
    /// Failed requests, by kind (see [`failure`]).
    failures: BTreeMap<String, u64>,
}

/// A short name for how a request failed, for the summary.
fn failure<T>(
    op: &str,
    r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
) -> Option<String> {
    match r {
        Ok(Ok(_)) => None,
        Ok(Err(s)) => {
            let msg: String = s.message().chars().take(48).collect();
            Some(format!("{op} {:?}: {msg}", s.code()))
        }
        Err(_) => Some(format!("{op}: no answer in {CLIENT_TIMEOUT:?}")),
    }
}

/// How a client reaches the store.
enum Via {
    /// Raw gRPC to a node picked at random for each request, as behind a load balancer.
    Raw(Vec<KvClient<Channel>>),
    /// The Rust client library: requests go to the key's replicas, failing over on
    /// connection failures.
    Library(dynamo_client::Client),
}

impl Via {
    /// The elements of `key` and the read's context, or how the get failed.
    async fn get(
        &self,
        rng: &mut StdRng,
        key: &str,
    ) -> Result<(BTreeSet<String>, Vec<u8>), String> {
        match self {
            Via::Raw(kvs) => {
                let mut kv = kvs[rng.random_range(0..kvs.len())].clone();
                let get = GetRequest {
                    key: key.as_bytes().to_vec(),
                    r: None,
                };
                match tokio::time::timeout(CLIENT_TIMEOUT, kv.get(get)).await {
                    Ok(Ok(read)) => {
                        let read = read.into_inner();
                        Ok((elements(&read), read.context))
                    }
                    failed => Err(failure("get", failed).expect("a failure")),
                }
            }
            Via::Library(client) => match client.get(key, None).await {
                Ok(read) => Ok((elements_of(read.values()), read.context.as_bytes().to_vec())),
                Err(e) => Err(library_failure("get", e)),
            },
        }
    }

    /// Writes `value` with `context`; the context the put returned, or how it failed.
    async fn put(
        &self,
        rng: &mut StdRng,
        key: &str,
        value: String,
        context: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        match self {
            Via::Raw(kvs) => {
                // Often through another node than the read, as a load balancer would.
                let mut kv = kvs[rng.random_range(0..kvs.len())].clone();
                let put = PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.into_bytes(),
                    context,
                    w: None,
                };
                match tokio::time::timeout(CLIENT_TIMEOUT, kv.put(put)).await {
                    Ok(Ok(put)) => Ok(put.into_inner().context),
                    failed => Err(failure("put", failed).expect("a failure")),
                }
            }
            Via::Library(client) => {
                let context = dynamo_client::Context::from_bytes(context);
                client
                    .put(key, value, &context, None)
                    .await
                    .map(|c| c.as_bytes().to_vec())
                    .map_err(|e| library_failure("put", e))
            }
        }
    }
}

fn library_failure(op: &str, e: dynamo_client::Error) -> String {
    let msg: String = e.to_string().chars().take(48).collect();
    format!("{op} (client library): {msg}")
}

/// Adds elements to random keys' sets until `stop`. A `chained` client never reads: each
/// put of a key is its own elements of that key so far, with the context its previous
/// acknowledged put of the key returned, so other clients' elements survive only if a
/// returned context covers no more than that client's own writes.
async fn client(id: usize, seed: u64, via: Via, chained: bool, stop: Arc<AtomicBool>) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = Outcome::default();
    let mut seq = 0u64;
    // For a chained client: per key, the last returned context and its elements.
    let mut own: BTreeMap<String, (Vec<u8>, BTreeSet<String>)> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let key = format!("set-{}", rng.random_range(0..KEYS));
        let (mut set, context) = if chained {
            let (context, mine) = own.entry(key.clone()).or_default();
            (mine.clone(), context.clone())
        } else {
            match via.get(&mut rng, &key).await {
                Ok(read) => read,
                Err(kind) => {
                    *out.failures.entry(kind).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        };
        seq += 1;
        let element = format!("c{id}.{seq}");
        set.insert(element.clone());
        if chained {
            own.entry(key.clone())
                .or_default()
                .1
                .insert(element.clone());
        }
        let value = set.into_iter().collect::<Vec<_>>().join(",");
        let book = match via.put(&mut rng, &key, value, context).await {
            Ok(returned) => {
                if chained {
                    own.entry(key.clone()).or_default().0 = returned;
                }
                &mut out.acked
            }
            Err(kind) => {
                *out.failures.entry(kind).or_default() += 1;
                &mut out.uncertain
            }
        };
        book.entry(key).or_default().insert(element);
    }
    out
}

/// Panics if one dot carries different bytes on two nodes for any of `keys` (a reused
/// dot, Riak's KV679: a version lost on every join even when no element went missing).
async fn assert_dots_unique(c: &Cluster, keys: &[String]) {
    // (key, dot) -> the first node seen holding it, and its value (None: a tombstone).
    type FirstHolder = (usize, Option<Vec<u8>>);
    let mut seen: BTreeMap<(String, String), FirstHolder> = BTreeMap::new();
    for i in 0..NODES {
        let read = ReplicaReadRequest {
            keys: keys.iter().map(|k| k.clone().into_bytes().into()).collect(),
            cluster_id: "test-cluster".into(),
            map_epoch: 0,
        };
        let sets = c
            .replica(i)
            .read(read)
            .await
            .unwrap_or_else(|s| panic!("replica read of node-{}: {s:?}", i + 1))
            .into_inner()
            .sets;
        for (key, raw) in keys.iter().zip(sets) {
            if raw.is_empty() {
                continue;
            }
            let set = decode_set(&raw).expect("a stored set decodes");
            for sib in set.siblings() {
                let value = sib.value.as_ref().map(|v| v.to_vec());
                let at = (key.clone(), sib.dot.to_string());
                match seen.get(&at) {
                    Some((first, v)) => assert_eq!(
                        v,
                        &value,
                        "{key}: dot {} carries different bytes on node-{} and node-{}",
                        sib.dot,
                        first + 1,
                        i + 1
                    ),
                    None => {
                        seen.insert(at, (i, value));
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Up,
    Killed,
    Frozen,
}

/// One step of the nemesis: break a healthy node or heal a broken one.
fn nemesis_step(
    c: &mut Cluster,
    states: &mut [State],
    wiped: &mut bool,
    rng: &mut StdRng,
    log: &mut Vec<String>,
) {
    let faulty: Vec<usize> = (0..states.len())
        .filter(|&i| states[i] != State::Up)
        .collect();
    let heal = !faulty.is_empty() && (faulty.len() >= MAX_FAULTY || rng.random_bool(0.4));
    if heal {
        let i = faulty[rng.random_range(0..faulty.len())];
        match states[i] {
            State::Killed if !*wiped && rng.random_bool(0.25) => {
                // Its disk replaced: a new incarnation with nothing stored. Once per run,
                // as every acknowledged write has W = 2 copies to lose.
                c.wipe(i);
                c.restart(i);
                *wiped = true;
                log.push(format!("wiped node-{}", i + 1));
            }
            State::Killed => c.restart(i),
            State::Frozen => c.thaw(i),
            State::Up => unreachable!(),
        }
        log.push(format!("heal node-{} ({:?})", i + 1, states[i]));
        states[i] = State::Up;
    } else {
        let up: Vec<usize> = (0..states.len())
            .filter(|&i| states[i] == State::Up)
            .collect();
        let i = up[rng.random_range(0..up.len())];
        if rng.random_bool(0.6) {
            c.kill9(i);
            states[i] = State::Killed;
        } else {
            c.freeze(i);
            states[i] = State::Frozen;
        }
        log.push(format!("{:?} node-{}", states[i], i + 1));
    }
}

// The test body blocks its thread while a node restarts; the clients run on the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_set_adds_survive_random_kills_freezes_partitions_restarts_and_a_wipe() {
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    eprintln!("nemesis seed {seed} (NEMESIS_SEED={seed} replays the schedule)");
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut c = Cluster::start(Options {
            nodes: NODES,
            proxied: true,
            extra: vec!["--anti-entropy-interval-ms".into(), "500".into()],
            ..Options::default()
        });
        let kvs: Vec<_> = (0..NODES).map(|i| c.kv(i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        // Half the clients send raw gRPC to random nodes, half use the client library.
        let addrs: Vec<String> = c.nodes.iter().map(|n| n.grpc.to_string()).collect();
        let mut clients = Vec::new();
        for id in 0..CLIENTS {
            let via = if id % 2 == 0 {
                Via::Raw(kvs.clone())
            } else {
                let mut config = dynamo_client::ClientConfig::new(&addrs);
                config.request_timeout = CLIENT_TIMEOUT;
                config.route_by_key = true;
                Via::Library(config.connect().await.expect("client library"))
            };
            // One raw and one library client chain puts on returned contexts.
            let chained = id < 2;
            clients.push(tokio::spawn(client(id, seed, via, chained, stop.clone())));
        }

        let mut rng = StdRng::seed_from_u64(seed);
        let mut states = [State::Up; NODES];
        let mut log = Vec::new();
        let mut wiped = false;
        let mut split = false;
        let start = Instant::now();
        while start.elapsed() < CHAOS {
            std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
            if rng.random_bool(0.15) {
                // A network partition between the nodes (clients still reach every node).
                if split {
                    c.heal();
                    log.push("heal partition".to_owned());
                } else {
                    let mut order: Vec<usize> = (0..NODES).collect();
                    order.shuffle(&mut rng);
                    let (a, b) = order.split_at(rng.random_range(1..=2));
                    c.partition(&[a, b]);
                    let names = |side: &[usize]| {
                        side.iter()
                            .map(|i| format!("node-{}", i + 1))
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    log.push(format!("partition {} | {}", names(a), names(b)));
                }
                split = !split;
            } else {
                nemesis_step(&mut c, &mut states, &mut wiped, &mut rng, &mut log);
            }
        }
        c.heal();
        for (i, state) in states.iter().enumerate() {
            match state {
                State::Killed => c.restart(i),
                State::Frozen => c.thaw(i),
                State::Up => {}
            }
        }
        // Clients keep writing for a moment on the healed cluster, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut tried = acked.clone();
        let (mut n_acked, mut n_uncertain) = (0, 0);
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for client in clients {
            let out = client.await.expect("client task");
            for (kind, n) in out.failures {
                *failures.entry(kind).or_default() += n;
            }
            for (key, elems) in out.acked {
                n_acked += elems.len();
                tried.entry(key.clone()).or_default().extend(elems.clone());
                acked.entry(key).or_default().extend(elems);
            }
            for (key, elems) in out.uncertain {
                n_uncertain += elems.len();
                tried.entry(key).or_default().extend(elems);
            }
        }
        eprintln!(
            "nemesis: {}\n{n_acked} puts acknowledged, {n_uncertain} failed; failures: {failures:#?}",
            log.join(", ")
        );
        assert!(
            log.iter().any(|l| l.starts_with("Killed")),
            "the schedule killed no node"
        );
        assert!(n_acked >= 50, "only {n_acked} puts acknowledged");

        let drained = eventually(Duration::from_secs(60), async || {
            for i in 0..NODES {
                match c.admin(i).hints(HintsRequest {}).await {
                    Ok(h) if h.get_ref().pending == 0 => {}
                    _ => return false,
                }
            }
            true
        })
        .await;
        assert!(drained, "hints still pending 60 s after every node was back");
        // Anti-entropy runs in the background: every partition's replicas converge to
        // equal Merkle roots, with no client read (the checks below read with R=3).
        let healed = Instant::now();
        let converged = eventually(Duration::from_secs(60), async || {
            replicas_converged(&c).await
        })
        .await;
        assert!(
            converged,
            "replicas' Merkle roots still differ 60 s after the heal (seed {seed})"
        );
        eprintln!(
            "nemesis: replicas converged {} ms after the hints drained",
            healed.elapsed().as_millis()
        );

        for key in (0..KEYS).map(|k| format!("set-{k}")) {
            let get = GetRequest {
                key: key.clone().into_bytes(),
                r: Some(3),
            };
            let read = c
                .kv(0)
                .get(get)
                .await
                .unwrap_or_else(|s| panic!("get {key} from all replicas: {s:?}"))
                .into_inner();
            let stored = elements(&read);
            let want = acked.get(&key).cloned().unwrap_or_default();
            let lost: Vec<_> = want.difference(&stored).collect();
            assert!(
                lost.is_empty(),
                "{key}: {} acknowledged elements lost: {lost:?} (seed {seed})",
                lost.len()
            );
            let known = tried.get(&key).cloned().unwrap_or_default();
            let invented: Vec<_> = stored.difference(&known).collect();
            assert!(
                invented.is_empty(),
                "{key}: elements no client added: {invented:?} (seed {seed})"
            );
        }
        let keys: Vec<String> = (0..KEYS).map(|k| format!("set-{k}")).collect();
        assert_dots_unique(&c, &keys).await;
    })
    .await
    .expect("test timed out");
}
