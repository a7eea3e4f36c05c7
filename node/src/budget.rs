//! The background budget: one rate, in bytes per second, shared by hinted handoff,
//! anti-entropy (and, later, partition transfers), that backs off when the node's
//! foreground latency rises (the Dynamo paper's admission controller).
//!
//! Background work asks [`Budget::acquire`] before each batch it sends or fetches, a
//! token bucket refilled at the current rate (a batch may overdraw it; the next one then
//! waits until the debt is repaid). Every client request this node coordinates records
//! its latency ([`Budget::observe`]); about once a second the rate is adjusted from the
//! p99 of those latencies ([`next_rate`]): halved when it is above the target, raised by
//! a tenth of the ceiling, but at most [`MAX_STEP`], when it is not (additive increase,
//! multiplicative decrease), between a floor (so repair always progresses) and the
//! ceiling. A step of a tenth of a 64 MiB/s ceiling took the rate from the floor to
//! 6.6 MB/s in one good second, more than a loaded two-core machine absorbs: the backlog
//! of that one second held the clients' p99 at seconds while a change of members started
//! (measured, docs in the README). With the absolute cap a low ceiling (a throttled
//! node) is still reached in ten good seconds. A period in which
//! no background work ran halves the rate too, so that work arriving after a quiet
//! spell (a member change, a wiped replica) starts slowly and climbs while the
//! foreground allows it, instead of starting at the ceiling (TCP's restart after idle).
//! A change of members starts at the floor too ([`Budget::restart`]): the work before it
//! (a clean-up dropping partitions, which costs little per byte charged) says nothing of
//! what streaming partitions costs.
//!
//! The target is relative to the node's usual p99 ([`target`]): a fixed target the
//! foreground p99 is well under lets background work double it unchecked (measured: a
//! wiped replica's refill took the p99 from 6.7 to 16.7 ms under a 25 ms target), and
//! one it is always over stops background work. The usual p99 is a low quantile of the
//! per-period p99s of the last few minutes, so that the periods background work slowed
//! do not raise it; the configured target stays the most that is ever allowed.

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Settings of the budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// The most bytes per second background work may move.
    pub max_bytes_per_sec: u64,
    /// The least, however slow the foreground.
    pub min_bytes_per_sec: u64,
    /// Foreground p99 above which background work always backs off.
    pub p99_target: Duration,
    /// Foreground p99, as a multiple of the usual one, above which background work backs
    /// off (0: only the fixed target).
    pub relative_target: f64,
}

/// The most one good period raises the rate by, bytes per second.
pub const MAX_STEP: f64 = (1 << 20) as f64;
/// How often the rate is adjusted.
const ADJUST_EVERY: Duration = Duration::from_secs(1);
/// How often, within a period, the foreground p99 so far is checked for harm (see
/// [`Budget::refill`]).
const BRAKE_CHECK_EVERY: Duration = Duration::from_millis(250);
/// The least an [`Budget::acquire`] in debt sleeps.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Fewer foreground requests than this in a period give no latency signal.
const MIN_SAMPLES: u64 = 20;
/// Periods whose p99s make the usual p99.
const USUAL_PERIODS: usize = 180;
/// Fewer periods than this give no usual p99 yet.
const USUAL_MIN_PERIODS: usize = 10;
/// The quantile of the recent periods' p99s taken as the usual p99.
const USUAL_QUANTILE: f64 = 0.2;

/// The p99 above which background work backs off, given the p99s of recent periods
/// (oldest first): `relative_target` times their [`USUAL_QUANTILE`], at most the fixed
/// target (which alone applies while there are too few periods).
pub fn target(recent: &[Duration], cfg: &BudgetConfig) -> Duration {
    if cfg.relative_target <= 0.0 || recent.len() < USUAL_MIN_PERIODS {
        return cfg.p99_target;
    }
    let mut sorted = recent.to_vec();
    sorted.sort_unstable();
    let usual = sorted[((sorted.len() - 1) as f64 * USUAL_QUANTILE) as usize];
    usual.mul_f64(cfg.relative_target).min(cfg.p99_target)
}

/// The rate after one period whose foreground p99 was `p99` (`None`: too few requests
/// to tell) at `rate`.
pub fn next_rate(rate: f64, p99: Option<Duration>, target: Duration, cfg: &BudgetConfig) -> f64 {
    let (min, max) = (cfg.min_bytes_per_sec as f64, cfg.max_bytes_per_sec as f64);
    match p99 {
        Some(p) if p > target => (rate / 2.0).max(min),
        _ => (rate + (max / 10.0).min(MAX_STEP)).min(max),
    }
}

struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    adjusted: Instant,
    /// Background work was charged since the last adjustment.
    used: bool,
    /// When the period's p99 so far was last checked.
    checked: Instant,
}

/// The shared background budget of one node.
pub struct Budget {
    cfg: BudgetConfig,
    bucket: Mutex<Bucket>,
    /// Foreground latencies (µs) since the last adjustment.
    window: Mutex<Histogram<u64>>,
    /// The p99s of the last [`USUAL_PERIODS`] periods with a signal, oldest first.
    recent: Mutex<std::collections::VecDeque<Duration>>,
}

impl Budget {
    /// A budget at its floor: a node that just started climbs like one after idle.
    pub fn new(cfg: BudgetConfig) -> Self {
        Self::starting_at(cfg, cfg.min_bytes_per_sec as f64)
    }

    fn starting_at(cfg: BudgetConfig, rate: f64) -> Self {
        let now = Instant::now();
        Self {
            cfg,
            bucket: Mutex::new(Bucket {
                rate,
                // At most a second's worth may be spent at once.
                tokens: rate,
                refilled: now,
                adjusted: now,
                used: false,
                checked: now,
            }),
            window: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds"),
            ),
            recent: Mutex::new(std::collections::VecDeque::with_capacity(USUAL_PERIODS)),
        }
    }

    /// Starts the rate again from the floor, with nothing to spend yet: background work
    /// of a new kind (a change of members) climbs from there while the foreground allows.
    pub fn restart(&self) {
        let now = Instant::now();
        let mut b = self.bucket.lock();
        b.rate = self.cfg.min_bytes_per_sec as f64;
        b.tokens = b.tokens.min(0.0);
        b.refilled = now;
        b.adjusted = now;
        b.checked = now;
        b.used = false;
        self.window.lock().reset();
    }

    /// Records the latency of one foreground request.
    pub fn observe(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.window.lock().record(us);
    }

    /// The p99 above which background work backs off now.
    pub fn target(&self) -> Duration {
        target(self.recent.lock().make_contiguous(), &self.cfg)
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
            b.used = true;
            true
        } else {
            false
        }
    }

    /// Adjusts the rate when due and adds the tokens earned since the last refill.
    ///
    /// The rate climbs only after a whole good period, but backs off as soon as the
    /// period so far shows harm: every [`BRAKE_CHECK_EVERY`] while background work runs,
    /// a p99 over the target already halves the rate and starts a new period. Under an
    /// open-loop load near the machine's capacity, a second of too much background work
    /// leaves a backlog that takes seconds to drain, and those seconds are the clients'
    /// p99.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        if b.used
            && now.duration_since(b.checked) >= BRAKE_CHECK_EVERY
            && now.duration_since(b.adjusted) < ADJUST_EVERY
        {
            b.checked = now;
            let so_far = {
                let w = self.window.lock();
                (w.len() >= MIN_SAMPLES).then(|| Duration::from_micros(w.value_at_quantile(0.99)))
            };
            if so_far.is_some_and(|p| p > self.target()) {
                b.rate = (b.rate / 2.0).max(self.cfg.min_bytes_per_sec as f64);
                b.adjusted = now;
                self.window.lock().reset();
            }
        }
        if now.duration_since(b.adjusted) >= ADJUST_EVERY {
            let p99 = {
                let mut w = self.window.lock();
                let p = (w.len() >= MIN_SAMPLES)
                    .then(|| Duration::from_micros(w.value_at_quantile(0.99)));
                w.reset();
                p
            };
            let target = {
                let mut recent = self.recent.lock();
                let target = target(recent.make_contiguous(), &self.cfg);
                if let Some(p) = p99 {
                    if recent.len() == USUAL_PERIODS {
                        recent.pop_front();
                    }
                    recent.push_back(p);
                }
                target
            };
            // The period that just ended, then any whole periods since in which nothing
            // asked for the budget at all (idle).
            let periods =
                (now.duration_since(b.adjusted).as_secs_f64() / ADJUST_EVERY.as_secs_f64()) as i32;
            let idle = |rate: f64, periods: i32| {
                (rate / 2f64.powi(periods.min(64))).max(self.cfg.min_bytes_per_sec as f64)
            };
            b.rate = match b.used {
                true => next_rate(b.rate, p99, target, &self.cfg),
                false => idle(b.rate, 1),
            };
            b.rate = idle(b.rate, periods - 1);
            b.used = false;
            b.adjusted = now;
            b.checked = now;
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
                b.used = true;
                if b.tokens >= 0.0 {
                    b.tokens -= bytes as f64;
                    return;
                }
                Duration::from_secs_f64(-b.tokens / b.rate)
            };
            // At least a millisecond: a debt of a few bytes' rounding error waits zero
            // nanoseconds, and a clock that does not move while this task runs (paused
            // or simulated time) would then never repay it.
            tokio::time::sleep(wait.clamp(MIN_WAIT, ADJUST_EVERY)).await;
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
        relative_target: 0.0,
    };

    #[test]
    fn backs_off_when_the_foreground_is_slow_and_recovers_slowly() {
        let slow = Some(Duration::from_millis(50));
        let fast = Some(Duration::from_millis(5));
        let mut rate = 1000.0;
        for want in [500.0, 250.0, 125.0] {
            rate = next_rate(rate, slow, CFG.p99_target, &CFG);
            assert_eq!(rate, want);
        }
        for _ in 0..20 {
            rate = next_rate(rate, slow, CFG.p99_target, &CFG);
        }
        assert_eq!(rate, 10.0, "never below the floor");
        rate = next_rate(rate, fast, CFG.p99_target, &CFG);
        assert_eq!(rate, 110.0, "additive increase");
        rate = next_rate(rate, None, CFG.p99_target, &CFG);
        assert_eq!(rate, 210.0, "no signal: increase");
        for _ in 0..20 {
            rate = next_rate(rate, fast, CFG.p99_target, &CFG);
        }
        assert_eq!(rate, 1000.0, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn acquiring_more_than_the_rate_waits() {
        let b = Budget::starting_at(CFG, 1000.0);
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

    /// A debt smaller than a nanosecond's worth of the rate (a float's rounding error)
    /// is waited out even when the clock moves only while tasks sleep: it used to wait
    /// zero nanoseconds again and again, and the simulator hung in that loop.
    #[test]
    fn a_rounding_error_of_debt_is_repaid_when_time_moves_only_in_sleeps() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let b = Budget::starting_at(CFG, 1000.0);
                b.bucket.lock().tokens = -1e-9;
                b.acquire(1).await;
            });
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "acquire never returned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_foreground_halves_the_rate() {
        let b = Budget::starting_at(CFG, 1000.0);
        b.acquire(1).await; // busy, so only the foreground's p99 decides
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

    #[tokio::test(start_paused = true)]
    async fn harm_halves_the_rate_within_a_quarter_second_but_climbing_takes_a_second() {
        let b = Budget::starting_at(CFG, 1000.0);
        b.acquire(1).await;
        for _ in 0..100 {
            b.observe(Duration::from_millis(80));
        }
        tokio::time::advance(BRAKE_CHECK_EVERY).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 500, "braked before the period ended");
        // A new period began: fast requests for less than a second change nothing.
        for _ in 0..100 {
            b.observe(Duration::from_millis(5));
        }
        tokio::time::advance(BRAKE_CHECK_EVERY * 3).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 500);
        tokio::time::advance(BRAKE_CHECK_EVERY).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 600, "a whole good period climbs");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_budget_does_not_brake() {
        let b = Budget::starting_at(CFG, 1000.0);
        for _ in 0..100 {
            b.observe(Duration::from_millis(80));
        }
        tokio::time::advance(BRAKE_CHECK_EVERY).await;
        // No background work was charged in this period: nothing to blame.
        assert!(b.try_acquire(1));
        assert_eq!(b.rate(), 1000);
    }

    #[test]
    fn the_target_is_relative_to_the_usual_p99_and_at_most_the_fixed_one() {
        let cfg = BudgetConfig {
            relative_target: 1.5,
            ..CFG
        };
        let ms = Duration::from_millis;
        assert_eq!(target(&[ms(4); 9], &cfg), ms(20), "too few periods yet");
        // Usually 4 ms, with a few slow periods (background work, noise): still 4.
        let mut recent = vec![ms(4); 16];
        recent.extend([ms(9), ms(12), ms(30), ms(50)]);
        assert_eq!(target(&recent, &cfg), ms(6));
        assert_eq!(target(&recent, &CFG), ms(20), "relative target off");
        // A node usually slower than the fixed target keeps the fixed one.
        assert_eq!(target(&[ms(40); 20], &cfg), ms(20));
    }

    #[tokio::test(start_paused = true)]
    async fn background_work_backs_off_when_the_p99_doubles_under_the_fixed_target() {
        let cfg = BudgetConfig {
            relative_target: 1.5,
            ..CFG
        };
        let b = Budget::starting_at(cfg, 1000.0);
        // Quiet periods at 2 ms, then background work makes it 5 ms (under 20 ms).
        for p99 in [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 5] {
            for _ in 0..100 {
                b.observe(Duration::from_millis(p99));
            }
            tokio::time::advance(ADJUST_EVERY).await;
            b.acquire(1).await;
        }
        let t = b.target(); // 1.5 × 2 ms, as the histogram rounds it
        assert!(
            t >= Duration::from_micros(2900) && t <= Duration::from_micros(3100),
            "{t:?}"
        );
        assert_eq!(
            b.rate(),
            500,
            "halved once the p99 went over 1.5 times its usual"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_after_a_quiet_spell_starts_slowly_and_climbs() {
        let b = Budget::starting_at(CFG, 1000.0);
        tokio::time::advance(ADJUST_EVERY * 3).await;
        b.acquire(1).await;
        assert_eq!(b.rate(), 125, "three idle periods: halved three times");
        tokio::time::advance(ADJUST_EVERY * 10).await;
        b.acquire(1).await;
        // The period of that one acquire raised it to 225, then nine idle ones.
        assert_eq!(b.rate(), 10, "down to the floor");
        for want in [110, 210, 310] {
            tokio::time::advance(ADJUST_EVERY).await;
            b.acquire(1).await;
            assert_eq!(b.rate(), want, "busy periods with a fast foreground climb");
        }
    }

    #[test]
    fn a_high_ceiling_is_climbed_by_at_most_the_absolute_step() {
        let cfg = BudgetConfig {
            max_bytes_per_sec: 64 << 20,
            min_bytes_per_sec: 256 << 10,
            ..CFG
        };
        let fast = Some(Duration::from_millis(5));
        let mut rate = cfg.min_bytes_per_sec as f64;
        rate = next_rate(rate, fast, cfg.p99_target, &cfg);
        assert_eq!(rate, (256 << 10) as f64 + MAX_STEP, "not a tenth of 64 MiB");
        for _ in 0..100 {
            rate = next_rate(rate, fast, cfg.p99_target, &cfg);
        }
        assert_eq!(rate, (64 << 20) as f64, "still reaches the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_goes_back_to_the_floor_with_nothing_to_spend() {
        let b = Budget::starting_at(CFG, 1000.0);
        b.restart();
        assert_eq!(b.rate(), 10);
        let start = Instant::now();
        b.acquire(20).await; // nothing saved up: this one overdraws
        b.acquire(1).await;
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "paced at the floor: {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_new_budget_starts_at_its_floor() {
        assert_eq!(Budget::new(CFG).rate(), 10);
    }
}
