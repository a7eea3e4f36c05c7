//! Prometheus metrics of a node, served at `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A client operation.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum OpKind {
    Get,
    Put,
    Delete,
}

/// How a request ended, by error category.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    Ok,
    InvalidArgument,
    Unavailable,
    Internal,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: OpKind,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: OpKind,
}

fn latency() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric a node exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub siblings_per_read: Histogram,
    pub hints_pending: Gauge,
    pub hint_oldest_age_seconds: Gauge,
    pub hints_delivered: Counter,
    pub read_repairs: Counter,
    pub read_repairs_skipped: Counter,
    pub read_repairs_arriving: Counter,
    pub fallback_writes: Counter,
    pub storage_bytes: Gauge,
    /// Bytes the engine's compactions still owe.
    pub compaction_debt_bytes: Gauge,
    pub set_cache_hits: Counter,
    pub set_cache_misses: Counter,
    pub anti_entropy_compared: Counter,
    pub anti_entropy_differing: Counter,
    pub anti_entropy_keys: Counter,
    pub anti_entropy_bytes: Counter,
    pub tombstones_purged: Counter,
    pub background_rate: Gauge,
    pub fallback_copies_dropped: Counter,
    pub peer_state_changes: Counter,
    pub transfer_bytes: Counter,
    pub partitions_to_drop: Gauge,
    pub connections_refused: Counter,
    pub tls_handshakes_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dynamo");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency as fn() -> Histogram,
        );
        let siblings_per_read = Histogram::new([1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 64.0]);
        let hints_pending = Gauge::default();
        let hint_oldest_age_seconds = Gauge::default();
        let hints_delivered = Counter::default();
        let read_repairs = Counter::default();
        let read_repairs_skipped = Counter::default();
        registry.register(
            "read_repairs_skipped",
            "Read repairs skipped because the background budget was spent (anti-entropy \
             repairs those replicas later)",
            read_repairs_skipped.clone(),
        );
        let read_repairs_arriving = Counter::default();
        registry.register(
            "read_repairs_arriving",
            "Reads for repair only that found a new replica still receiving the partition \
             (not repaired: the transfer brings the key; that replica is not read for repair \
             in that partition for a while)",
            read_repairs_arriving.clone(),
        );
        let fallback_writes = Counter::default();
        let storage_bytes = Gauge::default();
        let compaction_debt_bytes = Gauge::default();
        let set_cache_hits = Counter::default();
        let set_cache_misses = Counter::default();
        let anti_entropy_compared = Counter::default();
        let anti_entropy_differing = Counter::default();
        let anti_entropy_keys = Counter::default();
        let anti_entropy_bytes = Counter::default();
        let tombstones_purged = Counter::default();
        let background_rate = Gauge::default();
        registry.register(
            "background_rate_bytes_per_second",
            "The background budget's current rate (hinted handoff and anti-entropy), lowered \
             while client p99 latency is above its target",
            background_rate.clone(),
        );
        let fallback_copies_dropped = Counter::default();
        registry.register(
            "tombstones_purged",
            "Tombstones purged by this node as the partition's owner",
            tombstones_purged.clone(),
        );
        registry.register(
            "fallback_copies_dropped",
            "Copies of keys this node does not replicate, dropped once the replicas held them",
            fallback_copies_dropped.clone(),
        );
        registry.register(
            "anti_entropy_compared",
            "Partition copies compared with a peer's by anti-entropy",
            anti_entropy_compared.clone(),
        );
        registry.register(
            "anti_entropy_differing",
            "Partition copies anti-entropy found differing from a peer's",
            anti_entropy_differing.clone(),
        );
        registry.register(
            "anti_entropy_keys",
            "Keys anti-entropy joined here or sent to a peer",
            anti_entropy_keys.clone(),
        );
        registry.register(
            "anti_entropy_bytes",
            "Approximate bytes anti-entropy exchanged",
            anti_entropy_bytes.clone(),
        );
        let peer_state_changes = Counter::default();
        let transfer_bytes = Counter::default();
        let partitions_to_drop = Gauge::default();
        let connections_refused = Counter::default();
        let tls_handshakes_refused = Counter::default();
        registry.register(
            "requests",
            "Client requests coordinated, by operation and outcome",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Client request latency at the coordinator",
            latency.clone(),
        );
        registry.register(
            "siblings_per_read",
            "Siblings returned per get",
            siblings_per_read.clone(),
        );
        registry.register(
            "hints_pending",
            "Hints held here for other nodes",
            hints_pending.clone(),
        );
        registry.register(
            "hint_oldest_age_seconds",
            "Age of the oldest hint held here",
            hint_oldest_age_seconds.clone(),
        );
        registry.register(
            "hints_delivered",
            "Hints handed off and acknowledged",
            hints_delivered.clone(),
        );
        registry.register(
            "read_repairs",
            "Stale replicas repaired after a get",
            read_repairs.clone(),
        );
        registry.register(
            "fallback_writes",
            "Puts and deletes coordinated here although this node is none of the key's \
             replicas, because none of them could be reached",
            fallback_writes.clone(),
        );
        registry.register(
            "storage_bytes",
            "Approximate bytes stored by the engine",
            storage_bytes.clone(),
        );
        registry.register(
            "compaction_debt_bytes",
            "Approximate bytes the engine's compactions still owe (RocksDB's estimate of \
             pending compaction bytes)",
            compaction_debt_bytes.clone(),
        );
        registry.register(
            "set_cache_hits",
            "Lookups of a key's set (gets, replica reads, read-modify-writes) served from \
             the cache of recent sets",
            set_cache_hits.clone(),
        );
        registry.register(
            "set_cache_misses",
            "Lookups of a key's set that went to the storage engine",
            set_cache_misses.clone(),
        );
        registry.register(
            "peer_state_changes",
            "Times the failure detector changed its verdict on a peer (alive, suspect, down)",
            peer_state_changes.clone(),
        );
        registry.register(
            "transfer_bytes",
            "Bytes of partitions received from old replicas in changes of members",
            transfer_bytes.clone(),
        );
        registry.register(
            "partitions_to_drop",
            "Partitions this node holds but no longer replicates, left for the clean-up after a change",
            partitions_to_drop.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted: their client address had \
             max_connections_per_client open",
            connections_refused.clone(),
        );
        registry.register(
            "tls_handshakes_refused",
            "TLS handshakes that failed: no certificate where one is needed, one from \
             another CA or cluster, expired or revoked, or a handshake too slow",
            tls_handshakes_refused.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            siblings_per_read,
            hints_pending,
            hint_oldest_age_seconds,
            hints_delivered,
            read_repairs,
            read_repairs_skipped,
            read_repairs_arriving,
            fallback_writes,
            storage_bytes,
            compaction_debt_bytes,
            set_cache_hits,
            set_cache_misses,
            anti_entropy_compared,
            anti_entropy_differing,
            anti_entropy_keys,
            anti_entropy_bytes,
            tombstones_purged,
            background_rate,
            fallback_copies_dropped,
            peer_state_changes,
            transfer_bytes,
            partitions_to_drop,
            connections_refused,
            tls_handshakes_refused,
        }
    }
}

impl Metrics {
    /// Records one finished client request.
    pub fn request(&self, op: OpKind, outcome: Outcome, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { op, outcome })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(seconds);
    }

    /// Brings the cache counters up to `stats` (totals kept by the store).
    pub fn set_cache(&self, stats: crate::store::CacheStats) {
        for (counter, total) in [
            (&self.set_cache_hits, stats.hits),
            (&self.set_cache_misses, stats.misses),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Counts what an anti-entropy sweep did.
    pub fn record_anti_entropy(&self, r: &crate::antientropy::Report) {
        self.anti_entropy_compared.inc_by(r.compared);
        self.anti_entropy_differing.inc_by(r.differing);
        self.anti_entropy_keys.inc_by(r.pulled + r.pushed);
        self.anti_entropy_bytes.inc_by(r.bytes);
    }

    /// Counts what a purge pass did.
    pub fn record_purge(&self, r: &crate::antientropy::purge::PurgeReport) {
        self.tombstones_purged.inc_by(r.purged);
        self.fallback_copies_dropped.inc_by(r.cleaned);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CacheStats;

    #[test]
    fn cache_counters_follow_the_stores_totals() {
        let m = Metrics::default();
        m.set_cache(CacheStats { hits: 5, misses: 2 });
        m.set_cache(CacheStats { hits: 9, misses: 2 });
        let text = m.encode();
        assert!(text.contains("dynamo_set_cache_hits_total 9"), "{text}");
        assert!(text.contains("dynamo_set_cache_misses_total 2"), "{text}");
    }
}
