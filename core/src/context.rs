//! The opaque causal context handed to clients.
//!
//! A `get` returns the version vector it read as a context; a `put` or `delete` sends it
//! back to say which versions it supersedes. Clients must treat it as opaque bytes (the
//! CLI prints it as URL-safe base64). It carries a tag of the cluster that made it and a
//! checksum, so a corrupt context or one from another cluster is refused with a clear
//! error rather than silently superseding the wrong versions.
//!
//! ```text
//! context = FORMAT(1) cluster_tag:u64le vv checksum:u64le   (checksum over what precedes)
//! ```

use crate::codec::{decode_vv, encode_vv, DecodeError, Reader};
use crate::hash::{checksum, key_hash};
use crate::version::VersionVector;

const FORMAT: u8 = 1;

/// Why a context was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("context is corrupt: {0}")]
    Corrupt(String),
    #[error("context was made by another cluster")]
    OtherCluster,
}

/// The tag identifying a cluster in its contexts.
pub fn cluster_tag(cluster_id: &str) -> u64 {
    key_hash(cluster_id.as_bytes())
}

/// Encodes `vv` as a context of cluster `tag`. The empty vector encodes as no bytes.
pub fn encode(tag: u64, vv: &VersionVector) -> Vec<u8> {
    if vv.is_empty() {
        return Vec::new();
    }
    let mut out = vec![FORMAT];
    out.extend_from_slice(&tag.to_le_bytes());
    encode_vv(&mut out, vv);
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes a context made by cluster `tag`. No bytes means the empty context.
pub fn decode(tag: u64, bytes: &[u8]) -> Result<VersionVector, ContextError> {
    if bytes.is_empty() {
        return Ok(VersionVector::new());
    }
    let corrupt = |e: DecodeError| ContextError::Corrupt(e.to_string());
    if bytes.len() < 1 + 8 + 1 + 8 {
        return Err(ContextError::Corrupt(format!(
            "{} bytes is too short",
            bytes.len()
        )));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if checksum(body).to_le_bytes() != sum {
        return Err(ContextError::Corrupt("checksum mismatch".into()));
    }
    let mut r = Reader::new(body);
    match r.u8().map_err(corrupt)? {
        FORMAT => {}
        f => return Err(ContextError::Corrupt(format!("unknown format {f}"))),
    }
    if u64::from_le_bytes(r.fixed().map_err(corrupt)?) != tag {
        return Err(ContextError::OtherCluster);
    }
    let vv = decode_vv(&mut r).map_err(corrupt)?;
    r.finish().map_err(corrupt)?;
    Ok(vv.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Actor;

    fn vv() -> VersionVector {
        [(Actor::new("n0", 7), 3), (Actor::new("n1", 1), 9)]
            .into_iter()
            .collect()
    }

    #[test]
    fn round_trips() {
        let tag = cluster_tag("c1");
        assert_eq!(decode(tag, &encode(tag, &vv())).unwrap(), vv());
        assert_eq!(decode(tag, &[]).unwrap(), VersionVector::new());
    }

    #[test]
    fn refuses_other_cluster() {
        let enc = encode(cluster_tag("c1"), &vv());
        assert_eq!(
            decode(cluster_tag("c2"), &enc),
            Err(ContextError::OtherCluster)
        );
    }

    #[test]
    fn refuses_any_flipped_bit() {
        let tag = cluster_tag("c1");
        let enc = encode(tag, &vv());
        for i in 0..enc.len() * 8 {
            let mut bad = enc.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(decode(tag, &bad), Err(ContextError::Corrupt(_))),
                "bit {i}"
            );
        }
    }
}
