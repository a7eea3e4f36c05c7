//! The run's trace: every call the network delivers and every client operation, with the
//! simulated time, folded into one hash. The same seed must give the same hash.

use std::hash::{DefaultHasher, Hash, Hasher};

use parking_lot::Mutex;

/// A running hash of events (`DefaultHasher::new()` has fixed keys: the same events give
/// the same hash in every process).
#[derive(Default)]
pub struct Trace {
    state: Mutex<(DefaultHasher, u64)>,
}

impl Trace {
    /// Folds one event in.
    pub fn record(&self, event: impl Hash) {
        let mut s = self.state.lock();
        event.hash(&mut s.0);
        s.1 += 1;
    }

    /// The hash so far and how many events it covers.
    pub fn finish(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.0.finish(), s.1)
    }
}

/// Simulated milliseconds since the run began.
pub fn now_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}
