//! Which fetchers are answering: round robin over those that are, and a rest that doubles
//! for one that is not, so an unreachable fetcher costs no item an attempt.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::fleet::fetchers::FetcherHandle;

/// Consecutive times every fetcher must have failed to answer before a run gives up.
pub const GIVE_UP_AFTER: u32 = 8;

/// The longest rest a fetcher is given.
const MAX_REST: Duration = Duration::from_secs(30);

/// How a fetcher has been answering.
#[derive(Clone, Debug, Default)]
struct Health {
    failures: u32,
    until: Option<Instant>,
    last_error: String,
}

/// One fetcher as a person sees it: answering, or resting after failures in a row.
#[derive(Clone, Debug)]
pub struct FetcherView {
    pub name: String,
    /// It answered its last lease (or has had none yet).
    pub healthy: bool,
    /// How long it rests before it is asked again.
    pub resting_for: Option<Duration>,
    /// Failures to answer in a row.
    pub failures: u32,
    pub last_error: String,
}

/// The fetchers of a run and how each has been answering.
pub struct FetcherPool {
    fetchers: Vec<FetcherHandle>,
    health: Mutex<Vec<Health>>,
    /// The first rest; it doubles with each failure in a row.
    base_rest: Duration,
}

impl FetcherPool {
    pub fn new(fetchers: Vec<FetcherHandle>, base_rest: Duration) -> Self {
        let health = Mutex::new(vec![Health::default(); fetchers.len()]);
        Self {
            fetchers,
            health,
            base_rest,
        }
    }

    pub fn get(&self, index: usize) -> &FetcherHandle {
        &self.fetchers[index]
    }

    pub fn all(&self) -> &[FetcherHandle] {
        &self.fetchers
    }

    /// The next fetcher (round robin from `cursor`) that is not resting, if any.
    pub fn next(&self, cursor: &mut usize) -> Option<usize> {
        let health = self.health.lock().expect("health");
        let now = Instant::now();
        let n = self.fetchers.len();
        (0..n)
            .map(|i| (*cursor + i) % n)
            .find(|&i| health[i].until.is_none_or(|t| t <= now))
            .inspect(|&i| *cursor = i + 1)
    }

    /// Records how a fetcher answered: `Some((error, hint))` when it could not be reached
    /// or was saturated, which rests it (for the fetcher's own retry hint if it gave one,
    /// else a rest that doubles); `None` when it answered, which clears its record.
    pub fn record(&self, index: usize, unreachable: Option<(String, Option<Duration>)>) {
        let mut health = self.health.lock().expect("health");
        let h = &mut health[index];
        let Some((error, hint)) = unreachable else {
            *h = Health::default();
            return;
        };
        h.failures += 1;
        let rest = hint.unwrap_or_else(|| {
            self.base_rest
                .saturating_mul(1 << (h.failures - 1).min(16))
                .min(MAX_REST)
        });
        tracing::warn!(fetcher = self.fetchers[index].name(), %error, rest = ?rest, "fetcher unreachable or saturated; resting it (its leases go back without an attempt counted)");
        h.until = Some(Instant::now() + rest);
        h.last_error = error;
    }

    /// How each fetcher has been answering, for people (the status page, metrics).
    pub fn views(&self) -> Vec<FetcherView> {
        let health = self.health.lock().expect("health");
        let now = Instant::now();
        self.fetchers
            .iter()
            .zip(health.iter())
            .map(|(f, h)| FetcherView {
                name: f.name().to_string(),
                healthy: h.failures == 0,
                resting_for: h.until.and_then(|t| t.checked_duration_since(now)),
                failures: h.failures,
                last_error: h.last_error.clone(),
            })
            .collect()
    }

    /// When the first resting fetcher may be tried again, if every one is resting.
    pub fn all_resting_until(&self) -> Option<Instant> {
        let health = self.health.lock().expect("health");
        let now = Instant::now();
        health
            .iter()
            .map(|h| h.until.filter(|&t| t > now))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    /// An error naming every fetcher if none has answered [`GIVE_UP_AFTER`] times in a row.
    pub fn check_reachable(&self) -> anyhow::Result<()> {
        let health = self.health.lock().expect("health");
        if health.iter().any(|h| h.failures < GIVE_UP_AFTER) {
            return Ok(());
        }
        let detail: Vec<String> = self
            .fetchers
            .iter()
            .zip(health.iter())
            .map(|(f, h)| format!("{}: {}", f.name(), h.last_error))
            .collect();
        anyhow::bail!(
            "no fetcher answered {GIVE_UP_AFTER} times in a row ({}). Check the --fetcher URLs and that the fetchers run; the checkpoint keeps everything finished, so the same command carries on",
            detail.join("; ")
        )
    }
}
