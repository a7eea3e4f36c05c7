//! Measurements of the load generator and the report made from them.
//!
//! Each worker records into its own [`OpStats`] per operation kind (no sharing on the hot
//! path); at the end they are merged and turned into a [`Report`]. Latencies of
//! successful operations go into an HDR histogram in microseconds (1 µs to 60 s, three
//! significant digits); failed operations are counted, with a few sample messages, but
//! not timed. `ops` counts successful operations only, and `ops_per_sec` is `ops` over
//! the measured seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Distinct error messages kept as samples; the rest are counted under "other".
const MAX_ERROR_SAMPLES: usize = 16;
/// Highest latency the histogram tracks exactly (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;

/// Counts and latencies of one operation kind.
#[derive(Clone, Debug)]
pub struct OpStats {
    hist: Histogram<u64>,
    errors: u64,
    samples: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self::new()
    }
}

impl OpStats {
    /// Empty stats.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        Self {
            hist,
            errors: 0,
            samples: BTreeMap::new(),
        }
    }

    /// Records a successful operation that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.hist.saturating_record(us);
    }

    /// Records a failed operation with its message.
    pub fn record_error(&mut self, message: &str) {
        self.errors += 1;
        if self.samples.len() < MAX_ERROR_SAMPLES || self.samples.contains_key(message) {
            *self.samples.entry(message.to_string()).or_default() += 1;
        } else {
            *self.samples.entry("other errors".to_string()).or_default() += 1;
        }
    }

    /// Successful operations.
    pub fn ops(&self) -> u64 {
        self.hist.len()
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &OpStats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.errors += other.errors;
        for (message, count) in &other.samples {
            *self.samples.entry(message.clone()).or_default() += count;
        }
    }

    fn latency(&self) -> Latency {
        let q = |q: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(q)
            }
        };
        Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.hist.max(),
        }
    }
}

/// Latency percentiles in microseconds (0 when nothing was measured).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
}

/// The figures of one operation kind (or of all operations).
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of successful operations.
    pub latency_us: Latency,
}

impl OpReport {
    fn new(stats: &OpStats, seconds: f64) -> Self {
        let ops = stats.ops();
        Self {
            ops,
            errors: stats.errors(),
            ops_per_sec: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            latency_us: stats.latency(),
        }
    }
}

/// The result of a bench run; serializes as the `--json` object.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Successful operations, reads and writes.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Measured wall-clock seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency of all successful operations.
    pub latency_us: Latency,
    /// Reads (`get`).
    pub read: OpReport,
    /// Writes (`put` with the worker's last context of the key).
    pub write: OpReport,
    /// Error messages and how often each was seen.
    pub error_samples: BTreeMap<String, u64>,
    /// Open loop only: how late workers woke for requests they waited for, a delay of the
    /// load generator itself that the latencies above include.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_lag_us: Option<Latency>,
    /// Latency over time, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<super::timeline::Slice>>,
    /// The parameters of the run.
    pub config: serde_json::Value,
}

impl Report {
    /// Builds the report from merged read and write stats.
    pub fn new(
        read: &OpStats,
        write: &OpStats,
        elapsed: Duration,
        config: serde_json::Value,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        let mut all = read.clone();
        all.merge(write);
        let total = OpReport::new(&all, seconds);
        Self {
            ops: total.ops,
            errors: total.errors,
            seconds,
            ops_per_sec: total.ops_per_sec,
            latency_us: total.latency_us,
            read: OpReport::new(read, seconds),
            write: OpReport::new(write, seconds),
            error_samples: all.samples,
            wake_lag_us: None,
            timeline: None,
            config,
        }
    }

    /// Adds the workers' wake-up lateness (open loop).
    pub fn with_wake_lag(mut self, lag: &OpStats) -> Self {
        self.wake_lag_us = Some(lag.latency());
        self
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} ops in {:.2} s: {:.0} ops/s, {} errors\n",
            self.ops, self.seconds, self.ops_per_sec, self.errors
        );
        out.push_str(&format!(
            "{:<6} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "op", "ops", "errors", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
        let total = OpReport {
            ops: self.ops,
            errors: self.errors,
            ops_per_sec: self.ops_per_sec,
            latency_us: self.latency_us.clone(),
        };
        for (name, r) in [
            ("read", &self.read),
            ("write", &self.write),
            ("all", &total),
        ] {
            let l = &r.latency_us;
            let ms = |us: u64| us as f64 / 1000.0;
            out.push_str(&format!(
                "{:<6} {:>10} {:>8} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                name,
                r.ops,
                r.errors,
                r.ops_per_sec,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            ));
        }
        if let Some(l) = &self.wake_lag_us {
            let ms = |us: u64| us as f64 / 1000.0;
            out.push_str(&format!(
                "generator wake-up lag (included above): p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms\n",
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            ));
        }
        for (message, count) in &self.error_samples {
            out.push_str(&format!("error x{count}: {message}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(latencies_us: &[u64], errors: &[&str]) -> OpStats {
        let mut s = OpStats::new();
        for &us in latencies_us {
            s.record(Duration::from_micros(us));
        }
        for e in errors {
            s.record_error(e);
        }
        s
    }

    #[test]
    fn merge_adds_counts_and_latencies() {
        let mut a = stats(&[100, 200], &["UNAVAILABLE: x"]);
        let b = stats(&[300, 400_000], &["UNAVAILABLE: x", "CANCELLED: y"]);
        a.merge(&b);
        assert_eq!(a.ops(), 4);
        assert_eq!(a.errors(), 3);
        assert_eq!(a.samples["UNAVAILABLE: x"], 2);
        let l = a.latency();
        assert!(l.p50 >= 200 && l.p50 <= 201, "{l:?}");
        assert!(l.max >= 399_000, "{l:?}");
    }

    #[test]
    fn error_samples_are_bounded() {
        let mut s = OpStats::new();
        for i in 0..100 {
            s.record_error(&format!("error {i}"));
        }
        assert_eq!(s.errors(), 100);
        assert_eq!(s.samples.len(), MAX_ERROR_SAMPLES + 1);
        assert_eq!(s.samples["other errors"], 100 - MAX_ERROR_SAMPLES as u64);
    }

    #[test]
    fn latencies_are_clamped() {
        let mut s = OpStats::new();
        s.record(Duration::ZERO);
        s.record(Duration::from_secs(3600));
        assert_eq!(s.ops(), 2);
        assert_eq!(s.latency().max, s.hist.highest_equivalent(MAX_LATENCY_US));
    }

    #[test]
    fn report_json_shape() {
        let read = stats(&[1000; 10], &[]);
        let write = stats(&[2000; 30], &["UNAVAILABLE: 1 of 2 replicas answered"]);
        let report = Report::new(
            &read,
            &write,
            Duration::from_secs(2),
            serde_json::json!({"keys": 10}),
        );
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["ops"], 40);
        assert_eq!(v["errors"], 1);
        assert_eq!(v["seconds"], 2.0);
        assert_eq!(v["ops_per_sec"], 20.0);
        for kind in ["read", "write"] {
            for field in ["ops", "errors", "ops_per_sec", "latency_us"] {
                assert!(v[kind].get(field).is_some(), "{kind}.{field} in {v}");
            }
            for p in ["p50", "p90", "p99", "p999", "max"] {
                assert!(v[kind]["latency_us"][p].is_u64(), "{kind}.latency_us.{p}");
                assert!(v["latency_us"][p].is_u64(), "latency_us.{p}");
            }
        }
        assert_eq!(v["read"]["ops_per_sec"], 5.0);
        assert_eq!(v["write"]["errors"], 1);
        assert_eq!(v["config"]["keys"], 10);
        assert!(
            v.get("wake_lag_us").is_none(),
            "closed loop has no wake lag: {v}"
        );
        assert!(v["latency_us"]["p50"].as_u64().unwrap() >= 1999);
        let text = report.to_text();
        assert!(text.contains("20 ops/s"), "{text}");
        assert!(text.contains("error x1: UNAVAILABLE"), "{text}");
    }

    #[test]
    fn open_loop_report_has_wake_lag() {
        let read = stats(&[1000; 10], &[]);
        let report = Report::new(
            &read,
            &OpStats::new(),
            Duration::from_secs(1),
            serde_json::Value::Null,
        )
        .with_wake_lag(&stats(&[50, 70, 9000], &[]));
        let v = serde_json::to_value(&report).unwrap();
        assert!(v["wake_lag_us"]["max"].as_u64().unwrap() >= 8990, "{v}");
        assert!(
            report.to_text().contains("wake-up lag"),
            "{}",
            report.to_text()
        );
    }

    #[test]
    fn empty_report_has_zero_latencies() {
        let empty = OpStats::new();
        let report = Report::new(&empty, &empty, Duration::ZERO, serde_json::Value::Null);
        assert_eq!(report.ops_per_sec, 0.0);
        assert_eq!(
            report.latency_us,
            Latency {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0
            }
        );
    }
}
