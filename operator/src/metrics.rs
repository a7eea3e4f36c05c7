//! The operator's own Prometheus metrics: reconciles, failures by error category, and
//! reconcile duration.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Metrics of the operator.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<Labels, Counter>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dynamo_operator");
        let reconciles = Counter::default();
        let failures = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconcile passes by error category",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            duration.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
        }
    }
}

impl Metrics {
    /// Records one pass and, if it failed, its error category.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(category) = error {
            self.failures
                .get_or_create(&vec![("category".to_string(), category.to_string())])
                .inc();
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_category() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3), None);
        m.observe_reconcile(Duration::from_millis(3), Some("Conflict"));
        let text = m.render();
        assert!(
            text.contains("dynamo_operator_reconciles_total 2"),
            "{text}"
        );
        assert!(
            text.contains("dynamo_operator_reconcile_failures_total{category=\"Conflict\"} 1"),
            "{text}"
        );
    }
}
