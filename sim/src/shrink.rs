//! Shrinking a failing seed: the same seed re-run with a shorter fault phase (the run
//! cut after fewer faults), without member changes, and with faults skipped (delta
//! debugging over the nemesis' list: chunks of faults dropped while the run still fails
//! the same way), within a bound on re-runs. The nemesis draws its schedule from a
//! generator of its own, so a fault skipped or a run cut short leaves every other
//! fault as it was (same time, same kind); what the nodes and clients do around them
//! differs, so each candidate is run and checked, and the result replays exactly.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::{run, Config, Report};

/// The phrases that name a violation's kind (the rest names keys, nodes, numbers).
const KINDS: &[&str] = &[
    "acknowledged elements lost",
    "deleted elements came back",
    "elements no client tried",
    "carries different bytes",
    "differ after quiescence",
    "Merkle roots differ",
    "hints left",
    "still pending",
    "disagree on the map",
    "nodes run at the end",
    "which it does not replicate",
];

/// The kind of violation `v` is.
pub fn kind(v: &str) -> &str {
    KINDS.iter().find(|k| v.contains(*k)).copied().unwrap_or(v)
}

/// The smallest failing schedule found.
#[derive(Debug)]
pub struct Shrunk {
    pub seed: u64,
    /// The run that fails: its fault phase, whether members change, the faults skipped.
    pub cfg: Config,
    /// The kind of violation every accepted candidate showed.
    pub kind: String,
    /// Faults injected by the original run and by the shrunk one.
    pub faults_before: usize,
    pub faults_after: usize,
    /// Re-runs tried.
    pub runs: usize,
    /// The shrunk run's report.
    pub report: Report,
}

impl Shrunk {
    /// The flags that replay the shrunk run with the simulator's binary.
    pub fn flags(&self) -> String {
        let mut f = format!(
            "--seed {} --chaos-secs {}",
            self.seed,
            self.cfg.chaos.as_secs()
        );
        if !self.cfg.changes {
            f.push_str(" --no-changes");
        }
        if !self.cfg.skip.is_empty() {
            let skip: Vec<String> = self.cfg.skip.iter().map(|i| i.to_string()).collect();
            f.push_str(&format!(" --skip {}", skip.join(",")));
        }
        f
    }
}

/// Faults a run injected (drawn and not skipped).
pub fn injected(r: &Report, cfg: &Config) -> usize {
    (0..r.fault_times.len())
        .filter(|i| !cfg.skip.contains(i))
        .count()
}

/// Shrinks `seed`, which fails under `cfg` as `first` reports, with at most `budget`
/// re-runs: first the shortest fault phase that still fails (bisecting over the times
/// of its faults), then without member changes, then delta debugging over the faults
/// left. `None` if `first` has no violation.
pub fn shrink(seed: u64, cfg: &Config, first: Report, budget: usize) -> Option<Shrunk> {
    let kind = kind(first.violations.first()?).to_owned();
    let mut runs = 0;
    let mut best = (cfg.clone(), first);
    let faults_before = injected(&best.1, &best.0);
    // Whether a candidate fails the same way; it becomes the best if so.
    let attempt = |c: Config, best: &mut (Config, Report), runs: &mut usize| -> bool {
        *runs += 1;
        let r = run(seed, &c);
        let fails = r.violations.iter().any(|v| crate::shrink::kind(v) == kind);
        if fails {
            *best = (c, r);
        }
        fails
    };
    // The fault phase: the shortest prefix of faults (the run cut one second after the
    // last of them) that still fails, by bisection (failure need not be monotonic in
    // the prefix: this finds a failing prefix, not always the shortest).
    let times = best.1.fault_times.clone();
    let (mut lo, mut hi) = (0usize, times.len());
    while lo < hi && runs < budget {
        let mid = (lo + hi) / 2;
        let secs = times[mid] / 1000 + 1;
        if secs >= best.0.chaos.as_secs() {
            hi = mid;
            continue;
        }
        let c = Config {
            chaos: Duration::from_secs(secs),
            ..best.0.clone()
        };
        if attempt(c, &mut best, &mut runs) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if best.0.changes && runs < budget {
        let c = Config {
            changes: false,
            ..best.0.clone()
        };
        attempt(c, &mut best, &mut runs);
    }
    // Delta debugging over the faults still injected: drop chunks of them (halves,
    // then quarters, ...) while the run keeps failing.
    let mut chunks = 2;
    loop {
        let left: Vec<usize> = (0..best.1.fault_times.len())
            .filter(|i| !best.0.skip.contains(i))
            .collect();
        if left.is_empty() || runs >= budget {
            break;
        }
        let chunks_now = chunks.min(left.len());
        let size = left.len().div_ceil(chunks_now);
        let mut dropped = false;
        for chunk in left.chunks(size) {
            if runs >= budget {
                break;
            }
            let mut skip = best.0.skip.clone();
            skip.extend(chunk.iter().copied());
            let c = Config {
                skip,
                ..best.0.clone()
            };
            if attempt(c, &mut best, &mut runs) {
                dropped = true;
                break;
            }
        }
        if dropped {
            chunks = (chunks_now - 1).max(2);
        } else if chunks_now >= left.len() {
            break;
        } else {
            chunks = (chunks_now * 2).min(left.len());
        }
    }
    let (cfg, report) = best;
    Some(Shrunk {
        seed,
        faults_after: injected(&report, &cfg),
        faults_before,
        kind,
        runs,
        cfg,
        report,
    })
}

/// Skips from a comma-separated list (`3,5,9`).
pub fn parse_skip(s: &str) -> Result<BTreeSet<usize>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse().map_err(|e| format!("{p:?}: {e}")))
        .collect()
}
