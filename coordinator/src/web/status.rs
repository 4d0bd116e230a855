//! `GET /api/status`: what the status page shows, as one JSON document (docs/monitoring.md
//! lists its fields), and the throughput history it charts: a sample every
//! [`SAMPLE_EVERY`] over the last hour, kept in memory.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Mutex},
    time::Duration,
};

use alldocs_fetcher::source::http::redact;
use alldocs_proto::v1::{Progress, RunState};
use serde::Serialize;

use crate::fleet::rates::Stats;

/// How often the history takes a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples kept: one hour.
const HISTORY: usize = 720;

/// One point of the throughput chart: the rates over the interval that ended at `t`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    /// Unix time in milliseconds.
    pub t: i64,
    pub packuments_per_second: f64,
    pub bytes_per_second: f64,
}

/// The last hour of throughput.
#[derive(Default)]
pub struct History {
    points: Mutex<VecDeque<Point>>,
    last: Mutex<Option<(std::time::Instant, u64, u64)>>,
}

impl History {
    /// Takes a sample of `stats` now.
    pub fn sample(&self, stats: &Stats) {
        let now = std::time::Instant::now();
        let (fetched, bytes) = (
            stats.fetched.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed),
        );
        let mut last = self.last.lock().expect("last");
        if let Some((at, f0, b0)) = *last {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            let mut points = self.points.lock().expect("points");
            if points.len() == HISTORY {
                points.pop_front();
            }
            points.push_back(Point {
                t: alldocs_proto::now_unix_ms(),
                packuments_per_second: fetched.saturating_sub(f0) as f64 / secs,
                bytes_per_second: bytes.saturating_sub(b0) as f64 / secs,
            });
        }
        *last = Some((now, fetched, bytes));
    }

    pub fn points(&self) -> Vec<Point> {
        self.points
            .lock()
            .expect("points")
            .iter()
            .copied()
            .collect()
    }
}

/// The status document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// planning, indexing, fetching, done or following.
    pub state: &'static str,
    /// The surface needs the admin token (the page then offers to log out).
    pub guarded: bool,
    pub generated_at_unix_ms: i64,
    pub elapsed_seconds: f64,
    pub packuments: Packuments,
    pub partitions: Partitions,
    pub bytes_stored: u64,
    pub rows_indexed: u64,
    pub rate: Rate,
    /// Seconds left at the current rate; null while unknown (indexing, or no rate yet).
    pub eta_seconds: Option<i64>,
    pub rate_limit_current: f64,
    pub leases_open: u64,
    pub history: Vec<Point>,
    pub grid: Vec<Cell>,
    pub fetchers: Vec<Fetcher>,
    pub failures: Failures,
    pub settings: Vec<Setting>,
}

#[derive(Debug, Serialize)]
pub struct Packuments {
    pub total: u64,
    pub stored: u64,
    pub missing: u64,
    pub failed: u64,
    pub pending: u64,
    pub leased: u64,
    /// stored + missing + failed: what is finished.
    pub done: u64,
}

#[derive(Debug, Serialize)]
pub struct Partitions {
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
    pub leased: u64,
}

#[derive(Debug, Serialize)]
pub struct Rate {
    pub packuments_per_second: f64,
    pub bytes_per_second: f64,
    pub rows_per_second: f64,
}

/// One partition of the grid.
#[derive(Debug, Serialize)]
pub struct Cell {
    pub name: String,
    /// pending, leased, done or failed.
    pub status: String,
    pub rows: u64,
    pub attempts: u32,
}

#[derive(Debug, Serialize)]
pub struct Fetcher {
    pub name: String,
    pub healthy: bool,
    pub failures: u32,
    /// Seconds before a resting fetcher is asked again.
    pub resting_seconds: Option<f64>,
    pub last_error: String,
}

#[derive(Debug, Serialize)]
pub struct Failures {
    /// Items failed for good (ListFailures' total).
    pub total: u64,
    /// The first of them, partitions first, by name.
    pub failed: Vec<Failure>,
    /// The latest failed attempts this coordinator saw, newest first (retryable too).
    pub recent: Vec<Recent>,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub attempts: u32,
}

#[derive(Debug, Serialize)]
pub struct Recent {
    pub at_unix_ms: i64,
    pub name: String,
    pub reason: String,
    pub retryable: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setting {
    pub name: String,
    pub value: String,
}

impl Setting {
    pub fn new(name: &str, value: impl ToString) -> Self {
        Self {
            name: name.to_string(),
            value: value.to_string(),
        }
    }

    /// A URL, with any credentials in it taken out.
    pub fn url(name: &str, value: &str) -> Self {
        Self::new(name, redact(value))
    }
}

/// The name of a run state.
pub fn state_name(state: i32) -> &'static str {
    match RunState::try_from(state).unwrap_or(RunState::Unspecified) {
        RunState::Unspecified | RunState::Planning => "planning",
        RunState::Indexing => "indexing",
        RunState::Fetching => "fetching",
        RunState::Done => "done",
        RunState::Following => "following",
    }
}

/// The counts part of the document, from a `Progress`.
pub fn figures(p: &Progress) -> (Packuments, Partitions, Rate, Option<i64>) {
    let done = p.packuments_done + p.packuments_missing + p.packuments_failed;
    (
        Packuments {
            total: p.packuments_total,
            stored: p.packuments_done,
            missing: p.packuments_missing,
            failed: p.packuments_failed,
            pending: p.packuments_pending,
            leased: p.packuments_leased,
            done,
        },
        Partitions {
            total: p.partitions_total,
            done: p.partitions_done,
            failed: p.partitions_failed,
            pending: p
                .partitions_total
                .saturating_sub(p.partitions_done + p.partitions_failed),
            leased: 0,
        },
        Rate {
            packuments_per_second: p.packuments_per_second,
            bytes_per_second: p.bytes_per_second,
            rows_per_second: p.rows_per_second,
        },
        (p.eta_seconds >= 0).then_some(p.eta_seconds),
    )
}
