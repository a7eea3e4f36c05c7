//! A network partition between real node processes: both sides keep taking writes over
//! gRPC, and the writes merge when it heals.
//!
//! Nodes reach each other through proxies (`dynamo_tests::proxy`); the partition holds
//! every byte between the two sides, so calls across it get no answer until their
//! timeouts, as on a network that drops packets. Clients reach the nodes of their own
//! side directly. This exercises what the in-process partition test cannot: the gRPC
//! transport telling a peer that times out (it may have seen the request) from one it
//! cannot connect to, over HTTP/2 connections that stall and, after the heal, resume.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dynamo_proto::v1::{kv_client::KvClient, GetRequest, PutRequest};
use dynamo_tests::{eventually, Cluster, Options};
use tonic::transport::Channel;

const KEYS: usize = 4;
const SPLIT: Duration = Duration::from_secs(7);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Outcome {
    acked: BTreeMap<String, BTreeSet<String>>,
    tried: BTreeMap<String, BTreeSet<String>>,
}

/// Adds elements `<name>.<n>` to the keys in turn through `kvs` until `stop`: a
/// read-modify-write, or a blind put when the read finds too few replicas.
async fn client(name: String, kvs: Vec<KvClient<Channel>>, stop: Arc<AtomicBool>) -> Outcome {
    let mut out = Outcome::default();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("set-{}", n % KEYS);
        let mut kv = kvs[n % kvs.len()].clone();
        let element = format!("{name}.{n}");
        let get = GetRequest {
            key: key.clone().into_bytes(),
            r: None,
        };
        let (value, context) = match tokio::time::timeout(CLIENT_TIMEOUT, kv.get(get)).await {
            Ok(Ok(read)) => {
                let read = read.into_inner();
                let mut set = elements(&read);
                set.insert(element.clone());
                (set.into_iter().collect::<Vec<_>>().join(","), read.context)
            }
            _ => (element.clone(), Vec::new()),
        };
        let put = PutRequest {
            key: key.clone().into_bytes(),
            value: value.into_bytes(),
            context,
            w: None,
        };
        out.tried
            .entry(key.clone())
            .or_default()
            .insert(element.clone());
        if let Ok(Ok(_)) = tokio::time::timeout(CLIENT_TIMEOUT, kv.put(put)).await {
            out.acked.entry(key).or_default().insert(element);
        }
    }
    out
}

fn merge(into: &mut BTreeMap<String, BTreeSet<String>>, from: BTreeMap<String, BTreeSet<String>>) {
    for (k, e) in from {
        into.entry(k).or_default().extend(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_of_a_partition_take_writes_over_grpc_that_merge_when_it_heals() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let c = Cluster::start(Options {
            nodes: 5,
            request_timeout_ms: 500,
            proxied: true,
            ..Options::default()
        });
        let (minority, majority) = ([0, 1], [2, 3, 4]);
        // Writes warm every connection first, so the partition stalls open ones too.
        for k in 0..KEYS {
            for i in 0..5 {
                put_ok(&c, i, &format!("set-{k}"), "", &[]).await;
            }
        }
        let mut far = false;
        for k in 0..KEYS {
            let replicas = replicas_of(&c, &format!("set-{k}")).await;
            far |= replicas.iter().all(|r| majority.contains(r));
        }
        assert!(far, "no key has all its replicas on the majority side");

        c.partition(&[&minority, &majority]);
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for (side, nodes) in [("minority", &minority[..]), ("majority", &majority[..])] {
            for n in 0..2 {
                let kvs = nodes.iter().map(|&i| c.kv(i)).collect();
                let name = format!("{side}{n}");
                clients.push((side, tokio::spawn(client(name, kvs, stop.clone()))));
            }
        }
        tokio::time::sleep(SPLIT).await;
        stop.store(true, Ordering::Relaxed);
        let (mut acked, mut tried) = (BTreeMap::new(), BTreeMap::new());
        let mut by_side: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for (side, client) in clients {
            let out = client.await.expect("client task");
            merge(by_side.entry(side).or_default(), out.acked.clone());
            merge(&mut acked, out.acked);
            merge(&mut tried, out.tried);
        }
        for (side, by_key) in &by_side {
            let counts: Vec<usize> = (0..KEYS)
                .map(|k| by_key.get(&format!("set-{k}")).map_or(0, BTreeSet::len))
                .collect();
            eprintln!("{side}: puts acknowledged per key {counts:?}");
            assert!(
                counts.iter().all(|&n| n > 0),
                "the {side} side could not write every key: {counts:?}"
            );
        }

        c.heal();
        let drained = eventually(Duration::from_secs(60), async || {
            for i in 0..5 {
                if hints_pending(&c, i).await > 0 {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(drained, "hints still pending 60 s after the heal");

        for k in 0..KEYS {
            let key = format!("set-{k}");
            let get = |r| GetRequest {
                key: key.clone().into_bytes(),
                r,
            };
            let read = c
                .kv(0)
                .get(get(Some(3)))
                .await
                .unwrap_or_else(|s| panic!("get {key} from all replicas: {s:?}"))
                .into_inner();
            let stored = elements(&read);
            let lost: Vec<_> = acked[&key].difference(&stored).collect();
            assert!(
                lost.is_empty(),
                "{key}: acknowledged elements lost: {lost:?}"
            );
            let invented: Vec<_> = stored.difference(&tried[&key]).collect();
            assert!(invented.is_empty(), "{key}: never added: {invented:?}");

            let merged = PutRequest {
                key: key.clone().into_bytes(),
                value: stored
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes(),
                context: read.context,
                w: Some(3),
            };
            c.kv(4).put(merged).await.expect("merge put with W=3");
            let after = c
                .kv(2)
                .get(get(Some(3)))
                .await
                .expect("get after merge")
                .into_inner();
            assert_eq!(after.siblings.len(), 1, "{key}: siblings left after merge");
        }
    })
    .await
    .expect("test timed out");
}
