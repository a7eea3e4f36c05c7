//! The background budget: one rate, in bytes per second, shared by hinted handoff,
//! anti-entropy (and, later, partition transfers), that backs off when the node's
//! foreground latency rises (the Dynamo paper's admission controller).
//!
//! Background work asks [`Budget::acquire`] before each batch it sends or fetches, a
//! token bucket refilled at the current rate (a batch may overdraw it; the next one then
//! waits until the debt is repaid). Every client request this node coordinates records
//! its latency ([`Budget::observe`]); about once a second the rate is adjusted from the
//! p99 of those latencies ([`next_rate`]): halved when it is above the target, raised by
//! a tenth of the ceiling when it is not (additive increase, multiplicative decrease),
//! between a floor (so repair always progresses) and the ceiling.

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Settings of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// The most bytes per second background work may move.
    pub max_bytes_per_sec: u64,
    /// The least, however slow the foreground.
    pub min_bytes_per_sec: u64,
    /// Foreground p99 above which background work backs off.
    pub p99_target: Duration,
}

/// How often the rate is adjusted.
const ADJUST_EVERY: Duration = Duration::from_secs(1);
/// Fewer foreground requests than this in a period give no latency signal.
const MIN_SAMPLES: u64 = 20;

/// The rate after one period whose foreground p99 was `p99` (`None`: too few requests
/// to tell) at `rate`.
pub fn next_rate(rate: f64, p99: Option<Duration>, cfg: &BudgetConfig) -> f64 {
    let (min, max) = (cfg.min_bytes_per_sec as f64, cfg.max_bytes_per_sec as f64);
    match p99 {
        Some(p) if p > cfg.p99_target => (rate / 2.0).max(min),
        _ => (rate + max / 10.0).min(max),
    }
}

struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    adjusted: Instant,
}

/// The shared background budget of one node.
pub struct Budget {
    cfg: BudgetConfig,
    bucket: Mutex<Bucket>,
    /// Foreground latencies (µs) since the last adjustment.
    window: Mutex<Histogram<u64>>,
}

impl Budget {
    pub fn new(cfg: BudgetConfig) -> Self {
        let now = Instant::now();
        Self {
            cfg,
            bucket: Mutex::new(Bucket {
                rate: cfg.max_bytes_per_sec as f64,
                // At most a second's worth may be spent at once.
                tokens: cfg.max_bytes_per_sec as f64,
                refilled: now,
                adjusted: now,
            }),
            window: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds"),
            ),
        }
    }

    /// Records the latency of one foreground request.
    pub fn observe(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.window.lock().record(us);
    }

    /// The current rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.bucket.lock().rate as u64
    }

    /// Charges `bytes` if background work may move them now; whether it may.
    pub fn try_acquire(&self, bytes: u64) -> bool {
        let mut b = self.bucket.lock();
        self.refill(&mut b, Instant::now());
        if b.tokens >= 0.0 {
            b.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Adjusts the rate when due and adds the tokens earned since the last refill.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        if now.duration_since(b.adjusted) >= ADJUST_EVERY {
            let p99 = {
                let mut w = self.window.lock();
                let p = (w.len() >= MIN_SAMPLES)
                    .then(|| Duration::from_micros(w.value_at_quantile(0.99)));
                w.reset();
                p
            };
            b.rate = next_rate(b.rate, p99, &self.cfg);
            b.adjusted = now;
        }
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate).min(b.rate);
        b.refilled = now;
    }

    /// Waits until background work may move `bytes` more, and charges them.
    pub async fn acquire(&self, bytes: u64) {
        loop {
            let wait = {
                let now = Instant::now();
                let mut b = self.bucket.lock();
                self.refill(&mut b, now);
                if b.tokens >= 0.0 {
                    b.tokens -= bytes as f64;
                    return;
                }
                Duration::from_secs_f64(-b.tokens / b.rate)
            };
            tokio::time::sleep(wait.min(ADJUST_EVERY)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BudgetConfig = BudgetConfig {
        max_bytes_per_sec: 1000,
        min_bytes_per_sec: 10,
        p99_target: Duration::from_millis(20),
    };

    #[test]
    fn backs_off_when_the_foreground_is_slow_and_recovers_slowly() {
        let slow = Some(Duration::from_millis(50));
        let fast = Some(Duration::from_millis(5));
        let mut rate = 1000.0;
        for want in [500.0, 250.0, 125.0] {
            rate = next_rate(rate, slow, &CFG);
            assert_eq!(rate, want);
        }
        for _ in 0..20 {
            rate = next_rate(rate, slow, &CFG);
        }
        assert_eq!(rate, 10.0, "never below the floor");
        rate = next_rate(rate, fast, &CFG);
        assert_eq!(rate, 110.0, "additive increase");
        rate = next_rate(rate, None, &CFG);
        assert_eq!(rate, 210.0, "no signal: increase");
        for _ in 0..20 {
            rate = next_rate(rate, fast, &CFG);
        }
        assert_eq!(rate, 1000.0, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn acquiring_more_than_the_rate_waits() {
        let b = Budget::new(CFG);
        let start = Instant::now();
        b.acquire(1000).await; // the initial second's worth
        b.acquire(500).await; // overdraws: the next waits
        assert!(start.elapsed() < Duration::from_millis(10));
        assert!(!b.try_acquire(1), "in debt: a repair would be skipped");
        b.acquire(1).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(499) && waited <= Duration::from_millis(1100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_foreground_halves_the_rate() {
        let b = Budget::new(CFG);
        for _ in 0..100 {
            b.observe(Duration::from_millis(80));
        }
        tokio::time::advance(ADJUST_EVERY).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 500);
        // A quiet second: no signal, so it climbs back.
        tokio::time::advance(ADJUST_EVERY).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 600);
    }
}
