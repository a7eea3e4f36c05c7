//! The clients: each keeps a set per key in the key's siblings (a value is a
//! comma-separated list of elements, every element written once), in one of these ways:
//! read-modify-write, chaining puts on the contexts puts return (never reading), blind
//! writes without a context, read-modify-write with deletes now and then, and puts on a
//! context kept for seconds (while others write the key). Every element tried and every
//! element acknowledged is recorded for the checker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dynamo_node::determinism::with_rng;
use dynamo_node::service::kv::KvService;
use dynamo_proto::v1::kv_server::Kv as _;
use dynamo_proto::v1::{DeleteRequest, GetRequest, PutRequest};
use parking_lot::Mutex;
use rand::Rng;
use tonic::Request;

use crate::cluster::Cluster;
use crate::trace::{now_ms, Trace};

/// Elements per key.
pub type Sets = BTreeMap<String, BTreeSet<String>>;

/// What the clients saw.
#[derive(Default, Debug)]
pub struct History {
    /// Every element a put tried to add, acknowledged or not.
    pub tried: Sets,
    /// Elements whose put was acknowledged (less those a delete may have removed).
    pub acked: Sets,
    /// Elements an acknowledged delete removed for good: every version holding one was
    /// among the siblings the delete's context came from, and no later put holds it
    /// (a stale read after the delete may bring one back into a put). None may be in the
    /// final state.
    pub buried: Sets,
    /// Elements a delete saw (acknowledged or not): no longer required, even when the
    /// put that wrote one is acknowledged only after the delete (a put's reply can come
    /// late, after a read already returned what it wrote).
    pub deleted: Sets,
    /// Per key that deleters delete: the value of every put tried on it (acknowledged or
    /// not), by any client. A delete buries an element only if every one of these values
    /// holding it was among the siblings its context came from.
    pub versions: BTreeMap<String, Vec<BTreeSet<String>>>,
    /// Late puts acknowledged whose old context missed elements acknowledged on the key
    /// by then (that the put must leave as siblings).
    pub stale_puts: u64,
    /// When each element's put was acknowledged, and when each buried element's delete
    /// was (simulated ms since the start): with nodes that sync periodically, a power
    /// loss of the whole cluster may take back what was acknowledged just before it.
    pub acked_at: BTreeMap<String, u64>,
    pub buried_at: BTreeMap<String, u64>,
    /// Per key, every dot a read returned: a hash of the bytes it carried (a tombstone's
    /// are empty) and when it was first seen (simulated ms).
    pub seen_dots: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
    /// Dots reads returned with other bytes than they carried before: a dot names one
    /// write, so two versions under one dot means one silently replaced the other
    /// wherever they met (a reused dot), even if the final state happens to hold one.
    pub dot_clashes: Vec<String>,
    pub ops: u64,
    pub failed: u64,
}

/// The hash the checker compares a dot's bytes by (stable within a run).
pub fn bytes_hash(tombstone: bool, value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tombstone.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

impl History {
    /// Records the dots a read of `key` returned at `now` (simulated ms), noting any
    /// that carries other bytes than when a read first returned it.
    pub fn observe(&mut self, key: &str, siblings: &[dynamo_proto::v1::Sibling], now: u64) {
        let seen = self.seen_dots.entry(key.to_owned()).or_default();
        for s in siblings {
            let hash = bytes_hash(s.tombstone, &s.value);
            match seen.get(&s.dot) {
                Some((first, at)) if *first != hash => self.dot_clashes.push(format!(
                    "{key}: dot {} carried other bytes at {now} ms than at {at} ms",
                    s.dot
                )),
                Some(_) => {}
                None => {
                    seen.insert(s.dot.clone(), (hash, now));
                }
            }
        }
    }
}

/// How a client writes.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    ReadModifyWrite,
    Chain,
    Blind,
    /// Read-modify-write on keys of its own, and now and then a delete with the context
    /// read (then the key is created again by the next put).
    Deleter,
    /// Reads a key and keeps the context for [`LATE_MS`], while other clients write the
    /// key (and a deleter may delete it), then puts what it read plus a new element on
    /// that old context; keeps the context that put returns for the next late put. The
    /// put supersedes only what the old context covered: every version written since
    /// stays a sibling. It writes the read-modify-write clients' keys and a deleter's.
    Late,
}

/// How long a late client keeps a context before it puts on it (simulated ms).
pub const LATE_MS: std::ops::Range<u64> = 2_000..10_000;

/// A context a late client keeps: what it read (or put) with it, and when to use it.
struct Kept {
    context: Vec<u8>,
    seen: BTreeSet<String>,
    due: tokio::time::Instant,
}

pub use dynamo_client::set_workload::elements;

pub struct Client {
    pub id: usize,
    pub kind: Kind,
    pub keys: Vec<String>,
    pub cluster: Arc<Mutex<Cluster>>,
    pub history: Arc<Mutex<History>>,
    pub trace: Arc<Trace>,
    pub start: tokio::time::Instant,
    pub until: tokio::time::Instant,
}

impl Client {
    /// A coordinator: a running node chosen at random (none while all are down).
    fn coordinator(&self) -> Option<Arc<KvService>> {
        let c = self.cluster.lock();
        let up = c.up();
        if up.is_empty() {
            return None;
        }
        let i = up[with_rng(|r| r.random_range(0..up.len()))];
        c.machines[i].process.as_ref().map(|p| p.kv.clone())
    }

    pub async fn run(self) {
        // Chain clients: per key, the context the last acknowledged put returned and
        // every element this client put on the key.
        let mut chains: BTreeMap<String, (Vec<u8>, BTreeSet<String>)> = BTreeMap::new();
        // Late clients: per key, the context kept.
        let mut kept: BTreeMap<String, Kept> = BTreeMap::new();
        let mut n = 0u64;
        while tokio::time::Instant::now() < self.until {
            let think = with_rng(|r| r.random_range(1..30));
            tokio::time::sleep(Duration::from_millis(think)).await;
            let Some(kv) = self.coordinator() else {
                continue;
            };
            let key = self.keys[with_rng(|r| r.random_range(0..self.keys.len()))].clone();
            n += 1;
            match self.kind {
                Kind::Deleter => {
                    self.delete_or_add(&kv, &key, format!("c{}-{n}", self.id))
                        .await;
                    continue;
                }
                Kind::Late => {
                    self.late(&kv, &key, format!("c{}-{n}", self.id), &mut kept)
                        .await;
                    continue;
                }
                _ => {}
            }
            let element = format!("c{}-{n}", self.id);
            let (value, context) = match self.kind {
                Kind::ReadModifyWrite => {
                    let get = GetRequest {
                        key: key.clone().into_bytes(),
                        r: None,
                    };
                    match kv.get(Request::new(get)).await {
                        Ok(read) => {
                            let read = read.into_inner();
                            let now = now_ms(self.start);
                            self.history.lock().observe(&key, &read.siblings, now);
                            (with_element(&read, &element), read.context)
                        }
                        Err(e) => {
                            self.note(&key, "get", Err(e.code()));
                            continue;
                        }
                    }
                }
                Kind::Chain => {
                    let (context, mine) = chains.entry(key.clone()).or_default();
                    mine.insert(element.clone());
                    (join(mine), context.clone())
                }
                Kind::Blind => (element.clone(), Vec::new()),
                Kind::Deleter | Kind::Late => unreachable!("served above"),
            };
            self.history
                .lock()
                .tried
                .entry(key.clone())
                .or_default()
                .insert(element.clone());
            let put = PutRequest {
                key: key.clone().into_bytes(),
                value: value.into_bytes(),
                context,
                w: None,
            };
            match kv.put(Request::new(put)).await {
                Ok(r) => {
                    let mut h = self.history.lock();
                    h.acked_at.insert(element.clone(), now_ms(self.start));
                    h.acked.entry(key.clone()).or_default().insert(element);
                    drop(h);
                    if let Some(chain) = chains.get_mut(&key) {
                        chain.0 = r.into_inner().context;
                    }
                    self.note(&key, "put", Ok(()));
                }
                Err(e) => self.note(&key, "put", Err(e.code())),
            }
        }
    }

    /// One step of a deleter on `key`: a read, then either a delete with the context
    /// read (a quarter of the time, if the key holds anything) or a put of what was
    /// read plus `element`.
    async fn delete_or_add(&self, kv: &KvService, key: &str, element: String) {
        let get = GetRequest {
            key: key.as_bytes().to_vec(),
            r: None,
        };
        let read = match kv.get(Request::new(get)).await {
            Ok(r) => r.into_inner(),
            Err(e) => return self.note(key, "get", Err(e.code())),
        };
        let now = now_ms(self.start);
        self.history.lock().observe(key, &read.siblings, now);
        let seen = elements(&read);
        if !seen.is_empty() && with_rng(|r| r.random_bool(0.25)) {
            let seen_values: BTreeSet<BTreeSet<String>> = read
                .siblings
                .iter()
                .filter(|s| !s.tombstone)
                .map(|s| dynamo_client::set_workload::elements_of([&s.value]))
                .collect();
            let del = DeleteRequest {
                key: key.as_bytes().to_vec(),
                context: read.context,
                w: None,
            };
            let outcome = kv.delete(Request::new(del)).await;
            let mut h = self.history.lock();
            // Gone or maybe gone: no longer required at the end.
            if let Some(acked) = h.acked.get_mut(key) {
                acked.retain(|e| !seen.contains(e));
            }
            let deleted = h.deleted.entry(key.to_owned()).or_default();
            deleted.extend(seen.iter().cloned());
            match outcome {
                Ok(_) => {
                    // Buried: an element every version of which the delete covered.
                    let none = Vec::new();
                    let versions = h.versions.get(key).unwrap_or(&none);
                    let covered = seen.iter().filter(|e| {
                        versions
                            .iter()
                            .filter(|v| v.contains(*e))
                            .all(|v| seen_values.contains(v))
                    });
                    let covered: Vec<String> = covered.cloned().collect();
                    let now = now_ms(self.start);
                    h.buried_at.extend(covered.iter().map(|e| (e.clone(), now)));
                    h.buried.entry(key.to_owned()).or_default().extend(covered);
                    drop(h);
                    self.note(key, "delete", Ok(()));
                }
                Err(e) => {
                    drop(h);
                    self.note(key, "delete", Err(e.code()));
                }
            }
            return;
        }
        let mut value = seen;
        value.insert(element.clone());
        self.put_value(kv, key, element, value, read.context).await;
    }

    /// Puts `value` (what was read plus the new `element`) on `key` with `context`,
    /// recording it for the checker; the context the put returned, if acknowledged.
    async fn put_value(
        &self,
        kv: &KvService,
        key: &str,
        element: String,
        value: BTreeSet<String>,
        context: Vec<u8>,
    ) -> Option<Vec<u8>> {
        {
            let mut h = self.history.lock();
            h.tried
                .entry(key.to_owned())
                .or_default()
                .insert(element.clone());
            h.versions
                .entry(key.to_owned())
                .or_default()
                .push(value.clone());
            // A read after an acknowledged delete may still return what it deleted (a
            // sloppy quorum promises no read-your-writes), and a late put carries what
            // was read before it: put again, it lives again.
            if let Some(buried) = h.buried.get_mut(key) {
                buried.retain(|e| !value.contains(e));
            }
        }
        let put = PutRequest {
            key: key.as_bytes().to_vec(),
            value: join(&value).into_bytes(),
            context,
            w: None,
        };
        match kv.put(Request::new(put)).await {
            Ok(r) => {
                let mut h = self.history.lock();
                h.acked_at.insert(element.clone(), now_ms(self.start));
                if !h.deleted.get(key).is_some_and(|d| d.contains(&element)) {
                    h.acked.entry(key.to_owned()).or_default().insert(element);
                }
                drop(h);
                self.note(key, "put", Ok(()));
                Some(r.into_inner().context)
            }
            Err(e) => {
                self.note(key, "put", Err(e.code()));
                None
            }
        }
    }

    /// One step of a late client on `key`: with no context kept for it, a read whose
    /// context it keeps; with one kept long enough, a put of what it read plus `element`
    /// on that context (whose answer's context it keeps in turn); otherwise nothing.
    async fn late(
        &self,
        kv: &KvService,
        key: &str,
        element: String,
        kept: &mut BTreeMap<String, Kept>,
    ) {
        let due = || {
            tokio::time::Instant::now()
                + Duration::from_millis(with_rng(|r| r.random_range(LATE_MS)))
        };
        match kept.remove(key) {
            None => {
                let get = GetRequest {
                    key: key.as_bytes().to_vec(),
                    r: None,
                };
                match kv.get(Request::new(get)).await {
                    Ok(read) => {
                        let read = read.into_inner();
                        let now = now_ms(self.start);
                        self.history.lock().observe(key, &read.siblings, now);
                        let seen = elements(&read);
                        self.note(key, "get", Ok(()));
                        let k = Kept {
                            context: read.context,
                            seen,
                            due: due(),
                        };
                        kept.insert(key.to_owned(), k);
                    }
                    Err(e) => self.note(key, "get", Err(e.code())),
                }
            }
            Some(k) if tokio::time::Instant::now() < k.due => {
                kept.insert(key.to_owned(), k);
            }
            Some(k) => {
                let mut value = k.seen;
                value.insert(element.clone());
                let missed = {
                    let h = self.history.lock();
                    let acked = h.acked.get(key);
                    acked.is_some_and(|a| a.iter().any(|e| !value.contains(e)))
                };
                let put = self.put_value(kv, key, element, value.clone(), k.context);
                if let Some(context) = put.await {
                    self.history.lock().stale_puts += u64::from(missed);
                    let k = Kept {
                        context,
                        seen: value,
                        due: due(),
                    };
                    kept.insert(key.to_owned(), k);
                }
            }
        }
    }

    fn note(&self, key: &str, op: &str, result: Result<(), tonic::Code>) {
        let mut h = self.history.lock();
        h.ops += 1;
        h.failed += u64::from(result.is_err());
        drop(h);
        self.trace.record((
            now_ms(self.start),
            self.id,
            key,
            op,
            result.map_err(|c| c as i32),
        ));
    }
}

/// The union of `read`'s live siblings plus `element`, as a value. One sibling (the
/// usual case once clients merge) is extended as it is, without parsing its thousands
/// of elements.
fn with_element(read: &dynamo_proto::v1::GetResponse, element: &str) -> String {
    let mut live = read.siblings.iter().filter(|s| !s.tombstone);
    match (live.next(), live.next()) {
        (Some(only), None) if !only.value.is_empty() => {
            format!("{},{element}", String::from_utf8_lossy(&only.value))
        }
        _ => {
            let mut set = elements(read);
            set.insert(element.to_owned());
            join(&set)
        }
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_proto::v1::Sibling;

    fn sibling(dot: &str, value: &str) -> Sibling {
        Sibling {
            value: value.as_bytes().to_vec(),
            tombstone: false,
            dot: dot.to_owned(),
        }
    }

    #[test]
    fn a_dot_read_again_with_other_bytes_is_a_clash() {
        let mut h = History::default();
        h.observe(
            "k",
            &[sibling("n1#1.1:1", "a"), sibling("n2#1.1:1", "b")],
            10,
        );
        h.observe("k", &[sibling("n1#1.1:1", "a")], 20);
        h.observe("other", &[sibling("n2#1.1:1", "c")], 25);
        assert!(h.dot_clashes.is_empty(), "dots are per key");
        h.observe("k", &[sibling("n2#1.1:1", "b,c")], 30);
        assert_eq!(
            h.dot_clashes,
            ["k: dot n2#1.1:1 carried other bytes at 30 ms than at 10 ms"]
        );
        let tombstone = Sibling {
            tombstone: true,
            ..sibling("n1#1.1:1", "")
        };
        h.observe("k", &[tombstone], 40);
        assert_eq!(
            h.dot_clashes.len(),
            2,
            "a value and a tombstone under one dot"
        );
    }
}
