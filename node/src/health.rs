//! What this node believes about its peers' health: the verdicts of a failure detector
//! ([`crate::failure_detection`]) per peer, fed the arrivals of gossiped heartbeats (see
//! [`crate::gossip`]).
//!
//! Coordinators skip peers not believed alive (sloppy quorum picks fallbacks instead) and
//! hinted handoff delivers only to peers believed alive. A failed request does not change
//! the verdict: within a request the coordinator moves on to a fallback, and the next
//! requests go by what the detector says.
//!
//! Verdicts are recomputed by [`Health::refresh`] (the gossip task calls it several times
//! a round) and cached, so `is_up` on the request path is one map lookup. A peer this node
//! never began watching (no gossip runs, as in in-process tests) is presumed up; gossip
//! begins watching every member of the map when it starts, as if each had just been
//! heard from, so a member dead from the start is suspected after the usual silence.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::failure_detection::{Detector, Settings, Verdict};

/// One peer's detector and the verdict last computed from it.
#[derive(Clone, Debug)]
struct Peer {
    detector: Detector,
    /// The peer's process generation the detector's history is about.
    generation: u64,
    /// The peer said it is stopping: down until a new generation is heard.
    stopping: bool,
    verdict: Verdict,
    /// How many times the verdict changed.
    changes: u64,
}

/// A peer's health as seen here.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    pub verdict: Verdict,
    pub phi: f64,
    /// Milliseconds since its heartbeat last advanced (or since the watch began).
    pub silence_ms: u64,
    pub changes: u64,
}

/// A verdict that changed in a refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub peer: String,
    pub from: Verdict,
    pub to: Verdict,
}

/// Health of every peer, as this node sees it.
pub struct Health {
    settings: Settings,
    base: Instant,
    peers: Mutex<HashMap<String, Peer>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl Health {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            base: Instant::now(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether `peer` is believed alive (peers not watched are presumed up).
    pub fn is_up(&self, peer: &str) -> bool {
        self.peers
            .lock()
            .get(peer)
            .is_none_or(|p| p.verdict == Verdict::Alive)
    }

    /// Whether the failure detector holds `peer` down (not merely suspect). A change of
    /// members does not wait for a down member to learn it (see `change::lagging`).
    pub fn is_down(&self, peer: &str) -> bool {
        self.peers
            .lock()
            .get(peer)
            .is_some_and(|p| p.verdict == Verdict::Down)
    }

    /// Begins watching `peer` as if it had just been heard from, unless already watched.
    pub fn watch(&self, peer: &str) {
        let now = self.now_ms();
        self.peers
            .lock()
            .entry(peer.to_owned())
            .or_insert_with(|| Peer {
                detector: Detector::new(now),
                generation: 0,
                stopping: false,
                verdict: Verdict::Alive,
                changes: 0,
            });
    }

    /// Stops watching `peer` (a node that left the cluster).
    pub fn forget(&self, peer: &str) {
        self.peers.lock().remove(peer);
    }

    /// Records that `peer`'s heartbeat of process `generation` advanced. A new generation
    /// (the peer restarted) starts a fresh history: the old process's rhythm says
    /// nothing of the new one's. Returns the verdict change, if any.
    pub fn heartbeat(&self, peer: &str, generation: u64, stopping: bool) -> Option<Change> {
        let now = self.now_ms();
        let mut peers = self.peers.lock();
        let p = peers.entry(peer.to_owned()).or_insert_with(|| Peer {
            detector: Detector::new(now),
            generation,
            stopping,
            verdict: Verdict::Alive,
            changes: 0,
        });
        if p.generation != generation {
            p.detector = Detector::new(now);
            p.generation = generation;
        } else {
            p.detector.heartbeat(now, &self.settings);
        }
        p.stopping = stopping;
        Self::update(peer, p, now, &self.settings)
    }

    fn update(id: &str, p: &mut Peer, now: u64, s: &Settings) -> Option<Change> {
        let verdict = if p.stopping {
            Verdict::Down
        } else {
            p.detector.verdict(now, s)
        };
        if verdict == p.verdict {
            return None;
        }
        let change = Change {
            peer: id.to_owned(),
            from: p.verdict,
            to: verdict,
        };
        p.verdict = verdict;
        p.changes += 1;
        Some(change)
    }

    /// Recomputes every verdict; returns those that changed.
    pub fn refresh(&self) -> Vec<Change> {
        let now = self.now_ms();
        let mut peers = self.peers.lock();
        peers
            .iter_mut()
            .filter_map(|(id, p)| Self::update(id, p, now, &self.settings))
            .collect()
    }

    /// The view of one peer (`None` if not watched).
    pub fn view(&self, peer: &str) -> Option<PeerView> {
        let now = self.now_ms();
        let peers = self.peers.lock();
        let p = peers.get(peer)?;
        Some(PeerView {
            verdict: p.verdict,
            phi: p.detector.phi(now, &self.settings),
            silence_ms: p.detector.silence_ms(now),
            changes: p.changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn silence_suspects_a_heartbeat_revives_and_a_restart_starts_afresh() {
        let h = Health::default();
        assert!(h.is_up("b"), "not watched: presumed up");
        h.watch("b");
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(h.heartbeat("b", 1, false), None);
        }
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert!(h.refresh().is_empty(), "2.5 s late is not yet suspect");
        tokio::time::advance(Duration::from_millis(2000)).await;
        let changes = h.refresh();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to, Verdict::Suspect);
        assert!(!h.is_up("b"));
        // Restarted: a new generation, trusted at once.
        let change = h.heartbeat("b", 2, false).expect("a change");
        assert_eq!(change.to, Verdict::Alive);
        assert!(h.is_up("b"));
        assert_eq!(h.view("b").unwrap().changes, 2);
        // Saying it stops makes it down at once.
        assert_eq!(h.heartbeat("b", 2, true).unwrap().to, Verdict::Down);
        assert!(!h.is_up("b"));
    }
}
