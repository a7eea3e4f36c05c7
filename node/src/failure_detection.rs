//! Failure detection: the phi accrual detector (Hayashibara et al., 2004, as in Cassandra
//! and Akka) over the arrival times of a peer's gossiped heartbeats.
//!
//! Pure logic: times are milliseconds of a monotonic clock handed in by the caller
//! ([`crate::health`] in the node, a fake clock in tests). A [`Detector`] keeps the last
//! arrival and a window of the intervals between arrivals; `phi` says how unlikely it is,
//! given those intervals (taken as normally distributed), that the next heartbeat is
//! still on its way after the silence so far: phi = -log10(P(interval > silence)). A phi
//! of 8 means a 1e-8 chance of being wrong. The detector adapts to the network: where
//! heartbeats arrive irregularly (a loaded machine) it waits longer before suspecting.
//!
//! The verdict is *alive*, *suspect* once phi reaches [`Settings::suspect_phi`] (the
//! coordinator skips the peer and hinted handoff waits), or *down* after
//! [`Settings::down_after_ms`] of silence. Neither takes a node's partitions away:
//! membership changes stay explicit.

use std::collections::VecDeque;

/// How the detector weighs silence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The interval heartbeats are expected at (the gossip interval): the estimate until
    /// intervals have been seen.
    pub expected_interval_ms: u64,
    /// Floor of the intervals' standard deviation: heartbeats of a steady network arrive
    /// so regularly that, without it, one late round would be suspected.
    pub min_std_dev_ms: u64,
    /// Phi at and above which a peer is suspected.
    pub suspect_phi: f64,
    /// Silence after which a peer is believed down.
    pub down_after_ms: u64,
    /// How many intervals the estimate is made from.
    pub window: usize,
}

impl Default for Settings {
    /// For heartbeats every second: a peer silent for about 3.6 s is suspected (phi 8
    /// with intervals of 1 s ± 0.5 s), one silent for 10 s is down.
    fn default() -> Self {
        Self {
            expected_interval_ms: 1000,
            min_std_dev_ms: 500,
            suspect_phi: 8.0,
            down_after_ms: 10_000,
            window: 100,
        }
    }
}

/// What the detector believes of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Alive,
    Suspect,
    Down,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Alive => "alive",
            Verdict::Suspect => "suspect",
            Verdict::Down => "down",
        }
    }
}

/// The largest phi reported (the formula reaches infinity once the silence is long).
pub const MAX_PHI: f64 = 1000.0;

/// The heartbeat history of one peer.
#[derive(Clone, Debug)]
pub struct Detector {
    last_ms: u64,
    intervals: VecDeque<u64>,
}

impl Detector {
    /// A detector whose first heartbeat arrived at `now_ms` (or, for a peer never heard
    /// from, whose watch starts then).
    pub fn new(now_ms: u64) -> Self {
        Self {
            last_ms: now_ms,
            intervals: VecDeque::new(),
        }
    }

    /// Records a heartbeat arriving at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64, s: &Settings) {
        let interval = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if self.intervals.len() >= s.window.max(1) {
            self.intervals.pop_front();
        }
        self.intervals.push_back(interval);
    }

    /// Milliseconds since the last heartbeat.
    pub fn silence_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_ms)
    }

    /// The mean and standard deviation of the intervals (the expected interval while
    /// none was seen), the deviation at least `min_std_dev_ms`.
    fn estimate(&self, s: &Settings) -> (f64, f64) {
        let expected = s.expected_interval_ms as f64;
        let n = self.intervals.len() as f64;
        let (mean, var) = if self.intervals.is_empty() {
            (expected, (expected / 4.0).powi(2))
        } else {
            let mean = self.intervals.iter().map(|&i| i as f64).sum::<f64>() / n;
            let var = self
                .intervals
                .iter()
                .map(|&i| (i as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var)
        };
        (mean, var.sqrt().max(s.min_std_dev_ms as f64))
    }

    /// How strongly the silence so far suggests the peer is gone (see the module header).
    pub fn phi(&self, now_ms: u64, s: &Settings) -> f64 {
        let (mean, std_dev) = self.estimate(s);
        phi(self.silence_ms(now_ms) as f64, mean, std_dev)
    }

    /// The verdict at `now_ms`.
    pub fn verdict(&self, now_ms: u64, s: &Settings) -> Verdict {
        if self.silence_ms(now_ms) >= s.down_after_ms {
            Verdict::Down
        } else if self.phi(now_ms, s) >= s.suspect_phi {
            Verdict::Suspect
        } else {
            Verdict::Alive
        }
    }
}

/// -log10 of the chance that a normally distributed interval (`mean`, `std_dev`) is longer
/// than `silence`, with the logistic approximation of the normal distribution Akka uses
/// (accurate to about 1e-4 and cheap), capped at [`MAX_PHI`].
pub fn phi(silence: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (silence - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if silence > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    (-p.log10()).clamp(0.0, MAX_PHI)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A detector fed heartbeats every `every` ms from 0 to `until`, by a fake clock.
    fn fed(every: u64, until: u64, s: &Settings) -> Detector {
        let mut d = Detector::new(0);
        let mut t = every;
        while t <= until {
            d.heartbeat(t, s);
            t += every;
        }
        d
    }

    /// The first millisecond after `from` at which `d` gives `verdict`.
    fn first(d: &Detector, from: u64, verdict: Verdict, s: &Settings) -> u64 {
        (from..from + 60_000)
            .step_by(10)
            .find(|&t| d.verdict(t, s) == verdict)
            .expect("reached")
    }

    #[test]
    fn phi_grows_with_silence() {
        let s = Settings::default();
        let d = fed(1000, 10_000, &s);
        let mut last = -1.0;
        for t in (10_000..20_000).step_by(100) {
            let phi = d.phi(t, &s);
            assert!(phi >= last, "phi {phi} at {t} after {last}");
            last = phi;
        }
        assert!(d.phi(10_000, &s) < 0.5, "just heard: phi near 0");
        assert_eq!(d.phi(60_000, &s), MAX_PHI);
    }

    #[test]
    fn regular_heartbeats_are_suspected_within_five_seconds_of_stopping() {
        let s = Settings::default();
        let d = fed(1000, 30_000, &s);
        assert_eq!(d.verdict(31_000, &s), Verdict::Alive, "one round late");
        assert_eq!(d.verdict(32_000, &s), Verdict::Alive, "two rounds late");
        let suspected = first(&d, 30_000, Verdict::Suspect, &s) - 30_000;
        assert!(
            (3000..5000).contains(&suspected),
            "suspected after {suspected} ms"
        );
        let down = first(&d, 30_000, Verdict::Down, &s) - 30_000;
        assert_eq!(down, s.down_after_ms);
    }

    #[test]
    fn irregular_heartbeats_are_given_longer() {
        let s = Settings::default();
        let regular = fed(1000, 30_000, &s);
        let mut irregular = Detector::new(0);
        for (i, t) in (1..=30u64).map(|i| (i, i * 1000)).collect::<Vec<_>>() {
            // Alternately early and late by 700 ms.
            let jitter = if i % 2 == 0 { 700 } else { 0 };
            irregular.heartbeat(t + jitter - 350, &s);
        }
        let after_regular = first(&regular, 30_000, Verdict::Suspect, &s) - 30_000;
        let after_irregular = first(&irregular, 29_650, Verdict::Suspect, &s) - 29_650;
        assert!(
            after_irregular > after_regular,
            "irregular {after_irregular} ms, regular {after_regular} ms"
        );
    }

    #[test]
    fn a_peer_never_heard_from_is_suspected_from_the_expected_interval() {
        let s = Settings::default();
        let d = Detector::new(5_000);
        assert_eq!(d.verdict(5_000, &s), Verdict::Alive);
        let suspected = first(&d, 5_000, Verdict::Suspect, &s) - 5_000;
        assert!(
            (2000..5000).contains(&suspected),
            "suspected after {suspected} ms"
        );
    }

    #[test]
    fn a_heartbeat_makes_a_suspect_alive_at_once() {
        let s = Settings::default();
        let mut d = fed(1000, 10_000, &s);
        assert_eq!(d.verdict(25_000, &s), Verdict::Down);
        d.heartbeat(25_000, &s);
        assert_eq!(d.verdict(25_000, &s), Verdict::Alive);
        assert_eq!(d.verdict(25_500, &s), Verdict::Alive);
    }

    #[test]
    fn the_window_forgets_old_intervals() {
        let s = Settings {
            window: 10,
            ..Settings::default()
        };
        let mut d = Detector::new(0);
        // Long intervals first, then short ones that fill the window.
        for t in (1..=10).map(|i| i * 5000) {
            d.heartbeat(t, &s);
        }
        for t in (1..=10).map(|i| 50_000 + i * 1000) {
            d.heartbeat(t, &s);
        }
        assert_eq!(d.intervals.len(), 10);
        assert!(d.intervals.iter().all(|&i| i == 1000));
    }

    #[test]
    fn phi_matches_the_normal_tail() {
        // One deviation past the mean: P ~ 0.159, phi ~ 0.8.
        let p = phi(1500.0, 1000.0, 500.0);
        assert!((p - 0.8).abs() < 0.05, "{p}");
        // At the mean: P = 0.5.
        let p = phi(1000.0, 1000.0, 500.0);
        assert!((p - 0.301).abs() < 0.01, "{p}");
    }
}
