//! Latency over time: what a run's percentiles hide (one stall and a steady slowdown can
//! give the same p99). Each worker keeps, for every successful operation, when it was
//! sent (due, in open loop) and how long it took; the report cuts the run into slices of
//! equal width and gives each slice its operations, p50, p99 and slowest.

use std::time::Duration;

use serde::Serialize;

/// One worker's samples: (microseconds from the run's start, latency in microseconds).
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<(u64, u64)>);

impl Samples {
    /// Records an operation sent `at` after the run's start that took `latency`.
    pub fn record(&mut self, at: Duration, latency: Duration) {
        self.0
            .push((at.as_micros() as u64, latency.as_micros() as u64));
    }
}

/// One slice of the run: operations sent in `[start_ms, start_ms + width)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slice {
    pub start_ms: u64,
    pub ops: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Cuts every worker's samples into slices `width` wide (empty slices included, so that
/// a stall in which nothing was sent shows).
pub fn slices(workers: &[Samples], width: Duration) -> Vec<Slice> {
    let width_us = (width.as_micros() as u64).max(1);
    let mut by_slice: Vec<Vec<u64>> = Vec::new();
    for (at, latency) in workers.iter().flat_map(|w| &w.0) {
        let i = (at / width_us) as usize;
        if by_slice.len() <= i {
            by_slice.resize_with(i + 1, Vec::new);
        }
        by_slice[i].push(*latency);
    }
    by_slice
        .into_iter()
        .enumerate()
        .map(|(i, mut lat)| {
            lat.sort_unstable();
            let q = |q: f64| match lat.len() {
                0 => 0.0,
                n => lat[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64 / 1000.0,
            };
            Slice {
                start_ms: i as u64 * width_us / 1000,
                ops: lat.len() as u64,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                max_ms: q(1.0),
            }
        })
        .collect()
}

/// The slices as a table, one line each.
pub fn to_text(slices: &[Slice]) -> String {
    let mut out = format!(
        "{:>8} {:>8} {:>9} {:>9} {:>9}\n",
        "from s", "ops", "p50 ms", "p99 ms", "max ms"
    );
    for s in slices {
        out.push_str(&format!(
            "{:>8.2} {:>8} {:>9.3} {:>9.3} {:>9.3}\n",
            s.start_ms as f64 / 1000.0,
            s.ops,
            s.p50_ms,
            s.p99_ms,
            s.max_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_stall_shows_in_its_slice_only() {
        let mut a = Samples::default();
        let mut b = Samples::default();
        for i in 0..100 {
            a.record(ms(i * 10), ms(2)); // 0..1 s, steady
        }
        b.record(ms(1500), ms(900)); // one slow request in 1.5 s
        b.record(ms(1600), ms(3));
        let s = slices(&[a, b], ms(500));
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().map(|s| s.ops).collect::<Vec<_>>(), [50, 50, 0, 2]);
        assert_eq!((s[0].p50_ms, s[0].p99_ms, s[0].max_ms), (2.0, 2.0, 2.0));
        assert_eq!(s[2].max_ms, 0.0, "an empty slice is kept");
        assert_eq!(
            (s[3].start_ms, s[3].max_ms, s[3].p50_ms),
            (1500, 900.0, 3.0)
        );
        assert!(to_text(&s).lines().count() == 5);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut a = Samples::default();
        for v in 1..=200 {
            a.record(ms(0), Duration::from_micros(v * 1000));
        }
        let s = slices(&[a], ms(1000));
        assert_eq!(
            (s[0].p50_ms, s[0].p99_ms, s[0].max_ms),
            (100.0, 198.0, 200.0)
        );
    }
}
