//! Binary encoding of version vectors and sibling sets.
//!
//! This is the on-disk format of a stored key and the payload replicas exchange, so it is
//! versioned by a leading format byte. Integers are LEB128 varints; byte strings are
//! length-prefixed. A sibling's actor is an index into the set's vector (every sibling's
//! dot is covered by it), which keeps actor names out of every sibling.
//!
//! ```text
//! set     = FORMAT(1) vv nsib:varint sibling*
//! vv      = nact:varint (node:bytes incarnation:varint counter:varint)*
//! sibling = actor_index:varint counter:varint kind:u8(0 value, 1 tombstone) [value:bytes]
//! ```

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::siblings::{Sibling, SiblingSet};
use crate::version::{Actor, Dot, VersionVector};

/// Format byte of the current encoding.
pub const FORMAT: u8 = 1;

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

/// Appends a version vector.
pub fn encode_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    put_varint(out, vv.len() as u64);
    for (actor, counter) in vv.iter() {
        put_bytes(out, actor.node.as_bytes());
        put_varint(out, actor.incarnation);
        put_varint(out, counter);
    }
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

/// Reads a version vector, in actor order.
pub fn decode_vv(r: &mut Reader<'_>) -> Result<Vec<(Actor, u64)>, DecodeError> {
    let n = r.varint()?;
    let mut entries: Vec<(Actor, u64)> = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let node = std::str::from_utf8(r.bytes()?)
            .map_err(|_| DecodeError::Malformed("actor is not UTF-8"))?;
        let actor = Actor {
            node: intern(node),
            incarnation: r.varint()?,
        };
        if entries.last().is_some_and(|(a, _)| *a >= actor) {
            return Err(DecodeError::Malformed("actors not in order"));
        }
        entries.push((actor, r.varint()?));
    }
    Ok(entries)
}

/// Encodes a sibling set.
pub fn encode_set(set: &SiblingSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + set.value_bytes());
    out.push(FORMAT);
    let vv = set.version_vector();
    encode_vv(&mut out, vv);
    let actors: Vec<&Actor> = vv.iter().map(|(a, _)| a).collect();
    put_varint(&mut out, set.siblings().len() as u64);
    for s in set.siblings() {
        let idx = actors
            .binary_search(&&s.dot.actor)
            .expect("vv covers every sibling");
        put_varint(&mut out, idx as u64);
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
    match r.u8()? {
        FORMAT => {}
        f => return Err(DecodeError::UnknownFormat(f)),
    }
    let entries = decode_vv(&mut r)?;
    let nsib = r.varint()?;
    let mut siblings = Vec::with_capacity(nsib.min(1024) as usize);
    for _ in 0..nsib {
        let idx = r.varint()? as usize;
        let actor = entries
            .get(idx)
            .ok_or(DecodeError::Malformed("actor index"))?
            .0
            .clone();
        let counter = r.varint()?;
        let value = match r.u8()? {
            0 => Some(Bytes::copy_from_slice(r.bytes()?)),
            1 => None,
            _ => return Err(DecodeError::Malformed("sibling kind")),
        };
        siblings.push(Sibling {
            dot: Dot { actor, counter },
            value,
        });
    }
    r.finish()?;
    Ok(SiblingSet::from_parts(
        entries.into_iter().collect(),
        siblings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decoded_actors_share_their_node_id() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), &Actor::new("node-1", 7), None);
        let bytes = encode_set(&s);
        let (a, b) = (decode_set(&bytes).unwrap(), decode_set(&bytes).unwrap());
        let node = |s: &SiblingSet| s.version_vector().iter().next().unwrap().0.node.clone();
        assert!(Arc::ptr_eq(&node(&a), &node(&b)), "one copy per thread");
        assert_eq!(a, b);
        assert_eq!(a, s);
    }

    proptest! {
        #[test]
        fn set_round_trips(writes in proptest::collection::vec((0u8..4, any::<bool>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..20)) {
            let mut s = SiblingSet::new();
            for (a, with_ctx, delete, v) in writes {
                let ctx = if with_ctx { s.version_vector().clone() } else { VersionVector::new() };
                let value = (!delete).then(|| Bytes::from(v));
                s.update(&ctx, &Actor::new(format!("node-{a}"), u64::from(a) * 1000), value);
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
        s.update(
            &VersionVector::new(),
            &Actor::new("a", 1),
            Some(Bytes::from("v")),
        );
        let enc = encode_set(&s);
        assert_eq!(
            decode_set(&enc[..enc.len() - 1]),
            Err(DecodeError::Truncated)
        );
    }
}
