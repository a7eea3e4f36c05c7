//! Binary encoding of causal contexts and sibling sets.
//!
//! This is the on-disk format of a stored key and the payload replicas exchange, so it is
//! versioned by a leading format byte. Integers are LEB128 varints; byte strings are
//! length-prefixed. A sibling's or an exact dot's actor is an index into the set's
//! actor table, which keeps actor names out of every sibling.
//!
//! ```text
//! set     = 1 vv nsib:varint sibling*              (a context without exact dots)
//!         | 2 cc nsib:varint sibling*
//!         | 3 cc' nsib:varint sibling*             (actors with epochs)
//! vv      = nact:varint (node:bytes incarnation:varint counter:varint)*
//! cc      = vv ndots:varint (actor_index:varint counter:varint)*
//!           (the vector lists every actor of the context, with counter 0 for an actor
//!           that has only exact dots)
//! cc'     = as cc, each actor written node:bytes incarnation:varint epoch:varint
//! sibling = actor_index:varint counter:varint kind:u8(0 value, 1 tombstone) [value:bytes]
//! ```
//!
//! A set whose actors are all of epoch 0 is written in format 1 or 2, byte for byte as
//! before epochs existed (format 1 when it has no exact dots either), so stores and peers
//! of either age read it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::limits::{MAX_CONTEXT_ACTORS, MAX_CONTEXT_DOTS, MAX_COUNTER};
use crate::siblings::{Sibling, SiblingSet};
use crate::version::{Actor, CausalContext, Dot, VersionVector};

/// Format byte of a set without exact dots (the original encoding).
pub const FORMAT_VV: u8 = 1;
/// Format byte of a set with exact dots.
pub const FORMAT_CC: u8 = 2;
/// Format byte of a set whose actors carry epochs.
pub const FORMAT_EPOCHS: u8 = 3;

/// Whether actors are written with their epoch (formats that have them) or without
/// (older formats, where every actor is of epoch 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epochs {
    Without,
    With,
}

impl Epochs {
    /// `With` if any of `actors` has a non-zero epoch.
    pub fn needed<'a>(mut actors: impl Iterator<Item = &'a Actor>) -> Self {
        if actors.any(|a| a.epoch != 0) {
            Epochs::With
        } else {
            Epochs::Without
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends early")]
    Truncated,
    #[error("unknown format version {0}")]
    UnknownFormat(u8),
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("implausible: {0}")]
    Implausible(String),
}

/// Appends a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over encoded bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed("varint longer than 64 bits"))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.buf.len() < N {
            return Err(DecodeError::Truncated);
        }
        let (b, rest) = self.buf.split_at(N);
        self.buf = rest;
        Ok(b.try_into().expect("length checked"))
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Appends a version vector whose actors are all of epoch 0.
pub fn encode_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    put_varint(out, vv.len() as u64);
    for (actor, counter) in vv.iter() {
        put_actor(out, actor, counter, Epochs::Without);
    }
}

fn put_actor(out: &mut Vec<u8>, actor: &Actor, counter: u64, epochs: Epochs) {
    put_bytes(out, actor.node.as_bytes());
    put_varint(out, actor.incarnation);
    match epochs {
        Epochs::With => put_varint(out, actor.epoch),
        Epochs::Without => debug_assert_eq!(actor.epoch, 0, "epoch dropped from {actor}"),
    }
    put_varint(out, counter);
}

/// Appends a causal context (with or without epochs; without only if every actor is of
/// epoch 0); returns its actor table (for indexing siblings).
pub fn encode_cc<'a>(out: &mut Vec<u8>, cc: &'a CausalContext, epochs: Epochs) -> Vec<&'a Actor> {
    let actors: Vec<&Actor> = cc.actors().into_iter().collect();
    put_varint(out, actors.len() as u64);
    for a in &actors {
        put_actor(out, a, cc.vv().get(a), epochs);
    }
    put_varint(out, cc.exact_len() as u64);
    for d in cc.dots() {
        put_varint(out, index_of(&actors, &d.actor) as u64);
        put_varint(out, d.counter);
    }
    actors
}

fn index_of(actors: &[&Actor], actor: &Actor) -> usize {
    actors
        .binary_search(&actor)
        .expect("the actor table holds every actor of the context")
}

/// The shared copy of node id `node`. A cluster has few actors, so decoding a version
/// vector then allocates nothing per actor. Per thread, and bounded: ids from corrupt or
/// hostile input cannot pile up.
fn intern(node: &str) -> Arc<str> {
    const MAX_INTERNED: usize = 4096;
    thread_local!(static NODES: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new()));
    NODES.with(|nodes| {
        let mut nodes = nodes.borrow_mut();
        if let Some(n) = nodes.get(node) {
            return n.clone();
        }
        if nodes.len() >= MAX_INTERNED {
            nodes.clear();
        }
        let n: Arc<str> = Arc::from(node);
        nodes.insert(n.clone());
        n
    })
}

fn plausible(counter: u64) -> Result<u64, DecodeError> {
    if counter > MAX_COUNTER {
        return Err(DecodeError::Implausible(format!(
            "counter {counter} is beyond any an actor can have issued (at most {MAX_COUNTER})"
        )));
    }
    Ok(counter)
}

/// Reads a version vector (or a context's actor table), in actor order. Refuses more
/// than [`MAX_CONTEXT_ACTORS`] actors and counters over [`MAX_COUNTER`].
pub fn decode_vv(r: &mut Reader<'_>, epochs: Epochs) -> Result<Vec<(Actor, u64)>, DecodeError> {
    let n = r.varint()?;
    if n > MAX_CONTEXT_ACTORS as u64 {
        return Err(DecodeError::Implausible(format!(
            "{n} actors; at most {MAX_CONTEXT_ACTORS} are accepted"
        )));
    }
    let mut entries: Vec<(Actor, u64)> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let node = std::str::from_utf8(r.bytes()?)
            .map_err(|_| DecodeError::Malformed("actor is not UTF-8"))?;
        let actor = Actor {
            node: intern(node),
            incarnation: r.varint()?,
            epoch: match epochs {
                Epochs::With => r.varint()?,
                Epochs::Without => 0,
            },
        };
        if entries.last().is_some_and(|(a, _)| *a >= actor) {
            return Err(DecodeError::Malformed("actors not in order"));
        }
        entries.push((actor, plausible(r.varint()?)?));
    }
    Ok(entries)
}

/// Reads a causal context and its actor table.
pub fn decode_cc(
    r: &mut Reader<'_>,
    epochs: Epochs,
) -> Result<(CausalContext, Vec<Actor>), DecodeError> {
    let entries = decode_vv(r, epochs)?;
    let ndots = r.varint()?;
    if ndots > MAX_CONTEXT_DOTS as u64 {
        return Err(DecodeError::Implausible(format!(
            "{ndots} exact dots; at most {MAX_CONTEXT_DOTS} are accepted"
        )));
    }
    let actors: Vec<Actor> = entries.iter().map(|(a, _)| a.clone()).collect();
    let mut dots = Vec::with_capacity(ndots as usize);
    for _ in 0..ndots {
        dots.push(read_dot(r, &actors)?);
    }
    let vv = entries.into_iter().collect();
    Ok((CausalContext::from_parts(vv, dots), actors))
}

fn read_dot(r: &mut Reader<'_>, actors: &[Actor]) -> Result<Dot, DecodeError> {
    let idx = usize::try_from(r.varint()?).map_err(|_| DecodeError::Malformed("actor index"))?;
    let actor = actors
        .get(idx)
        .ok_or(DecodeError::Malformed("actor index"))?
        .clone();
    let counter = plausible(r.varint()?)?;
    if counter == 0 {
        return Err(DecodeError::Malformed("dot counter 0"));
    }
    Ok(Dot { actor, counter })
}

/// Encodes a sibling set.
pub fn encode_set(set: &SiblingSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + set.value_bytes());
    let cc = set.context();
    let epochs = Epochs::needed(cc.actors().into_iter());
    let actors: Vec<&Actor> = if epochs == Epochs::With {
        out.push(FORMAT_EPOCHS);
        encode_cc(&mut out, cc, Epochs::With)
    } else if cc.exact_len() == 0 {
        out.push(FORMAT_VV);
        encode_vv(&mut out, cc.vv());
        cc.vv().iter().map(|(a, _)| a).collect()
    } else {
        out.push(FORMAT_CC);
        encode_cc(&mut out, cc, Epochs::Without)
    };
    put_varint(&mut out, set.siblings().len() as u64);
    for s in set.siblings() {
        put_varint(&mut out, index_of(&actors, &s.dot.actor) as u64);
        put_varint(&mut out, s.dot.counter);
        match &s.value {
            Some(v) => {
                out.push(0);
                put_bytes(&mut out, v);
            }
            None => out.push(1),
        }
    }
    out
}

/// Decodes a sibling set.
pub fn decode_set(buf: &[u8]) -> Result<SiblingSet, DecodeError> {
    let mut r = Reader::new(buf);
    let (cc, actors) = match r.u8()? {
        FORMAT_VV => {
            let entries = decode_vv(&mut r, Epochs::Without)?;
            let actors = entries.iter().map(|(a, _)| a.clone()).collect();
            (
                CausalContext::from(entries.into_iter().collect::<VersionVector>()),
                actors,
            )
        }
        FORMAT_CC => decode_cc(&mut r, Epochs::Without)?,
        FORMAT_EPOCHS => decode_cc(&mut r, Epochs::With)?,
        f => return Err(DecodeError::UnknownFormat(f)),
    };
    let nsib = r.varint()?;
    let mut siblings = Vec::with_capacity(nsib.min(1024) as usize);
    for _ in 0..nsib {
        let dot = read_dot(&mut r, &actors)?;
        let value = match r.u8()? {
            0 => Some(Bytes::copy_from_slice(r.bytes()?)),
            1 => None,
            _ => return Err(DecodeError::Malformed("sibling kind")),
        };
        siblings.push(Sibling { dot, value });
    }
    r.finish()?;
    Ok(SiblingSet::from_parts(cc, siblings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blind() -> CausalContext {
        CausalContext::new()
    }

    #[test]
    fn decoded_actors_share_their_node_id() {
        let mut s = SiblingSet::new();
        s.update(&blind(), &Actor::new("node-1", 7), None).unwrap();
        let bytes = encode_set(&s);
        let (a, b) = (decode_set(&bytes).unwrap(), decode_set(&bytes).unwrap());
        let node = |s: &SiblingSet| s.context().vv().iter().next().unwrap().0.node.clone();
        assert!(Arc::ptr_eq(&node(&a), &node(&b)), "one copy per thread");
        assert_eq!(a, b);
        assert_eq!(a, s);
    }

    #[test]
    fn a_set_without_exact_dots_keeps_the_first_format() {
        let mut s = SiblingSet::new();
        s.update(&blind(), &Actor::new("a", 1), Some(Bytes::from("v")))
            .unwrap();
        // FORMAT 1, one actor "a"#1 at 1, one sibling (actor 0, counter 1, value "v").
        let v1 = [1, 1, 1, b'a', 1, 1, 1, 0, 1, 0, 1, b'v'];
        assert_eq!(encode_set(&s), v1);
        assert_eq!(decode_set(&v1).unwrap(), s);
    }

    #[test]
    fn exact_dots_round_trip() {
        let (a, b) = (Actor::new("a", 1), Actor::new("b", 2));
        let dot = |actor: &Actor, counter| Dot {
            actor: actor.clone(),
            counter,
        };
        // A context covering a:5 exactly (not a:1..4) and b:1.
        let ctx = CausalContext::from_parts([(b.clone(), 1)].into_iter().collect(), [dot(&a, 5)]);
        let mut s = SiblingSet::new();
        s.update(&ctx, &Actor::new("c", 3), Some(Bytes::from("v")))
            .unwrap();
        let enc = encode_set(&s);
        assert_eq!(enc[0], FORMAT_CC);
        let back = decode_set(&enc).unwrap();
        assert_eq!(back, s);
        assert!(back.context().covers(&dot(&a, 5)));
        assert!(!back.context().covers(&dot(&a, 4)));
    }

    #[test]
    fn actors_with_epochs_take_format_3() {
        let mut s = SiblingSet::new();
        s.update(&blind(), &Actor::new("a", 1), Some(Bytes::from("old")))
            .unwrap();
        s.update(&blind(), &Actor::new("a", 1).at_epoch(300), None)
            .unwrap();
        let enc = encode_set(&s);
        assert_eq!(enc[0], FORMAT_EPOCHS);
        let back = decode_set(&enc).unwrap();
        assert_eq!(back, s);
        let epochs: Vec<u64> = back.siblings().iter().map(|s| s.dot.actor.epoch).collect();
        assert_eq!(epochs, [0, 300]);
    }

    #[test]
    fn implausible_counters_and_too_many_actors_are_refused() {
        let mut out = vec![FORMAT_VV];
        let vv: VersionVector = [(Actor::new("a", 1), u64::MAX - 1)].into_iter().collect();
        encode_vv(&mut out, &vv);
        put_varint(&mut out, 0);
        assert!(matches!(decode_set(&out), Err(DecodeError::Implausible(_))));
        let mut out = vec![FORMAT_VV];
        put_varint(&mut out, MAX_CONTEXT_ACTORS as u64 + 1);
        assert!(matches!(decode_set(&out), Err(DecodeError::Implausible(_))));
    }

    proptest! {
        #[test]
        fn set_round_trips(writes in proptest::collection::vec((0u8..4, 0u8..3, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..20)) {
            let mut s = SiblingSet::new();
            let mut returned = CausalContext::new();
            for (a, how, delete, v) in writes {
                let ctx = match how {
                    0 => CausalContext::new(),
                    1 => s.context().clone(),
                    // A returned context sent to another actor leaves exact dots.
                    _ => returned.clone(),
                };
                let value = (!delete).then(|| Bytes::from(v));
                // Actors 2 and 3 are of one node incarnation, at two epochs.
                let actor = Actor::new(format!("node-{}", a.min(2)), u64::from(a.min(2)) * 1000)
                    .at_epoch(u64::from(a.saturating_sub(1)));
                let dot = s.update(&ctx, &actor, value).unwrap();
                returned = ctx.with_write(&dot);
            }
            prop_assert_eq!(decode_set(&encode_set(&s)).unwrap(), s);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_set(&bytes);
        }
    }

    #[test]
    fn rejects_unknown_format_and_truncation() {
        assert_eq!(decode_set(&[9]), Err(DecodeError::UnknownFormat(9)));
        let mut s = SiblingSet::new();
        s.update(&blind(), &Actor::new("a", 1), Some(Bytes::from("v")))
            .unwrap();
        let enc = encode_set(&s);
        assert_eq!(
            decode_set(&enc[..enc.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }
}
