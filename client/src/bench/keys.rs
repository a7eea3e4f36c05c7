//! Keys, values and randomness of the load generator.
//!
//! Keys are `k` followed by the zero-padded key index, exactly `key_size` bytes long
//! (`k000000000000042` for index 42 and the default 16 bytes), so that a key set is the
//! same from one run to the next and keys sort by index. Values are random bytes (so that
//! RocksDB's compression does not flatter the numbers), drawn once per worker.

/// Why a key size does not work for a key count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key was asked for.
    #[error("--keys must be at least 1")]
    NoKeys,
    /// The keys would not fit in the size.
    #[error("--key-size {size} is too small for {keys} keys: need at least {need} bytes")]
    TooSmall {
        /// The size asked for.
        size: usize,
        /// The key count asked for.
        keys: u64,
        /// The smallest size that fits.
        need: usize,
    },
}

/// Checks that `keys` distinct keys fit in `size` bytes.
pub fn check_key_space(keys: u64, size: usize) -> Result<(), KeyError> {
    if keys == 0 {
        return Err(KeyError::NoKeys);
    }
    let need = 1 + digits(keys - 1);
    if size < need {
        return Err(KeyError::TooSmall { size, keys, need });
    }
    Ok(())
}

/// The key of index `i`: `k` and `i` zero-padded to `size - 1` digits. `size` must fit
/// `i` (see [`check_key_space`]).
pub fn key_for(i: u64, size: usize) -> Vec<u8> {
    let width = size.saturating_sub(1);
    format!("k{i:0width$}").into_bytes()
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// A small, fast pseudo-random generator (SplitMix64): the bench needs speed and
/// independence between workers, not cryptographic quality.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (use a different seed per worker).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for key choice, no division.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_to_the_size() {
        assert_eq!(key_for(42, 16), b"k000000000000042");
        assert_eq!(key_for(0, 2), b"k0");
        assert_eq!(key_for(9999, 5), b"k9999");
        for i in [0, 1, 99, 12345] {
            assert_eq!(key_for(i, 16).len(), 16);
        }
    }

    #[test]
    fn key_space_is_checked() {
        assert!(check_key_space(10_000, 16).is_ok());
        assert!(check_key_space(10_000, 5).is_ok());
        assert_eq!(
            check_key_space(10_000, 4),
            Err(KeyError::TooSmall {
                size: 4,
                keys: 10_000,
                need: 5
            })
        );
        assert_eq!(
            check_key_space(1, 1),
            Err(KeyError::TooSmall {
                size: 1,
                keys: 1,
                need: 2
            })
        );
        assert_eq!(check_key_space(0, 16), Err(KeyError::NoKeys));
    }

    #[test]
    fn keys_are_distinct() {
        let keys: std::collections::HashSet<_> = (0..1000).map(|i| key_for(i, 8)).collect();
        assert_eq!(keys.len(), 1000);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            assert!(a.below(10) < 10);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(a.bytes(13).len(), 13);
        assert_eq!(a.bytes(0).len(), 0);
    }

    #[test]
    fn rng_covers_the_range() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
