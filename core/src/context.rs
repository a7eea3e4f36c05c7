//! The opaque causal context handed to clients.
//!
//! A `get` returns the causal context it read; a `put` or `delete` returns one covering
//! what its own context covered plus its new version, and sends it back to say which
//! versions it supersedes. Clients must treat it as opaque bytes (the CLI prints it as
//! URL-safe base64).
//!
//! A context is a [`CausalContext`] (a dotted version vector: a prefix per actor plus
//! exact dots), so it covers exactly the versions its client saw. It carries the tag of
//! the cluster that made it and an HMAC-SHA256 keyed by the cluster's secret, so that a
//! client can neither forge coverage of versions it never read nor send a corrupt
//! context, and one from another cluster is refused with a clear error rather than
//! superseding the wrong versions.
//!
//! ```text
//! context = FORMAT(3) cluster_tag:u64le cc' mac:16  (HMAC-SHA256 over what precedes, truncated)
//! ```
//!
//! (`cc'` is a context with epochs, see [`crate::codec`].) Format 2, the same with a
//! context without epochs, is still read.
//!
//! Format 1 (a plain version vector with a checksum, before this) is refused: a put's
//! format-1 context could cover writes its client never saw, and it has no MAC. A
//! client holding one reads the key again.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::{decode_cc, encode_cc, DecodeError, Epochs, Reader};
use crate::hash::key_hash;
use crate::version::CausalContext;

const FORMAT: u8 = 3;
/// Format 2: as 3, without epochs.
const FORMAT_NO_EPOCHS: u8 = 2;
const OLD_FORMAT: u8 = 1;
const MAC_BYTES: usize = 16;
/// Shortest cluster secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// Why a context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("context is corrupt: {0}")]
    Corrupt(String),
    #[error("context was made by another cluster")]
    OtherCluster,
    #[error(
        "context is corrupt or was not made by this cluster: its MAC does not match \
         (contexts cannot be edited; send one a get or put returned)"
    )]
    BadMac,
    #[error(
        "context is in format 1, which is no longer accepted (it could cover writes its \
         client never saw): get the key again for a new context"
    )]
    OldFormat,
    #[error("context is implausible: {0}")]
    Implausible(String),
}

/// The tag identifying a cluster in its contexts.
pub fn cluster_tag(cluster_id: &str) -> u64 {
    key_hash(cluster_id.as_bytes())
}

/// What a node needs to make and check its cluster's contexts: the cluster's tag and
/// its secret MAC key.
#[derive(Clone)]
pub struct ContextKey {
    tag: u64,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContextKey(tag {:016x}, <secret>)", self.tag)
    }
}

impl ContextKey {
    /// The key of cluster `cluster_id` with shared `secret` (at least
    /// [`MIN_SECRET_BYTES`]; checked by the node's configuration).
    pub fn new(cluster_id: &str, secret: &[u8]) -> Self {
        Self {
            tag: cluster_tag(cluster_id),
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size"),
        }
    }

    fn mac_of(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(body);
        mac
    }

    /// Encodes `cc` as a context. The empty context encodes as no bytes.
    pub fn encode(&self, cc: &CausalContext) -> Vec<u8> {
        if cc.is_empty() {
            return Vec::new();
        }
        let mut out = vec![FORMAT];
        out.extend_from_slice(&self.tag.to_le_bytes());
        encode_cc(&mut out, cc, Epochs::With);
        let mac = self.mac_of(&out).finalize().into_bytes();
        out.extend_from_slice(&mac[..MAC_BYTES]);
        out
    }

    /// Decodes a context made by this cluster. No bytes means the empty context.
    pub fn decode(&self, bytes: &[u8]) -> Result<CausalContext, ContextError> {
        if bytes.is_empty() {
            return Ok(CausalContext::new());
        }
        let epochs = match bytes[0] {
            FORMAT => Epochs::With,
            FORMAT_NO_EPOCHS => Epochs::Without,
            OLD_FORMAT => return Err(ContextError::OldFormat),
            f => return Err(ContextError::Corrupt(format!("unknown format {f}"))),
        };
        if bytes.len() < 1 + 8 + 2 + MAC_BYTES {
            return Err(ContextError::Corrupt(format!(
                "{} bytes is too short",
                bytes.len()
            )));
        }
        let (body, mac) = bytes.split_at(bytes.len() - MAC_BYTES);
        let tag = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        if self.mac_of(body).verify_truncated_left(mac).is_err() {
            return Err(if tag != self.tag {
                ContextError::OtherCluster
            } else {
                ContextError::BadMac
            });
        }
        if tag != self.tag {
            // Made with this secret under another cluster id.
            return Err(ContextError::OtherCluster);
        }
        let mut r = Reader::new(&body[9..]);
        let (cc, _) = decode_cc(&mut r, epochs).map_err(refused)?;
        r.finish().map_err(refused)?;
        Ok(cc)
    }
}

fn refused(e: DecodeError) -> ContextError {
    match e {
        DecodeError::Implausible(why) => ContextError::Implausible(why),
        e => ContextError::Corrupt(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_vv, put_varint};
    use crate::limits::{MAX_CONTEXT_ACTORS, MAX_COUNTER};
    use crate::version::{Actor, Dot, VersionVector};

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn key(cluster: &str) -> ContextKey {
        ContextKey::new(cluster, SECRET)
    }

    fn cc() -> CausalContext {
        let vv: VersionVector = [(Actor::new("n0", 7), 3), (Actor::new("n1", 1), 9)]
            .into_iter()
            .collect();
        let exact = Dot {
            actor: Actor::new("n2", 4),
            counter: 6,
        };
        CausalContext::from_parts(vv, [exact])
    }

    /// A format-2 context of `body` (after the format byte and tag) with a valid MAC:
    /// what a node holding the secret would sign, however absurd its content.
    fn signed(k: &ContextKey, body: &[u8]) -> Vec<u8> {
        let mut out = vec![FORMAT_NO_EPOCHS];
        out.extend_from_slice(&k.tag.to_le_bytes());
        out.extend_from_slice(body);
        let mac = k.mac_of(&out).finalize().into_bytes();
        out.extend_from_slice(&mac[..MAC_BYTES]);
        out
    }

    #[test]
    fn round_trips() {
        let k = key("c1");
        assert_eq!(k.decode(&k.encode(&cc())).unwrap(), cc());
        assert_eq!(k.decode(&[]).unwrap(), CausalContext::new());
        let mut with_epochs = cc();
        with_epochs.add(&Dot {
            actor: Actor::new("n2", 4).at_epoch(77),
            counter: 1,
        });
        assert_eq!(k.decode(&k.encode(&with_epochs)).unwrap(), with_epochs);
    }

    #[test]
    fn reads_format_2_contexts() {
        let k = key("c1");
        let mut body = Vec::new();
        encode_cc(&mut body, &cc(), Epochs::Without);
        assert_eq!(k.decode(&signed(&k, &body)).unwrap(), cc());
    }

    #[test]
    fn refuses_other_cluster_and_other_secret() {
        let enc = key("c1").encode(&cc());
        assert_eq!(key("c2").decode(&enc), Err(ContextError::OtherCluster));
        let other_secret = ContextKey::new("c1", b"another secret of 16+ bytes");
        assert_eq!(other_secret.decode(&enc), Err(ContextError::BadMac));
    }

    #[test]
    fn refuses_any_flipped_bit() {
        let k = key("c1");
        let enc = k.encode(&cc());
        for i in 0..enc.len() * 8 {
            let mut bad = enc.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(k.decode(&bad).is_err(), "bit {i}");
        }
    }

    #[test]
    fn refuses_the_old_format_with_a_reason() {
        let mut old = vec![OLD_FORMAT];
        old.extend_from_slice(&cluster_tag("c1").to_le_bytes());
        encode_vv(&mut old, cc().vv());
        old.extend_from_slice(&[0; 8]);
        let err = key("c1").decode(&old).unwrap_err();
        assert_eq!(err, ContextError::OldFormat);
        assert!(err.to_string().contains("get the key again"), "{err}");
    }

    #[test]
    fn refuses_implausible_contexts_even_when_signed() {
        let k = key("c1");
        let mut huge = Vec::new();
        let vv: VersionVector = [(Actor::new("n0", 1), MAX_COUNTER + 1)]
            .into_iter()
            .collect();
        encode_vv(&mut huge, &vv);
        put_varint(&mut huge, 0);
        assert!(matches!(
            k.decode(&signed(&k, &huge)),
            Err(ContextError::Implausible(_))
        ));
        let mut crowded = Vec::new();
        put_varint(&mut crowded, MAX_CONTEXT_ACTORS as u64 + 1);
        let err = k.decode(&signed(&k, &crowded)).unwrap_err();
        assert!(err.to_string().contains("at most 1024"), "{err}");
    }
}
