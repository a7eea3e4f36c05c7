//! Request coordination: routing, N/R/W quorums and sloppy quorum.
//!
//! Any node accepts a request. A node outside the key's preference list forwards it to a
//! preference-list node (never twice). When no preference-list node can be reached at
//! all, a put or delete is coordinated where it arrived instead (a *fallback
//! coordinator*, as in Dynamo, so that the store stays writable): the new version goes to
//! the healthy nodes of the extended preference list as hints, and the coordinator keeps
//! its own copy too (with the key's epoch record, see [`crate::dots`]), which it drops
//! once its hints are delivered and the replicas cover it
//! ([`crate::antientropy::purge`]). A get still needs R replicas and fails. The
//! coordinator then:
//!
//! - **put/delete**: validates the request (nothing is stored on bad input), makes the
//!   new version from its stored set under the key's lock (an atomic read-modify-write,
//!   see [`crate::key_lock`]), hands it to its own store as a join, sends it to the other
//!   replicas while its own copy is being applied and synced, and answers after W of
//!   the intended replicas (itself included, once durable) are
//!   covered. Replicas believed down, or that fail, are replaced by the next
//!   healthy nodes of the extended preference list, which keep the write as a hint
//!   (sloppy quorum); replicas still uncovered at the deadline get a hint kept here.
//!   The rest of the replication finishes in the background.
//! - **get**: reads its own copy and asks the other replicas, answers with the join of the
//!   first R replies, and lets [`crate::read_repair`] fix stale replicas in the background.
//!
//! When fewer than R or W answer in time, the client gets `UNAVAILABLE` saying how many
//! answered of how many were needed. A put that fails this way may still have been stored
//! on fewer than W replicas, as in Dynamo; it is never reported as a success.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dynamo_core::codec::encode_set;
use dynamo_core::limits::{check_key, check_value, resolve_quorum, LimitError};
use dynamo_core::map_state::WriteQuorum;
use dynamo_core::{Member, PartitionId, PartitionMap, SiblingSet};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use crate::dots;
use crate::error::RequestError;
use crate::maps::Live;
use crate::network::{Forward, ForwardError, Forwarded, PeerError, WriteEntry};
use crate::node::Node;
use crate::read_repair;

/// Where a request is coordinated.
pub enum Route {
    /// This node is in the key's preference list.
    Local,
    /// Forward to these preference-list nodes, in order of preference.
    Forward(Vec<Member>),
}

/// Decides who coordinates a request for `key`.
pub fn route(node: &Node, key: &[u8], forwarded: bool) -> Result<Route, RequestError> {
    let map = node.try_map().ok_or_else(no_map)?;
    let p = map.partition_of(key);
    if map.is_replica(p, node.id()) {
        return Ok(Route::Local);
    }
    if forwarded {
        return Err(RequestError::NoCoordinator(format!(
            "request was forwarded to {}, which is not a replica of partition {p}",
            node.id()
        )));
    }
    let mut targets: Vec<Member> = map.preference_list(p).cloned().collect();
    targets.sort_by_key(|m| !node.health.is_up(&m.id)); // healthy first, stable otherwise
    Ok(Route::Forward(targets))
}

fn no_map() -> RequestError {
    RequestError::NoCoordinator(
        "this node holds no partition map yet (the cluster's first map is not committed, \
         or has not reached it)"
            .into(),
    )
}

/// Forwards a request to the first preference-list node that can be reached.
///
/// Only connection failures fail over to the next node: a request that reached a
/// coordinator may have been applied, and re-running a blind put elsewhere would add a
/// duplicate sibling.
pub async fn forward(
    node: &Node,
    targets: Vec<Member>,
    req: &Forward,
) -> Result<Forwarded, ForwardError> {
    let mut last = tonic::Status::unavailable("no preference-list node is believed up");
    for m in targets {
        match node
            .transport
            .forward(&m, req.clone(), forward_timeout(node.timeout()))
            .await
        {
            Ok(resp) => return Ok(resp),
            Err(ForwardError::Unreachable(s)) => {
                last = tonic::Status::unavailable(format!(
                    "forwarding to {} failed: {}",
                    m.id,
                    s.message()
                ));
            }
            // It may have seen the request, so no failing over. Whether later requests
            // go elsewhere is the failure detector's call.
            Err(ForwardError::TimedOut(s)) => return Err(ForwardError::TimedOut(s)),
            Err(failed) => return Err(failed),
        }
    }
    Err(ForwardError::Unreachable(last))
}

/// How long a forwarded request is waited for. Its coordinator answers within the request
/// timeout, with `UNAVAILABLE` if its quorum was not met; waiting a quarter longer (at
/// least 50 ms) means that only a peer that does not answer at all times out. A healthy
/// coordinator that waited on unreachable replicas answers in time.
pub fn forward_timeout(request_timeout: Duration) -> Duration {
    request_timeout + (request_timeout / 4).max(Duration::from_millis(50))
}

/// A successful write: the context the client should send next, and the acks counted.
pub struct Written {
    pub context: Vec<u8>,
    pub acks: usize,
}

/// Coordinates a put (`value` is `Some`) or a delete (`value` is `None`).
pub async fn write(
    node: &Arc<Node>,
    key: Bytes,
    value: Option<Bytes>,
    context_bytes: &[u8],
    w: Option<u32>,
) -> Result<Written, RequestError> {
    let op = if value.is_some() { "put" } else { "delete" };
    check_key(&key)?;
    if let Some(v) = &value {
        check_value(v, node.cfg.max_value_bytes)?;
    }
    // One snapshot of the live maps for the whole request.
    let live = node.live();
    let map = live.reads.clone().ok_or_else(no_map)?;
    let n = map.replication;
    let w = resolve_quorum("w", w, node.cfg.replication.w, n)? as usize;
    let ctx = node.context_key.decode(context_bytes)?;
    if value.is_none() && ctx.is_empty() {
        return Err(RequestError::BadRequest(
            "delete needs the context of a get of this key (a delete supersedes what it saw)"
                .into(),
        ));
    }
    let deadline = Instant::now() + node.timeout();
    let unavailable = |got| RequestError::Unavailable {
        op,
        which: "W",
        got,
        needed: w,
        n,
        timeout_ms: node.cfg.request_timeout_ms,
    };
    // The new version is made here, under the key's lock (see `crate::key_lock`), so
    // that replication starts at once instead of after the local write is applied. The
    // lock goes with the local write and is released when it is applied, even after this
    // request has given up: a stalled local store must not hold the client past its
    // deadline, but the next coordination of the key must see this write.
    let guard = timeout_at(deadline, node.key_locks.lock(&key))
        .await
        .map_err(|_| unavailable(0))?;
    // Checked under the lock: a write that failed before it may not be in the local
    // copy the next dot is counted from, so a poisoned store must make no dot at all.
    if node.store.is_poisoned() {
        return Err(RequestError::Poisoned(node.id().to_owned()));
    }
    let dots::NewVersion { set, dot, epoch } =
        dots::new_version(&node.store, &node.actor, &node.epochs, &key, &ctx, value)?;
    let encoded = Bytes::from(encode_set(&set));
    if encoded.len() > node.cfg.max_set_bytes {
        return Err(LimitError::SetTooLarge {
            size: encoded.len(),
            siblings: set.siblings().len(),
            limit: node.cfg.max_set_bytes,
        }
        .into());
    }
    // The client's next context covers what it saw plus its own write, nothing else: a
    // concurrent sibling it never saw must not be superseded by its next put.
    let next = match crate::determinism::sabotaged(crate::determinism::Sabotage::WideContext) {
        false => ctx.with_write(&dot),
        true => set.context().clone(),
    };

    let p = map.partition_of(&key);
    // The preference list of every live map: while members change, W acknowledgements
    // are needed in the old list and W in the new one.
    let (mut quorum, me) = {
        let intended = live.state.intended(p);
        // `None` for a fallback coordinator: its own copy keeps its dots but is no replica.
        (WriteQuorum::new(&intended, w), intended.position(node.id()))
    };
    // The local write is handed to the writer before any replica sees the version (its
    // dot must never be handed out again); replication then runs alongside the local
    // write and sync, and this node counts once durable.
    let local = node
        .store
        .merge(key.clone(), set.clone(), epoch, Some(guard))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(replicate(node.clone(), live, key, set, encoded, tx));
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(local, timer);
    let mut local_pending = true;
    let mut replicas_pending = true;
    while !quorum.reached() && (local_pending || replicas_pending) {
        tokio::select! {
            biased;
            durable = &mut local, if local_pending => {
                local_pending = false;
                match durable {
                    Ok(()) => {
                        if let Some(me) = me {
                            quorum.ack(me);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "local write did not become durable"),
                }
            }
            covered = rx.recv(), if replicas_pending => match covered {
                Some(covered) => {
                    quorum.ack(covered);
                }
                None => replicas_pending = false,
            },
            _ = &mut timer => break,
        }
    }
    if !quorum.reached() {
        return Err(unavailable(quorum.weakest()));
    }
    Ok(Written {
        context: node.context_key.encode(&next),
        acks: quorum.acks(),
    })
}

/// Sends `set` (encoded as `encoded`, once for every peer) to the other intended replicas (or fallbacks), reporting each covered
/// intended replica (by position in the preference list) on `covered`, and keeps a local
/// hint for any left uncovered.
async fn replicate(
    node: Arc<Node>,
    live: Arc<Live>,
    key: Bytes,
    set: SiblingSet,
    encoded: Bytes,
    covered: mpsc::UnboundedSender<usize>,
) {
    let node = &*node;
    // Fallbacks come from the newest map's extended preference list.
    let map = live
        .state
        .newest()
        .expect("a write is coordinated under a map");
    let p = map.partition_of(&key);
    // The same intended replicas, in the same order, as the quorum counts.
    let pref: Vec<&Member> = live.state.intended(p).members;
    // Members written to (or tried) so far: the preference list, then fallbacks.
    let mut used: Vec<&str> = pref.iter().map(|m| m.id.as_str()).collect();
    let entry = |target: &Member, intended: usize| WriteEntry {
        key: key.clone(),
        set: encoded.clone(),
        hint_for: (target.id != pref[intended].id).then(|| pref[intended].id.clone()),
        sync: false,
    };
    let mut inflight = FuturesUnordered::new();
    let mut done = vec![false; pref.len()];
    for (i, m) in pref.iter().enumerate() {
        if m.id == node.id() {
            done[i] = true;
        } else if node.health.is_up(&m.id) {
            inflight.push(send(node, m, entry(m, i), i));
        } else if let Some(fb) = next_fallback(node, map, p, &mut used) {
            inflight.push(send(node, fb, entry(fb, i), i));
        }
    }
    while let Some((target, intended, result)) = inflight.next().await {
        match result {
            Ok(()) => {
                done[intended] = true;
                let _ = covered.send(intended);
            }
            Err(e) => {
                tracing::debug!(peer = %target.id, error = %e, "replica write failed");
                if let Some(fb) = next_fallback(node, map, p, &mut used) {
                    inflight.push(send(node, fb, entry(fb, intended), intended));
                }
            }
        }
    }
    drop(covered);
    let now = node.clock.now_ms();
    for (m, _) in pref.iter().zip(&done).filter(|(_, &done)| !done) {
        if let Err(e) = node
            .store
            .add_hint(m.id.clone(), key.clone(), set.clone(), now)
            .await
        {
            tracing::error!(target = %m.id, error = %e, "could not keep a hint");
        }
    }
}

/// The next healthy member of partition `p`'s extended preference list not `used` yet.
fn next_fallback<'a>(
    node: &Node,
    map: &'a PartitionMap,
    p: PartitionId,
    used: &mut Vec<&'a str>,
) -> Option<&'a Member> {
    let fb = map
        .extended_preference_list(p)
        .find(|m| !used.contains(&m.id.as_str()) && node.health.is_up(&m.id))?;
    used.push(&fb.id);
    Some(fb)
}

/// Writes `entry` (meant for intended replica `intended`) on `target`.
async fn send<'a>(
    node: &Node,
    target: &'a Member,
    entry: WriteEntry,
    intended: usize,
) -> (&'a Member, usize, Result<(), PeerError>) {
    let r = node
        .transport
        .write(target, vec![entry], node.timeout())
        .await;
    (target, intended, r)
}

/// A successful read: the join of at least R replicas' states.
pub struct Read {
    pub set: SiblingSet,
    pub replies: usize,
}

/// Coordinates a get.
pub async fn read(node: &Arc<Node>, key: Bytes, r: Option<u32>) -> Result<Read, RequestError> {
    check_key(&key)?;
    let live = node.live();
    let map = live.reads.clone().ok_or_else(no_map)?;
    let n = map.replication;
    let r = resolve_quorum("r", r, node.cfg.replication.r, n)? as usize;
    let deadline = Instant::now() + node.timeout();
    let local_raw = node.store.read_raw(&key)?.unwrap_or_default();
    let mut merged = read_repair::decode_state(&local_raw)?;
    let p = map.partition_of(&key);
    // The replicas the read counts are the old list's; while members change, the new
    // list's others are read too, for repair only (a new replica may still be receiving
    // the partition, so it must not count towards R).
    let intended = live.state.intended(p);
    let (counted, repair_only): (Vec<Member>, Vec<Member>) = intended
        .members
        .iter()
        .filter(|m| m.id != node.id())
        .map(|m| (*m).clone())
        .partition(|m| map.is_replica(p, &m.id));
    // Reading the new replicas is background work: an extra call each and, until the
    // partition has reached them, a repair write for nearly every key read. So a new
    // replica found still receiving the partition is not read for a while (see
    // `arriving`), and the others take the budget; over budget they are not read this
    // time (the move's transfer and anti-entropy verification, hints and later reads
    // cover them).
    let now = tokio::time::Instant::now();
    let repair_only: Vec<Member> = repair_only
        .into_iter()
        .filter(|m| !node.arriving.skip(&m.id, p, live.state.version, now))
        .collect();
    let repair_only = match repair_only.len() as u64 {
        0 => repair_only,
        n if node
            .budget
            .try_acquire(n * read_repair::REPAIR_ONLY_READ_COST) =>
        {
            repair_only
        }
        _ => {
            node.metrics.read_repairs_skipped.inc();
            Vec::new()
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut replies = 1;
    tokio::spawn(read_repair::gather_and_repair(
        node.clone(),
        key,
        local_raw,
        read_repair::Replicas {
            counted,
            repair_only,
            partition: p,
            version: live.state.version,
        },
        tx,
    ));
    while replies < r {
        match timeout_at(deadline, rx.recv()).await {
            Ok(Some(state)) => {
                if let Some(set) = state {
                    merged.absorb(&set);
                }
                replies += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    if replies < r {
        return Err(RequestError::Unavailable {
            op: "get",
            which: "R",
            got: replies,
            needed: r,
            n,
            timeout_ms: node.cfg.request_timeout_ms,
        });
    }
    Ok(Read {
        set: merged,
        replies,
    })
}
