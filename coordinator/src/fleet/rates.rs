//! Live figures of this process: what it fetched, indexed and stored, and the rates over
//! the recent past that progress shows.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// Counters the scheduler bumps as events are committed.
#[derive(Default)]
pub struct Stats {
    pub started: Mutex<Option<Instant>>,
    pub fetched: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub in_flight: AtomicUsize,
    /// The run's request budget, once a scheduler made it.
    pub budget: OnceLock<Arc<crate::fleet::budget::Budget>>,
    /// Where `serve --follow` is in the `_changes` feed.
    pub feed: Mutex<FeedStatus>,
    samples: Mutex<VecDeque<Sample>>,
    /// The latest failed attempts, newest last (retryable ones too): what the status page
    /// shows as they happen.
    recent_failures: Mutex<VecDeque<RecentFailure>>,
}

/// One failed attempt, as a fetcher reported it.
#[derive(Clone, Debug)]
pub struct RecentFailure {
    pub at_unix_ms: i64,
    /// The package, or empty for an index partition.
    pub name: String,
    pub reason: String,
    pub retryable: bool,
}

/// How many failed attempts [`Stats`] keeps.
pub const RECENT_FAILURES: usize = 20;

/// Where `serve --follow` is: the feed's head as last read, and the sequence the
/// checkpoint has applied every change up to.
#[derive(Clone, Debug, Default)]
pub struct FeedStatus {
    pub following: bool,
    pub head: Option<crate::checkpoint::feed::Seq>,
    pub ours: Option<crate::checkpoint::feed::Seq>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    fetched: u64,
    rows: u64,
    bytes: u64,
}

/// Rates over the last half minute (or, once done, over the whole run).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    pub packuments_per_second: f64,
    pub rows_per_second: f64,
    pub bytes_per_second: f64,
}

/// How far back the recent rates look.
const WINDOW: Duration = Duration::from_secs(30);

impl Stats {
    /// Where following is now.
    pub fn feed(&self) -> FeedStatus {
        self.feed.lock().expect("feed").clone()
    }

    /// Updates where following is.
    pub fn set_feed(&self, update: impl FnOnce(&mut FeedStatus)) {
        update(&mut self.feed.lock().expect("feed"));
    }

    /// Keeps a failed attempt among the latest [`RECENT_FAILURES`].
    pub fn failed(&self, name: &str, reason: &str, retryable: bool) {
        let mut recent = self.recent_failures.lock().expect("failures");
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(RecentFailure {
            at_unix_ms: alldocs_proto::now_unix_ms(),
            name: name.to_string(),
            reason: reason.to_string(),
            retryable,
        });
    }

    /// The latest failed attempts, newest first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        let recent = self.recent_failures.lock().expect("failures");
        recent.iter().rev().cloned().collect()
    }

    /// Starts the clock (once; a rerun after RetryFailed keeps the first start).
    pub fn start(&self) {
        self.started
            .lock()
            .expect("started")
            .get_or_insert_with(Instant::now);
    }

    fn sample(&self, at: Instant) -> Sample {
        Sample {
            at,
            fetched: self.fetched.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Takes a sample and returns the rates since the oldest one kept.
    pub fn rates(&self) -> Rates {
        let current = self.sample(Instant::now());
        let mut samples = self.samples.lock().expect("samples");
        while samples.len() > 1 && current.at.duration_since(samples[0].at) > WINDOW {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|s| current.at.duration_since(s.at) > Duration::from_millis(200))
        {
            samples.push_back(current);
        }
        let Some(first) = samples.front().copied() else {
            return Rates::default();
        };
        let secs = current.at.duration_since(first.at).as_secs_f64();
        if secs < 0.5 {
            return Rates::default();
        }
        Rates {
            packuments_per_second: (current.fetched - first.fetched) as f64 / secs,
            rows_per_second: (current.rows - first.rows) as f64 / secs,
            bytes_per_second: (current.bytes - first.bytes) as f64 / secs,
        }
    }

    /// The average rates since the run started.
    pub fn average(&self) -> Rates {
        let secs = self.elapsed().as_secs_f64().max(1e-3);
        let now = self.sample(Instant::now());
        Rates {
            packuments_per_second: now.fetched as f64 / secs,
            rows_per_second: now.rows as f64 / secs,
            bytes_per_second: now.bytes as f64 / secs,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started
            .lock()
            .expect("started")
            .map_or(Duration::ZERO, |s| s.elapsed())
    }

    pub fn leases_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) as u64
    }

    /// The request rate new leases get now (0 = no limit).
    pub fn rate_limit_current(&self) -> f64 {
        self.budget.get().map_or(0.0, |b| b.current())
    }
}
