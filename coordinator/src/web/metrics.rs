//! `/metrics`: the process's instruments (origin requests, leases, commits) and, read
//! afresh at each scrape, the snapshot's state: packuments and partitions by state, bytes,
//! index rows, the current rate limit, leases open, fetchers by health.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    checkpoint::{commit::COMMIT_SECONDS, Counts},
    fleet::{health::FetcherPool, metrics::FLEET, rates::Stats},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: &'static str,
}

/// The snapshot's state as the last scrape read it, and this process's live figures.
pub struct Live {
    pub counts: Mutex<Counts>,
    pub stats: Arc<Stats>,
    pub pool: Arc<FetcherPool>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// The coordinator's registry: every instrument of the process, and `live`.
pub fn registry(live: Arc<Live>) -> Registry {
    let mut registry = Registry::with_prefix(alldocs_fetcher::serve::web::PREFIX);
    alldocs_fetcher::source::metrics::metrics().register(&mut registry);
    FLEET.register(&mut registry);
    registry.register_with_unit(
        "checkpoint_commit_duration",
        "How long each checkpoint transaction took to commit (its fsyncs)",
        Unit::Seconds,
        COMMIT_SECONDS.clone(),
    );
    registry.register_collector(Box::new(live));
    registry
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (state, n) in values {
        ConstGauge::new(*n as i64).encode(family.encode_family(&StateLabel { state })?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl Into<Value>,
) -> Result<(), std::fmt::Error> {
    match value.into() {
        Value::Int(n) => {
            let metric = ConstGauge::new(n);
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
        }
        Value::Float(x) => {
            let metric = ConstGauge::new(x);
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
        }
    }
}

/// A gauge's value: a count, or a rate.
enum Value {
    Int(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(n as i64)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.snapshot(&mut encoder)?;
        self.process(&mut encoder)
    }
}

impl Live {
    /// The snapshot's state, from the counts the scrape read.
    fn snapshot(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = *self.counts.lock().expect("counts");
        gauge_family(e, "snapshot_packuments", "Packages of the snapshot by state: stored, missing (the registry has none), failed (for good), pending, leased", &[
            ("stored", c.packuments_done),
            ("missing", c.packuments_missing),
            ("failed", c.packuments_failed),
            ("pending", c.packuments_pending),
            ("leased", c.packuments_leased),
        ])?;
        gauge_family(
            e,
            "snapshot_partitions",
            "Partitions of the index by state",
            &[
                ("done", c.partitions_done),
                ("failed", c.partitions_failed),
                ("pending", c.partitions_pending),
                ("leased", c.partitions_leased),
            ],
        )?;
        gauge(
            e,
            "snapshot_stored",
            "Bytes of the stored packuments, as the registry served them",
            Some(&Unit::Bytes),
            c.bytes_stored,
        )?;
        gauge(
            e,
            "snapshot_index_rows",
            "Names the index holds (rows of _all_docs read)",
            None,
            c.rows_indexed,
        )?;
        gauge(
            e,
            "snapshot_packs",
            "Pack objects of the snapshot (packs layout)",
            None,
            c.packs,
        )?;
        gauge(
            e,
            "snapshot_pack_dead",
            "Pack bytes holding no current packument (coordinator compact reclaims them)",
            Some(&Unit::Bytes),
            c.pack_bytes.saturating_sub(c.pack_bytes_live),
        )?;
        Ok(())
    }

    /// This process's figures and its fetchers.
    fn process(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            e,
            "packuments_fetched",
            "Packuments this coordinator committed as stored or missing since it started",
            None,
            load(&s.fetched),
        )?;
        counter(
            e,
            "stored",
            "Bytes of packuments this coordinator committed since it started",
            Some(&Unit::Bytes),
            load(&s.bytes),
        )?;
        counter(
            e,
            "index_rows",
            "_all_docs rows this coordinator committed since it started",
            None,
            load(&s.rows),
        )?;
        gauge(e, "rate_limit_requests_per_second", "The request rate new leases get now, all leases together (0: no limit); lower than --rate-limit after the origin throttled", None, s.rate_limit_current())?;
        gauge(
            e,
            "leases_open",
            "Leases handed out and not yet ended",
            None,
            s.leases_in_flight(),
        )?;
        let views = self.pool.views();
        let healthy = views.iter().filter(|v| v.healthy).count() as u64;
        let mut family = e.encode_descriptor("fetchers", "Fetchers of the run: healthy (answered their last lease) or resting (failed to answer, tried again later)", None, prometheus_client::metrics::MetricType::Gauge)?;
        for (health, n) in [
            ("healthy", healthy),
            ("resting", views.len() as u64 - healthy),
        ] {
            ConstGauge::new(n as i64).encode(family.encode_family(&HealthLabel { health })?)?;
        }
        Ok(())
    }
}
