//! What this process asked the origins and what its leases did, as Prometheus metrics:
//! one set per process (a coordinator's in-process fetchers share it with it), bumped
//! where the work happens and encoded on each scrape of `/metrics`.

use std::sync::OnceLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// The class of an origin's answer: `1xx` … `5xx`, or `error` when none came (refused,
/// reset, timed out).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

/// The HTTP status of a throttling answer: `429` or `503`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

impl StatusLabel {
    /// The label of a throttling answer's status: `429`, else `503`.
    pub fn of(status: u32) -> Self {
        let status = if status == 429 { "429" } else { "503" };
        Self { status }
    }
}

/// How a packument item of a lease ended: `stored`, `missing` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The process's origin and lease metrics.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<ClassLabel, Counter>,
    pub retries: Counter,
    pub throttled: Family<StatusLabel, Counter>,
    pub requests_in_flight: Gauge,
    pub packuments: Family<OutcomeLabel, Counter>,
    pub stored_bytes: Counter,
    pub index_rows: Counter,
    pub leases_open: Gauge,
    pub lease_seconds: Histogram,
}

/// Bucket bounds, in seconds, for a lease's length: a lease runs from under a second (a
/// small batch on loopback) to its deadline (minutes).
pub const LEASE_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process's metrics (made on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics {
        requests: Family::default(),
        retries: Counter::default(),
        throttled: Family::default(),
        requests_in_flight: Gauge::default(),
        packuments: Family::default(),
        stored_bytes: Counter::default(),
        index_rows: Counter::default(),
        leases_open: Gauge::default(),
        lease_seconds: Histogram::new(LEASE_BUCKETS),
    })
}

/// The label of a status code's class.
pub fn class_of(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Counts an answer from an origin (`None`: no answer came).
    pub fn answered(&self, status: Option<u16>) {
        let class = status.map_or("error", class_of);
        self.requests.get_or_create(&ClassLabel { class }).inc();
    }

    /// Counts a throttling answer (429 or 503).
    pub fn throttled(&self, status: u16) {
        self.throttled
            .get_or_create(&StatusLabel::of(u32::from(status)))
            .inc();
    }

    /// Counts what a finished lease did (`index`: an index lease, whose items are rows).
    pub fn lease_done(&self, summary: &alldocs_proto::v1::LeaseSummary, index: bool) {
        let items = if index {
            [0; 3]
        } else {
            [summary.stored, summary.missing, summary.failed]
        };
        for (outcome, n) in [
            ("stored", items[0]),
            ("missing", items[1]),
            ("failed", items[2]),
        ] {
            self.packuments
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
        self.stored_bytes.inc_by(summary.bytes);
        self.index_rows.inc_by(summary.rows);
        self.lease_seconds
            .observe(summary.duration_ms as f64 / 1000.0);
    }

    /// Adds these metrics to `registry` (names under `alldocs_`, given by the registry's
    /// prefix).
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register(
            "origin_requests",
            "Requests this process sent to the origins (registry, replicate origin), by the class of the answer; `error` when no answer came",
            self.requests.clone(),
        );
        registry.register(
            "origin_retries",
            "Requests to the origins tried again after a transient failure",
            self.retries.clone(),
        );
        registry.register(
            "origin_throttled",
            "Answers from the origins that asked us to slow down (429 or 503)",
            self.throttled.clone(),
        );
        registry.register(
            "origin_requests_in_flight",
            "Requests to the origins sent and not yet answered",
            self.requests_in_flight.clone(),
        );
        registry.register(
            "fetcher_packuments",
            "Packument items of this process's leases, by outcome (stored, missing: the registry has no such package, failed)",
            self.packuments.clone(),
        );
        registry.register_with_unit(
            "fetcher_stored",
            "Bytes of packuments this process's leases stored (as the registry served them)",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
        registry.register(
            "fetcher_index_rows",
            "_all_docs rows this process's index leases read",
            self.index_rows.clone(),
        );
        registry.register(
            "fetcher_leases_open",
            "Leases this process is working on now",
            self.leases_open.clone(),
        );
        registry.register_with_unit(
            "fetcher_lease_duration",
            "How long this process's leases ran, from start to summary",
            Unit::Seconds,
            self.lease_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class() {
        assert_eq!(class_of(200), "2xx");
        assert_eq!(class_of(304), "3xx");
        assert_eq!(class_of(404), "4xx");
        assert_eq!(class_of(429), "4xx");
        assert_eq!(class_of(503), "5xx");
        assert_eq!(class_of(101), "1xx");
    }
}
