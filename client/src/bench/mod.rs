//! The load generator behind `dynamoctl bench`.
//!
//! `concurrency` workers each run a loop of gets and puts over `keys` keys
//! ([`keys`]), with a read ratio, until a duration or an operation count is spent, then
//! the per-worker stats are merged into a [`Report`] ([`stats`]). The loop is closed (the
//! next request goes when the last answered) unless a `rate` is given: then each worker
//! sends on a fixed schedule and latency is measured from when each request was due,
//! which keeps a stall from hiding in the percentiles (coordinated omission). How writes avoid
//! piling up siblings is explained in [`worker`]. With `prefill`, before the clock starts
//! every key is read, and written (with the read context, so no sibling is added) unless
//! it already holds exactly one live value; that makes every read hit a value and hands
//! each worker the contexts of the keys it writes, and re-running it on a filled cluster
//! costs one get a key. Without it, one get on every connection opens them all before
//! the clock starts.

pub mod keys;
pub mod stats;
pub mod timeline;
mod worker;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::Client;
use crate::context::Context;
use keys::{check_key_space, key_for, Rng};
use stats::{OpStats, Report};
use worker::{run_worker, Budget, Pace, WorkerResult, WorkerSpec};

/// The key the warm-up reads (see [`Client::warm_up`]); the bench's own keys are
/// numbered, so it reads none of them.
const WARM_UP_KEY: &[u8] = b"dynamoctl-bench-warm-up";

/// Requests in flight during the prefill.
const PREFILL_CONCURRENCY: usize = 64;

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many operations.
    Ops(u64),
}

/// Parameters of a bench run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Workers, each with one request in flight.
    pub concurrency: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Share of operations that are reads, 0.0..=1.0.
    pub read_ratio: f64,
    /// When to stop.
    pub stop: Stop,
    /// Write every key once before measuring.
    pub prefill: bool,
    /// Open loop at this many operations per second in total (`None`: closed loop).
    pub rate: Option<f64>,
    /// R for gets (`None`: the cluster's).
    pub r: Option<u32>,
    /// W for puts (`None`: the cluster's).
    pub w: Option<u32>,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Seed of the workers' random choices.
    pub seed: u64,
    /// Report latency over time in slices this wide.
    pub timeline: Option<Duration>,
    /// A lead-in before the measured `stop` duration: its requests are sent but counted
    /// only in the timeline (the first moments of a load after an idle spell are slow
    /// on their own; a benchmark comparing two runs leaves them out of both).
    pub skip: Duration,
}

impl BenchConfig {
    /// Checks the parameters, with messages naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio {} must be within 0.0..=1.0",
                self.read_ratio
            ));
        }
        if !self.skip.is_zero() && matches!(self.stop, Stop::Ops(_)) {
            return Err("--skip needs a --duration, not --ops".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!("--rate {rate} must be a positive number of ops/s"));
            }
        }
        check_key_space(self.keys, self.key_size).map_err(|e| e.to_string())
    }

    /// Time between two operations of one worker in an open-loop run.
    pub fn worker_interval(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(self.concurrency as f64 / rate))
    }

    /// The parameters as they appear in the JSON report.
    pub fn to_json(&self) -> serde_json::Value {
        let (duration_s, ops) = match self.stop {
            Stop::After(d) => (Some(d.as_secs_f64()), None),
            Stop::Ops(n) => (None, Some(n)),
        };
        serde_json::json!({
            "concurrency": self.concurrency,
            "keys": self.keys,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "read_ratio": self.read_ratio,
            "duration_s": duration_s,
            "ops": ops,
            "prefill": self.prefill,
            "rate": self.rate,
            "r": self.r,
            "w": self.w,
            "timeline_ms": self.timeline.map(|d| d.as_millis() as u64),
            "skip_s": self.skip.as_secs_f64(),
        })
    }
}

/// The result of [`run`]: the report, and how long the prefill took.
#[derive(Debug)]
pub struct Outcome {
    /// The measured run.
    pub report: Report,
    /// Prefill time, when there was one.
    pub prefill: Option<Duration>,
    /// Untimed gets made to fetch a context before a key's first write.
    pub context_reads: u64,
}

/// Runs the bench against `client`.
pub async fn run(client: &Client, cfg: &BenchConfig) -> anyhow::Result<Outcome> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let value = Bytes::from(Rng::new(cfg.seed ^ 0x5EED).bytes(cfg.value_size));
    let workers = cfg.concurrency as u64;
    let mut contexts: Vec<HashMap<u64, Context>> = vec![HashMap::new(); cfg.concurrency];
    let mut prefill_time = None;
    if cfg.prefill {
        let start = Instant::now();
        for (i, ctx) in prefill(client, cfg, &value).await? {
            contexts[(i % workers) as usize].insert(i, ctx);
        }
        prefill_time = Some(start.elapsed());
    } else {
        // Otherwise the first requests would wait for the connections and count that as
        // latency (measured: p99.9 49 ms at 1,000 gets/s in a 1 s open-loop run).
        client.warm_up(WARM_UP_KEY).await;
    }

    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let counted_from = start + cfg.skip;
    let budget = match cfg.stop {
        Stop::After(d) => Budget::Until(counted_from + d),
        Stop::Ops(n) => Budget::Ops(Arc::new(AtomicI64::new(n.min(i64::MAX as u64) as i64))),
    };
    let bar = progress_bar(cfg, "bench");
    let ticker = spawn_ticker(bar.clone(), done.clone(), cfg.stop);
    let interval = cfg.worker_interval();
    let tasks: Vec<_> = contexts
        .into_iter()
        .enumerate()
        .map(|(index, contexts)| {
            let spec = WorkerSpec {
                index: index as u64,
                workers,
                keys: cfg.keys,
                key_size: cfg.key_size,
                value: value.clone(),
                read_ratio: cfg.read_ratio,
                r: cfg.r,
                w: cfg.w,
                seed: cfg.seed.wrapping_add(index as u64 * 0x9E37_79B9),
                contexts,
                started: start,
                counted_from,
                timeline: cfg.timeline.is_some(),
                // Workers start spread over one interval, so the load is even.
                pace: interval.map(|every| Pace {
                    next: start + every.mul_f64(index as f64 / workers as f64),
                    every,
                }),
            };
            tokio::spawn(run_worker(
                client.clone(),
                spec,
                budget.clone(),
                done.clone(),
            ))
        })
        .collect();
    let results: Vec<WorkerResult> = futures::future::try_join_all(tasks).await?;
    // The measured window: the lead-in's requests are not in the statistics.
    let elapsed = counted_from.elapsed();
    ticker.abort();
    bar.finish_and_clear();

    let (mut read, mut write, mut context_reads) = (OpStats::new(), OpStats::new(), 0);
    let mut wake_lag = OpStats::new();
    let timeline = cfg.timeline.map(|width| {
        let samples: Vec<_> = results.iter().map(|r| r.samples.clone()).collect();
        timeline::slices(&samples, width)
    });
    for r in &results {
        read.merge(&r.read);
        write.merge(&r.write);
        wake_lag.merge(&r.wake_lag);
        context_reads += r.context_reads;
    }
    let mut report = Report::new(&read, &write, elapsed, cfg.to_json());
    if interval.is_some() {
        report = report.with_wake_lag(&wake_lag);
    }
    report.timeline = timeline;
    Ok(Outcome {
        report,
        prefill: prefill_time,
        context_reads,
    })
}

/// Makes every key hold exactly one live value; returns each key's context.
async fn prefill(
    client: &Client,
    cfg: &BenchConfig,
    value: &Bytes,
) -> anyhow::Result<Vec<(u64, Context)>> {
    let bar = progress_bar(cfg, "prefill");
    bar.set_length(cfg.keys);
    let out = stream::iter(0..cfg.keys)
        .map(|i| {
            let bar = bar.clone();
            async move {
                let key = key_for(i, cfg.key_size);
                let got = client.get(&key, cfg.r).await?;
                // A key that already holds exactly one live value keeps it (so re-running a
                // prefill costs one get a key); anything else is written once, superseding
                // what was read.
                let single = got.siblings.len() == 1 && got.is_found();
                let ctx = if single {
                    got.context
                } else {
                    client.put(&key, value.clone(), &got.context, cfg.w).await?
                };
                bar.inc(1);
                Ok::<_, crate::Error>((i, ctx))
            }
        })
        .buffer_unordered(PREFILL_CONCURRENCY)
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("prefill failed: {e}"));
    bar.finish_and_clear();
    out
}

fn progress_bar(cfg: &BenchConfig, prefix: &'static str) -> ProgressBar {
    if !cfg.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(match cfg.stop {
        Stop::After(d) => d.as_millis() as u64,
        Stop::Ops(n) => n,
    });
    let template = "{prefix} [{elapsed_precise}] {wide_bar} {percent}% {msg}";
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.set_prefix(prefix);
    bar
}

/// Updates the bar ten times a second with the position and the current rate.
fn spawn_ticker(bar: ProgressBar, done: Arc<AtomicU64>, stop: Stop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        loop {
            interval.tick().await;
            let ops = done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            bar.set_position(match stop {
                Stop::After(_) => start.elapsed().as_millis() as u64,
                Stop::Ops(_) => ops,
            });
            bar.set_message(format!("{ops} ops, {:.0} ops/s", ops as f64 / secs));
        }
    })
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?} (use ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            concurrency: 16,
            keys: 10_000,
            key_size: 16,
            value_size: 100,
            read_ratio: 0.5,
            stop: Stop::After(Duration::from_secs(10)),
            prefill: false,
            rate: None,
            r: None,
            w: None,
            progress: false,
            seed: 1,
            timeline: None,
            skip: Duration::ZERO,
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn a_rate_is_spread_over_the_workers() {
        assert_eq!(config().worker_interval(), None);
        let paced = BenchConfig {
            rate: Some(4000.0),
            ..config()
        };
        // 16 workers sharing 4000 ops/s: each sends every 4 ms.
        assert_eq!(paced.worker_interval(), Some(Duration::from_millis(4)));
        for rate in [0.0, -1.0, f64::NAN] {
            let bad = BenchConfig {
                rate: Some(rate),
                ..config()
            };
            assert!(bad.validate().unwrap_err().contains("--rate"));
        }
    }

    #[test]
    fn config_is_validated() {
        assert!(config().validate().is_ok());
        let bad = BenchConfig {
            read_ratio: 1.5,
            ..config()
        };
        assert!(bad.validate().unwrap_err().contains("--read-ratio"));
        let bad = BenchConfig {
            concurrency: 0,
            ..config()
        };
        assert!(bad.validate().unwrap_err().contains("--concurrency"));
        let bad = BenchConfig {
            key_size: 3,
            ..config()
        };
        assert!(bad.validate().unwrap_err().contains("--key-size"));
        let bad = BenchConfig {
            stop: Stop::Ops(100),
            skip: Duration::from_secs(1),
            ..config()
        };
        assert!(bad.validate().unwrap_err().contains("--skip"));
    }

    #[test]
    fn config_json_names_the_stop() {
        let v = config().to_json();
        assert_eq!(v["duration_s"], 10.0);
        assert!(v["ops"].is_null());
        let v = BenchConfig {
            stop: Stop::Ops(5),
            ..config()
        }
        .to_json();
        assert_eq!(v["ops"], 5);
        assert_eq!(v["concurrency"], 16);
    }
}
