//! What this node believes about its peers' health.
//!
//! A peer is *down* after a request to it fails or times out, and *up* again after any
//! request or probe succeeds. Coordinators skip peers believed down (sloppy quorum picks
//! fallbacks instead); the prober ([`crate::handoff`] wakes on recovery) retries down peers
//! with exponential back-off, so a dead peer costs one cheap probe now and then rather
//! than a timeout on every request.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// First probe delay after a failure.
pub const PROBE_MIN: Duration = Duration::from_millis(200);
/// Longest probe delay.
pub const PROBE_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct PeerState {
    failures: u32,
    last_ok: Option<Instant>,
    next_probe: Instant,
}

impl PeerState {
    fn new() -> Self {
        Self {
            failures: 0,
            last_ok: None,
            next_probe: Instant::now(),
        }
    }
}

/// A peer's health as seen here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub up: bool,
    pub failures: u32,
    pub since_ok: Duration,
}

/// The state of `peer`, created on first use (no allocation on the hot path after that).
fn state<'a>(peers: &'a mut HashMap<String, PeerState>, peer: &str) -> &'a mut PeerState {
    if !peers.contains_key(peer) {
        peers.insert(peer.to_owned(), PeerState::new());
    }
    peers.get_mut(peer).expect("inserted above")
}

/// Health of every peer, as this node sees it.
pub struct Health {
    started: Instant,
    peers: Mutex<HashMap<String, PeerState>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            peers: Mutex::new(HashMap::new()),
        }
    }
}

impl Health {
    /// Whether `peer` is believed up (peers never seen are presumed up).
    pub fn is_up(&self, peer: &str) -> bool {
        self.peers.lock().get(peer).is_none_or(|s| s.failures == 0)
    }

    /// Records a successful exchange. Returns true if the peer was down.
    pub fn record_success(&self, peer: &str) -> bool {
        let mut peers = self.peers.lock();
        let s = state(&mut peers, peer);
        let was_down = s.failures > 0;
        s.failures = 0;
        s.last_ok = Some(Instant::now());
        was_down
    }

    /// Records a failed exchange (error or timeout).
    pub fn record_failure(&self, peer: &str) {
        let mut peers = self.peers.lock();
        let s = state(&mut peers, peer);
        s.failures = s.failures.saturating_add(1);
        let backoff = PROBE_MIN
            .saturating_mul(1 << s.failures.min(5))
            .min(PROBE_MAX);
        s.next_probe = Instant::now() + backoff;
    }

    /// Down peers whose next probe is due.
    pub fn due_probes(&self) -> Vec<String> {
        let now = Instant::now();
        self.peers
            .lock()
            .iter()
            .filter(|(_, s)| s.failures > 0 && s.next_probe <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The view of one peer.
    pub fn view(&self, peer: &str) -> PeerView {
        let peers = self.peers.lock();
        match peers.get(peer) {
            None => PeerView {
                up: true,
                failures: 0,
                since_ok: self.started.elapsed(),
            },
            Some(s) => PeerView {
                up: s.failures == 0,
                failures: s.failures,
                since_ok: s.last_ok.unwrap_or(self.started).elapsed(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_marks_down_with_backoff_and_success_recovers() {
        let h = Health::default();
        assert!(h.is_up("b"));
        h.record_failure("b");
        assert!(!h.is_up("b"));
        assert!(h.due_probes().is_empty(), "probe waits for its back-off");
        // One failure: a back-off of 2 × PROBE_MIN.
        tokio::time::sleep(PROBE_MIN * 2 + Duration::from_millis(50)).await;
        assert_eq!(h.due_probes(), vec!["b".to_owned()]);
        assert!(h.record_success("b"), "reports the recovery");
        assert!(h.is_up("b"));
        assert!(!h.record_success("b"));
    }
}
