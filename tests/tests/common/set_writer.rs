//! The set workload under membership changes: writers that add unique elements to a
//! few keys, either chaining puts on the contexts their previous puts returned or by
//! read-modify-write, and record what was acknowledged and what was tried.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dynamo_proto::v1::kv_client::KvClient;
use dynamo_proto::v1::{GetRequest, PutRequest};
use tonic::transport::Channel;

use super::elements;

/// Keys the writers add elements to.
pub const KEYS: usize = 24;

/// What a writer saw: elements acknowledged and tried, per key.
#[derive(Default)]
pub struct Seen {
    pub acked: BTreeMap<String, BTreeSet<String>>,
    pub tried: BTreeMap<String, BTreeSet<String>>,
}

/// A writer of the set workload through `clients` in turn: `chained` puts each key's
/// own elements with the context its previous put returned (no reads); otherwise it
/// reads, adds its element to the union, and writes back.
pub async fn writer(
    clients: Vec<KvClient<Channel>>,
    chained: bool,
    tag: String,
    stop: Arc<AtomicBool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut chain: BTreeMap<String, (Vec<u8>, BTreeSet<String>)> = BTreeMap::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("ch-{}", i % KEYS);
        let element = format!("{tag}{i}");
        let mut kv = clients[i % clients.len()].clone();
        i += 1;
        let (value, context) = if chained {
            let (ctx, mine) = chain.entry(key.clone()).or_default();
            mine.insert(element.clone());
            (
                mine.iter().cloned().collect::<Vec<_>>().join(","),
                ctx.clone(),
            )
        } else {
            let read = kv
                .get(GetRequest {
                    key: key.clone().into_bytes(),
                    r: None,
                })
                .await;
            let Ok(read) = read else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let read = read.into_inner();
            let mut set = elements(&read);
            set.insert(element.clone());
            (set.into_iter().collect::<Vec<_>>().join(","), read.context)
        };
        seen.tried
            .entry(key.clone())
            .or_default()
            .insert(element.clone());
        let put = kv
            .put(PutRequest {
                key: key.clone().into_bytes(),
                value: value.into_bytes(),
                context,
                w: None,
            })
            .await;
        match put {
            Ok(r) => {
                seen.acked.entry(key.clone()).or_default().insert(element);
                if chained {
                    chain.get_mut(&key).expect("chained key").0 = r.into_inner().context;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    seen
}

impl Seen {
    /// Adds what another writer saw.
    pub fn merge(&mut self, other: Seen) {
        for (k, e) in other.acked {
            self.acked.entry(k).or_default().extend(e);
        }
        for (k, e) in other.tried {
            self.tried.entry(k).or_default().extend(e);
        }
    }

    /// Elements acknowledged in all.
    pub fn acked_count(&self) -> usize {
        self.acked.values().map(BTreeSet::len).sum()
    }

    /// Checks a key's final elements: every acknowledged one is there, and nothing that
    /// was never written.
    pub fn check(&self, key: &str, got: &BTreeSet<String>) {
        let none = BTreeSet::new();
        let lost: Vec<_> = self
            .acked
            .get(key)
            .unwrap_or(&none)
            .difference(got)
            .collect();
        assert!(
            lost.is_empty(),
            "{key}: acknowledged elements lost: {lost:?}"
        );
        let invented: Vec<_> = got
            .difference(self.tried.get(key).unwrap_or(&none))
            .collect();
        assert!(invented.is_empty(), "{key}: never written: {invented:?}");
    }
}
