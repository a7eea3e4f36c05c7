//! Validation of client requests: key and value sizes, quorum overrides.
//!
//! Every check runs before anything is stored, so bad input never touches data.

/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Default largest value, in bytes (configurable per node).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Default largest encoded sibling set a put may leave (configurable per node): a key
/// must always stay small enough to read and merge.
pub const DEFAULT_MAX_SET_BYTES: usize = 8 << 20;
/// Highest counter any actor can plausibly have issued for one key (2^56: a million
/// writes a second to one key for two thousand years). A context or set claiming more
/// is forged or corrupt, and accepting it would exhaust the actor's counter.
pub const MAX_COUNTER: u64 = 1 << 56;
/// Most actors a context or stored set may name. Actors are node incarnations that
/// coordinated a write of the key, so this is far above what a cluster makes.
pub const MAX_CONTEXT_ACTORS: usize = 1024;
/// Most exact dots (beyond the per-actor prefixes) a context or stored set may hold.
pub const MAX_CONTEXT_DOTS: usize = 1024;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("key is empty; keys are 1 to {MAX_KEY_BYTES} bytes")]
    EmptyKey,
    #[error("key is {0} bytes; the limit is {MAX_KEY_BYTES} bytes")]
    KeyTooLarge(usize),
    #[error("value is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error(
        "the key would hold {size} bytes in {siblings} siblings; the limit is {limit} bytes \
         (max_set_bytes): read it and write back a merged value with the read's context"
    )]
    SetTooLarge {
        size: usize,
        siblings: usize,
        limit: usize,
    },
    #[error("{which} = {got} is out of range; it must be 1..={n} (N = {n})")]
    BadQuorum {
        which: &'static str,
        got: u32,
        n: u32,
    },
}

/// Checks a key's size.
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    match key.len() {
        0 => Err(LimitError::EmptyKey),
        n if n > MAX_KEY_BYTES => Err(LimitError::KeyTooLarge(n)),
        _ => Ok(()),
    }
}

/// Checks a value's size against `limit`.
pub fn check_value(value: &[u8], limit: usize) -> Result<(), LimitError> {
    if value.len() > limit {
        return Err(LimitError::ValueTooLarge {
            size: value.len(),
            limit,
        });
    }
    Ok(())
}

/// Resolves a per-request quorum override (`None` or `Some(0)`-free) against the default.
pub fn resolve_quorum(
    which: &'static str,
    requested: Option<u32>,
    default: u32,
    n: u32,
) -> Result<u32, LimitError> {
    let q = requested.unwrap_or(default);
    if q == 0 || q > n {
        return Err(LimitError::BadQuorum { which, got: q, n });
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(check_key(b""), Err(LimitError::EmptyKey));
        assert!(check_key(&[1; MAX_KEY_BYTES]).is_ok());
        assert_eq!(
            check_key(&[1; MAX_KEY_BYTES + 1]),
            Err(LimitError::KeyTooLarge(1025))
        );
    }

    #[test]
    fn values() {
        assert!(check_value(&[0; 10], 10).is_ok());
        assert_eq!(
            check_value(&[0; 11], 10),
            Err(LimitError::ValueTooLarge {
                size: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn quorums() {
        assert_eq!(resolve_quorum("r", None, 2, 3), Ok(2));
        assert_eq!(resolve_quorum("r", Some(3), 2, 3), Ok(3));
        assert!(resolve_quorum("w", Some(0), 2, 3).is_err());
        assert!(resolve_quorum("w", Some(4), 2, 3).is_err());
    }
}
