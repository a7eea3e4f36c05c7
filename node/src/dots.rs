//! Issuing dots: which actor a coordinator writes a key under.
//!
//! A coordinator makes the next dot of a key one past the highest counter of its actor
//! in its own copy of the key (or in the client's context). That is only safe while its
//! copy holds every dot the actor ever made for the key. A copy can go: a purged
//! tombstone, a partition handed to another node, a fallback's copy cleaned up once its
//! hints are delivered; and a copy can come back from elsewhere missing some of the
//! actor's dots (a replica that had not seen them yet). Counting from such a copy would
//! issue a dot twice, and the two versions would silently replace each other (Riak's
//! KV679).
//!
//! So a node writes each key under an *epoch* of its own (part of the [`Actor`]), and
//! records, beside the key's data, the epoch it wrote the key under (the [`Cf::Epochs`]
//! column family, written in the same batch as the data). That record is never sent to
//! anyone and goes with the local copy: a copy received from a peer has none. A write
//! uses the recorded epoch if there is one for the current incarnation; otherwise it
//! mints a new epoch, whose counters start afresh. Dot uniqueness then rests on the
//! record alone, not on what the local copy happens to hold: whatever dropped or
//! re-fetched the copy also dropped (or never had) the record.
//!
//! Epochs are minted from a counter per incarnation. A clean stop stores the next one; an
//! unclean stop makes a new incarnation anyway (see [`crate::identity`]).
//!
//! [`Cf::Epochs`]: crate::storage::Cf::Epochs

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dynamo_core::context::ContextError;
use dynamo_core::{Actor, CausalContext, Dot, SiblingSet};

use crate::error::RequestError;
use crate::store::Store;

/// The epochs of one incarnation: the next one to mint.
#[derive(Debug)]
pub struct Epochs {
    next: AtomicU64,
}

impl Epochs {
    /// Epochs from `next` on (at least 1: epoch 0 is the actor of stores from before
    /// epochs existed).
    pub fn starting_at(next: u64) -> Self {
        Self {
            next: AtomicU64::new(next.max(1)),
        }
    }

    /// A new epoch, never minted before in this incarnation.
    pub fn mint(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// The first epoch not minted yet.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

/// The epoch record of a key: which incarnation wrote it under which epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochRecord {
    pub incarnation: u64,
    pub epoch: u64,
}

impl EpochRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.incarnation.to_be_bytes().to_vec();
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v
    }

    /// `None` for anything but 16 bytes (a record that cannot be read is no record: the
    /// write then mints a new epoch, which is always safe).
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let (inc, epoch) = raw.split_at_checked(8)?;
        Some(Self {
            incarnation: u64::from_be_bytes(inc.try_into().ok()?),
            epoch: u64::from_be_bytes(epoch.try_into().ok()?),
        })
    }
}

/// The actor a write of a key takes, given this node's actor `node` (its incarnation, at
/// epoch 0) and the key's epoch record: the recorded epoch if the record is of this
/// incarnation, else a newly minted one. The second value is the record to store with
/// the write (`None` when the record stays as it is).
pub fn actor_for(
    node: &Actor,
    record: Option<EpochRecord>,
    epochs: &Epochs,
) -> (Actor, Option<EpochRecord>) {
    match record {
        Some(r) if r.incarnation == node.incarnation && r.epoch != 0 => {
            (node.at_epoch(r.epoch), None)
        }
        _ => {
            let epoch = epochs.mint();
            let record = EpochRecord {
                incarnation: node.incarnation,
                epoch,
            };
            (node.at_epoch(epoch), Some(record))
        }
    }
}

/// A coordinator's new version of a key, made by [`new_version`].
pub struct NewVersion {
    /// The local copy with the new version in it.
    pub set: SiblingSet,
    pub dot: Dot,
    /// The key's new epoch record, to store with the write (if an epoch was minted).
    pub epoch: Option<EpochRecord>,
}

/// Makes the new version of `key` (`value`, or a tombstone for `None`) that supersedes
/// what `ctx` covers, from this node's copy in `store`, as actor `node` (epoch 0) at the
/// key's epoch. The caller holds the key's coordination lock, and stores the result with
/// its epoch record before anyone sees the dot.
pub fn new_version(
    store: &Store,
    node: &Actor,
    epochs: &Epochs,
    key: &[u8],
    ctx: &CausalContext,
    value: Option<Bytes>,
) -> Result<NewVersion, RequestError> {
    let mut set = store.read(key)?;
    let (actor, epoch) = actor_for(node, store.epoch_of(key)?, epochs);
    check_plausible(ctx, &set, &actor, epochs.next())?;
    let dot = set.update(ctx, &actor, value)?;
    Ok(NewVersion { set, dot, epoch })
}

/// Refuses a context that claims more of this node's writes of the key than it has
/// made under `actor` (the key's epoch here: every dot of it is in the local copy), or
/// writes of an epoch this incarnation has not minted yet (`next` on). Such a context is
/// forged or corrupt, and honouring it would skip counters or supersede versions nobody
/// saw.
fn check_plausible(
    ctx: &CausalContext,
    local: &SiblingSet,
    actor: &Actor,
    next: u64,
) -> Result<(), ContextError> {
    let claimed = ctx.max_counter(actor);
    let issued = local.context().max_counter(actor);
    if claimed > issued {
        return Err(ContextError::Implausible(format!(
            "it covers write {claimed} of {actor}, which has made {issued} writes of this key"
        )));
    }
    if let Some(a) = ctx
        .actors()
        .into_iter()
        .find(|a| a.same_incarnation(actor) && a.epoch >= next)
    {
        return Err(ContextError::Implausible(format!(
            "it covers writes of {a}, an epoch {} has not begun",
            actor.node
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_this_incarnation_is_used_any_other_mints() {
        let node = Actor::new("n1", 7);
        let epochs = Epochs::starting_at(0);
        let (a, new) = actor_for(&node, None, &epochs);
        assert_eq!(a.epoch, 1, "epoch 0 is never minted");
        let rec = new.unwrap();
        assert_eq!(EpochRecord::decode(&rec.encode()), Some(rec));
        assert_eq!(actor_for(&node, Some(rec), &epochs), (a.clone(), None));
        let stale = EpochRecord {
            incarnation: 6,
            epoch: 1,
        };
        let (b, new) = actor_for(&node, Some(stale), &epochs);
        assert_eq!((b.epoch, new.map(|r| r.epoch)), (2, Some(2)));
        assert_eq!(EpochRecord::decode(b"short"), None);
    }

    #[test]
    fn contexts_ahead_of_this_node_are_refused() {
        let node = Actor::new("n1", 7);
        let mut local = SiblingSet::new();
        local
            .update(&CausalContext::new(), &node.at_epoch(3), None)
            .unwrap();
        let claim = |actor: &Actor, counter| {
            let vv: dynamo_core::VersionVector = [(actor.clone(), counter)].into_iter().collect();
            check_plausible(&CausalContext::from(vv), &local, &node.at_epoch(3), 5)
        };
        assert!(claim(&node.at_epoch(3), 1).is_ok());
        assert!(claim(&node.at_epoch(3), 2).is_err(), "more than issued");
        assert!(claim(&node.at_epoch(4), 9).is_ok(), "another key's epoch");
        assert!(claim(&node.at_epoch(5), 1).is_err(), "an epoch not minted");
        assert!(claim(&Actor::new("n1", 8).at_epoch(9), 1).is_ok());
    }

    mod property {
        use std::collections::HashMap;
        use std::sync::Arc;

        use proptest::prelude::*;

        use super::super::*;
        use crate::storage::memory::MemoryEngine;

        #[derive(Clone, Debug)]
        enum Ctx {
            Blind,
            /// The local copy's context (a get through this node).
            Read,
            /// A context seen earlier (a put's returned one, or a get's), reused late.
            Seen(usize),
        }

        #[derive(Clone, Debug)]
        enum Op {
            Write(u8, Ctx),
            /// The local copy goes (a purge, a dropped partition, a fallback's clean-up).
            Forget(u8),
            /// Remember the local copy as a peer might hold it.
            Snapshot(u8),
            /// A copy comes back from a peer that had a snapshot: joined, after the local
            /// copy was dropped or not.
            Refetch(u8, usize, bool),
            /// The node restarts, cleanly (keeping its incarnation) or not.
            Restart(bool),
        }

        fn op() -> impl Strategy<Value = Op> {
            let key = 0u8..3;
            let ctx = prop_oneof![
                Just(Ctx::Blind),
                Just(Ctx::Read),
                any::<usize>().prop_map(Ctx::Seen)
            ];
            prop_oneof![
                6 => (key.clone(), ctx).prop_map(|(k, c)| Op::Write(k, c)),
                1 => key.clone().prop_map(Op::Forget),
                2 => key.clone().prop_map(Op::Snapshot),
                2 => (key, any::<usize>(), any::<bool>()).prop_map(|(k, i, f)| Op::Refetch(k, i, f)),
                1 => any::<bool>().prop_map(Op::Restart),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Whatever local copies are dropped, re-fetched stale or kept, and however the
            /// node restarts, no dot is issued twice.
            #[test]
            fn no_dot_is_issued_twice(ops in proptest::collection::vec(op(), 1..60)) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let store = Store::new(Arc::new(MemoryEngine::new()), 16, false);
                    let mut node = Actor::new("n1", 1);
                    let mut epochs = Epochs::starting_at(1);
                    let mut issued: HashMap<Dot, usize> = HashMap::new();
                    let mut seen: Vec<CausalContext> = Vec::new();
                    let mut snapshots: HashMap<u8, Vec<SiblingSet>> = HashMap::new();
                    for (i, op) in ops.into_iter().enumerate() {
                        match op {
                            Op::Write(k, how) => {
                                let key = Bytes::from(vec![b'k', k]);
                                let ctx = match how {
                                    Ctx::Blind => CausalContext::new(),
                                    Ctx::Read => store.read(&key).unwrap().context().clone(),
                                    Ctx::Seen(j) if !seen.is_empty() => seen[j % seen.len()].clone(),
                                    Ctx::Seen(_) => CausalContext::new(),
                                };
                                let value = Some(Bytes::from(i.to_string()));
                                let made = match new_version(&store, &node, &epochs, &key, &ctx, value) {
                                    Ok(made) => made,
                                    // Refusing a write issues no dot.
                                    Err(RequestError::Context(_)) => continue,
                                    Err(e) => panic!("{e}"),
                                };
                                if let Some(first) = issued.insert(made.dot.clone(), i) {
                                    panic!("dot {} issued by write {first} and again by write {i}", made.dot);
                                }
                                seen.push(ctx.with_write(&made.dot));
                                seen.push(made.set.context().clone());
                                store.merge(key, made.set, made.epoch, None).unwrap().await.unwrap();
                            }
                            Op::Forget(k) => store.forget(Bytes::from(vec![b'k', k])).await.unwrap(),
                            Op::Snapshot(k) => {
                                let set = store.read(&[b'k', k]).unwrap();
                                snapshots.entry(k).or_default().push(set);
                            }
                            Op::Refetch(k, j, forget_first) => {
                                let Some(held) = snapshots.get(&k).filter(|s| !s.is_empty()) else {
                                    continue;
                                };
                                let key = Bytes::from(vec![b'k', k]);
                                if forget_first {
                                    store.forget(key.clone()).await.unwrap();
                                }
                                store.join(key, held[j % held.len()].clone()).await.unwrap();
                            }
                            Op::Restart(true) => epochs = Epochs::starting_at(epochs.next()),
                            Op::Restart(false) => {
                                node = Actor::new("n1", node.incarnation + 1);
                                epochs = Epochs::starting_at(1);
                            }
                        }
                    }
                });
            }
        }
    }
}
