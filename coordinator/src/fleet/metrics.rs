//! The fleet's figures as Prometheus instruments, bumped as leases run and end: how long
//! leases took, by kind, and what their fetchers said they asked of the origin (the
//! summaries of remote fetchers included, whose status classes are on their own
//! `/metrics`).

use std::sync::LazyLock;

use alldocs_fetcher::source::metrics::StatusLabel;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

/// What a lease was for: `index` (a partition of `_all_docs`) or `packuments`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

type Durations = Family<KindLabel, Histogram, fn() -> Histogram>;

/// The coordinator's fleet instruments.
#[derive(Debug)]
pub struct FleetMetrics {
    pub lease_seconds: Durations,
    pub requests: Counter,
    pub retries: Counter,
    pub throttled: Family<StatusLabel, Counter>,
}

fn lease_histogram() -> Histogram {
    Histogram::new(alldocs_fetcher::source::metrics::LEASE_BUCKETS)
}

/// The process's fleet instruments.
pub static FLEET: LazyLock<FleetMetrics> = LazyLock::new(|| FleetMetrics {
    lease_seconds: Family::new_with_constructor(lease_histogram),
    requests: Counter::default(),
    retries: Counter::default(),
    throttled: Family::default(),
});

impl FleetMetrics {
    /// Counts a lease that ended after `seconds`.
    pub fn lease_ended(&self, index: bool, seconds: f64) {
        let kind = if index { "index" } else { "packuments" };
        self.lease_seconds
            .get_or_create(&KindLabel { kind })
            .observe(seconds);
    }

    /// Counts what a fetcher's lease summary says it asked of the origin.
    pub fn summary(&self, s: &alldocs_proto::v1::LeaseSummary) {
        self.requests.inc_by(s.requests);
        self.retries.inc_by(s.retries);
    }

    /// Counts a throttling answer a fetcher reported (429 or 503).
    pub fn throttled(&self, http_status: u32) {
        self.throttled
            .get_or_create(&StatusLabel::of(http_status))
            .inc();
    }

    /// Adds these instruments to `registry`.
    pub fn register(&'static self, registry: &mut Registry) {
        registry.register_with_unit(
            "lease_duration",
            "How long leases ran, from the coordinator handing one out to its end, by kind",
            Unit::Seconds,
            self.lease_seconds.clone(),
        );
        registry.register(
            "fleet_origin_requests",
            "Requests to the origins the fleet's fetchers reported in their lease summaries",
            self.requests.clone(),
        );
        registry.register(
            "fleet_origin_retries",
            "Retries the fleet's fetchers reported in their lease summaries",
            self.retries.clone(),
        );
        registry.register(
            "fleet_origin_throttled",
            "Throttling answers (429, 503) the fleet's fetchers reported as they came",
            self.throttled.clone(),
        );
    }
}
