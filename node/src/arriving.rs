//! Partitions a new replica is most likely still receiving, as reads for repair found
//! them: while members change, a read also asks the new preference list's other members
//! for repair only ([`crate::coordinator::read`]), and until a partition has reached its
//! new replica that replica lacks nearly every key. Repairing it key by key does the
//! transfer's work at the price of a call and a write per key (a 4→3 change of 300,000
//! keys at half of peak did 16,400-26,300 read repairs before this, 11,500-12,700
//! after). So a new replica that answers a key with
//! nothing is not repaired (the transfer brings the key, and its verification catches
//! what lands after the snapshot) and is not read again for repair in that partition for
//! [`HOLD`], under the same map state.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a replica found still receiving a partition is not read for repair in it.
pub const HOLD: Duration = Duration::from_secs(5);

/// Most (replica, partition) pairs remembered; past it the oldest map state's entries
/// are dropped, then all (the memory stays bounded whatever the cluster's size).
const MAX_ENTRIES: usize = 1 << 16;

/// (replica, partition) → (map-state version, until when it is not read for repair).
#[derive(Default)]
pub struct Arriving {
    seen: Mutex<HashMap<(String, u32), (u64, Instant)>>,
}

impl Arriving {
    /// Whether reading `replica` for repair in partition `p` is not worth it now, under
    /// map-state `version`.
    pub fn skip(&self, replica: &str, p: u32, version: u64, now: Instant) -> bool {
        self.seen
            .lock()
            .get(&(replica.to_owned(), p))
            .is_some_and(|&(v, until)| v == version && now < until)
    }

    /// `replica` answered a key of partition `p` with nothing under map-state `version`.
    pub fn note(&self, replica: &str, p: u32, version: u64, now: Instant) {
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_ENTRIES {
            seen.retain(|_, &mut (v, until)| v == version && now < until);
            if seen.len() >= MAX_ENTRIES {
                seen.clear();
            }
        }
        seen.insert((replica.to_owned(), p), (version, now + HOLD));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiving_replica_is_skipped_for_a_while_in_that_partition_only() {
        let a = Arriving::default();
        let t0 = Instant::now();
        assert!(!a.skip("n4", 7, 3, t0));
        a.note("n4", 7, 3, t0);
        assert!(a.skip("n4", 7, 3, t0 + Duration::from_secs(1)));
        assert!(!a.skip("n4", 8, 3, t0), "another partition");
        assert!(!a.skip("n3", 7, 3, t0), "another replica");
        assert!(!a.skip("n4", 7, 4, t0), "another map state");
        assert!(!a.skip("n4", 7, 3, t0 + HOLD), "the hold is over");
    }
}
