//! One load-generator worker: a loop of gets and puts until the run's budget is spent.
//!
//! # Writes use the worker's own last context (no sibling pile-up)
//!
//! A bench that sends blind puts to a small key set would make every write a new
//! sibling, and gets would slow down as sibling sets grow: that measures the bench, not
//! the store. So writes are *read-your-context* puts, as a real application writes:
//!
//! - each key has one writer: with `C` workers, worker `w` writes only keys `i` with
//!   `i % C == w` (when there are fewer keys than workers, workers share keys and each
//!   key's siblings stay bounded by the number of workers that write it);
//! - the worker keeps, per key it writes, the last context it got for it (from the
//!   prefill, its own previous put, or a get of the key) and sends it with the next put,
//!   which therefore supersedes the previous version instead of adding a sibling;
//! - the first write of a key the worker has no context for is preceded by an untimed
//!   get to fetch one (counted as `context_reads`; `--prefill` avoids them);
//! - after a failed put the context is dropped (the put may have been applied) and is
//!   fetched again before the next write.
//!
//! Reads pick any key uniformly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::{key_for, Rng};
use super::stats::OpStats;
use super::timeline::Samples;
use crate::client::Client;
use crate::context::Context;

/// Pause of a worker after a failed operation.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

/// When a run stops.
#[derive(Clone, Debug)]
pub(crate) enum Budget {
    /// At this instant (operations in flight finish).
    Until(Instant),
    /// After this many operations in total (shared by all workers).
    Ops(Arc<AtomicI64>),
}

impl Budget {
    /// Claims one operation; false when the run is over.
    fn claim(&self) -> bool {
        match self {
            Budget::Until(deadline) => Instant::now() < *deadline,
            Budget::Ops(left) => left.fetch_sub(1, Ordering::Relaxed) > 0,
        }
    }
}

/// What one worker needs to know.
pub(crate) struct WorkerSpec {
    pub index: u64,
    pub workers: u64,
    pub keys: u64,
    /// When the run started.
    pub started: Instant,
    /// Requests due (closed loop: sent) before this instant are sent but not counted in
    /// the statistics, only in the timeline: the run's lead-in (`--skip`).
    pub counted_from: Instant,
    /// Keep every operation's send time and latency for the timeline.
    pub timeline: bool,
    pub key_size: usize,
    pub value: Bytes,
    pub read_ratio: f64,
    pub r: Option<u32>,
    pub w: Option<u32>,
    pub seed: u64,
    pub contexts: HashMap<u64, Context>,
    /// Open-loop schedule; `None` for a closed loop.
    pub pace: Option<Pace>,
}

/// When a paced worker sends its next request.
pub(crate) struct Pace {
    pub next: Instant,
    pub every: Duration,
}

impl Pace {
    /// The instant the next request is due (latency counts from it); advances the
    /// schedule. A worker behind schedule sends at once, without skipping requests.
    fn due(&mut self) -> Instant {
        let due = self.next;
        self.next += self.every;
        due
    }
}

/// What one worker measured.
#[derive(Default)]
pub(crate) struct WorkerResult {
    pub read: OpStats,
    pub write: OpStats,
    pub context_reads: u64,
    /// Open loop: how late the worker woke for requests it had to wait for (timer and
    /// scheduling delay in the load generator itself, not the cluster's doing).
    pub wake_lag: OpStats,
    /// Successful operations' send times and latencies, when a timeline is asked for.
    pub samples: Samples,
}

impl WorkerSpec {
    /// Whether a request that started (or was due) at `start` counts in the statistics.
    fn counts(&self, start: Instant) -> bool {
        start >= self.counted_from
    }

    fn sample(&self, out: &mut WorkerResult, start: Instant) {
        if self.timeline {
            out.samples.record(
                start.saturating_duration_since(self.started),
                start.elapsed(),
            );
        }
    }
}

impl WorkerSpec {
    /// Keys this worker writes: `index, index + workers, ...` below `keys`.
    fn owned(&self) -> u64 {
        if self.index >= self.keys {
            0
        } else {
            (self.keys - self.index).div_ceil(self.workers)
        }
    }

    fn write_key(&self, rng: &mut Rng) -> u64 {
        match self.owned() {
            0 => rng.below(self.keys),
            n => self.index + self.workers * rng.below(n),
        }
    }
}

/// Runs the worker until `budget` is spent; `done` counts its operations for progress.
pub(crate) async fn run_worker(
    client: Client,
    mut spec: WorkerSpec,
    budget: Budget,
    done: Arc<AtomicU64>,
) -> WorkerResult {
    let mut rng = Rng::new(spec.seed);
    let mut result = WorkerResult::default();
    while budget.claim() {
        let errors = result.read.errors() + result.write.errors();
        let due = match spec.pace.as_mut().map(Pace::due) {
            Some(due) => {
                // A request due in the past waited for the previous one (the cluster's
                // doing); only one the worker slept for measures the generator's wake-up.
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    if spec.counts(due) {
                        result.wake_lag.record(due.elapsed());
                    }
                }
                Some(due)
            }
            None => None,
        };
        if rng.unit() < spec.read_ratio {
            read(&client, &spec, &mut rng, due, &mut result).await;
        } else {
            write(&client, &mut spec, &mut rng, due, &mut result).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
        if result.read.errors() + result.write.errors() > errors {
            // A failing cluster answers fast; do not spin the CPU it needs to recover.
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    result
}

/// `due`: when the request was scheduled (open loop); latency counts from then.
async fn read(
    client: &Client,
    spec: &WorkerSpec,
    rng: &mut Rng,
    due: Option<Instant>,
    out: &mut WorkerResult,
) {
    let i = rng.below(spec.keys);
    let key = key_for(i, spec.key_size);
    let start = due.unwrap_or_else(Instant::now);
    match client.get(&key, spec.r).await {
        // The context is not kept: the key's writer already holds one that covers its
        // last write, and a read may come from replicas that lag behind it.
        Ok(_) => {
            if spec.counts(start) {
                out.read.record(start.elapsed());
            }
            spec.sample(out, start);
        }
        Err(e) if spec.counts(start) => out.read.record_error(&e.to_string()),
        Err(_) => {}
    }
}

async fn write(
    client: &Client,
    spec: &mut WorkerSpec,
    rng: &mut Rng,
    due: Option<Instant>,
    out: &mut WorkerResult,
) {
    let i = spec.write_key(rng);
    let key = key_for(i, spec.key_size);
    let context = match spec.contexts.remove(&i) {
        Some(ctx) => ctx,
        None => {
            out.context_reads += 1;
            match client.get(&key, spec.r).await {
                Ok(got) => got.context,
                Err(e) => {
                    if spec.counts(due.unwrap_or_else(Instant::now)) {
                        out.write.record_error(&format!("context read: {e}"));
                    }
                    return;
                }
            }
        }
    };
    let start = due.unwrap_or_else(Instant::now);
    match client.put(&key, spec.value.clone(), &context, spec.w).await {
        Ok(ctx) => {
            if spec.counts(start) {
                out.write.record(start.elapsed());
            }
            spec.sample(out, start);
            spec.contexts.insert(i, ctx);
        }
        Err(e) if spec.counts(start) => out.write.record_error(&e.to_string()),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(index: u64, workers: u64, keys: u64) -> WorkerSpec {
        WorkerSpec {
            index,
            workers,
            keys,
            key_size: 16,
            value: Bytes::new(),
            read_ratio: 0.5,
            r: None,
            w: None,
            seed: 1,
            contexts: HashMap::new(),
            started: Instant::now(),
            counted_from: Instant::now(),
            timeline: false,
            pace: None,
        }
    }

    #[test]
    fn every_key_has_exactly_one_writer() {
        let (workers, keys) = (7, 100);
        let mut writers = vec![0; keys as usize];
        for w in 0..workers {
            let s = spec(w, workers, keys);
            let mut rng = Rng::new(w);
            for _ in 0..2000 {
                let k = s.write_key(&mut rng);
                assert_eq!(k % workers, w);
                assert!(k < keys);
            }
            for k in (w..keys).step_by(workers as usize) {
                writers[k as usize] += 1;
            }
            assert_eq!(
                s.owned(),
                (w..keys).step_by(workers as usize).count() as u64
            );
        }
        assert!(writers.iter().all(|&n| n == 1));
    }

    #[test]
    fn workers_without_own_keys_share() {
        let s = spec(5, 8, 3);
        assert_eq!(s.owned(), 0);
        let mut rng = Rng::new(3);
        assert!((0..100).all(|_| s.write_key(&mut rng) < 3));
    }

    #[test]
    fn a_paced_worker_keeps_its_schedule_and_never_skips() {
        let t0 = Instant::now();
        let every = Duration::from_millis(10);
        let mut pace = Pace { next: t0, every };
        let due: Vec<_> = (0..4).map(|_| pace.due()).collect();
        assert_eq!(due, vec![t0, t0 + every, t0 + every * 2, t0 + every * 3]);
    }

    #[test]
    fn ops_budget_is_shared_and_exact() {
        let left = Arc::new(AtomicI64::new(3));
        let budget = Budget::Ops(left);
        let claimed = (0..10).filter(|_| budget.claim()).count();
        assert_eq!(claimed, 3);
    }
}
