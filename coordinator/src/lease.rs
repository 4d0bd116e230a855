//! Leasing: hands partitions and packument batches to fetchers, commits their events as
//! they arrive, fences superseded attempts, and returns unfinished work to pending.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use alldocs_proto::v1::{
    fetch_event::Event, lease::Work as LeaseWork, Accept, IndexWork, Lease, PackumentRequest,
    PackumentWork, RunState,
};
use futures::{FutureExt, StreamExt};
use tokio::task::JoinSet;

use crate::{
    checkpoint::{now_ms, Checkpoint, CheckpointError, Counts, Work},
    fetchers::FetcherHandle,
};

/// How leases are cut and paced.
#[derive(Clone, Debug)]
pub struct Settings {
    pub replicate_origin: String,
    pub registry: String,
    pub store: String,
    pub accept: Accept,
    pub page_size: u32,
    pub lease_size: usize,
    pub lease_duration: Duration,
    pub max_in_flight: usize,
    pub concurrency: u32,
    /// Requests per second to the origins, all leases together (0 = unlimited).
    pub rate_limit: f64,
    pub max_retries: u32,
    pub retry_base_ms: u32,
}

/// Live figures of this process, for rates and the end-of-run summary.
#[derive(Default)]
pub struct Stats {
    pub started: Mutex<Option<Instant>>,
    pub fetched: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub in_flight: AtomicUsize,
    samples: Mutex<VecDeque<(Instant, u64, u64, u64)>>,
}

/// Rates over the last half minute.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    pub packuments_per_second: f64,
    pub rows_per_second: f64,
    pub bytes_per_second: f64,
}

impl Stats {
    /// Takes a sample and returns the rates since the oldest one kept.
    pub fn rates(&self) -> Rates {
        let now = Instant::now();
        let current = (
            now,
            self.fetched.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        let mut samples = self.samples.lock().expect("samples");
        while samples.len() > 1 && now.duration_since(samples[0].0) > Duration::from_secs(30) {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|s| now.duration_since(s.0) > Duration::from_millis(200))
        {
            samples.push_back(current);
        }
        let Some(&(t0, f0, r0, b0)) = samples.front() else {
            return Rates::default();
        };
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.5 {
            return Rates::default();
        }
        Rates {
            packuments_per_second: (current.1 - f0) as f64 / secs,
            rows_per_second: (current.2 - r0) as f64 / secs,
            bytes_per_second: (current.3 - b0) as f64 / secs,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started
            .lock()
            .expect("started")
            .map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// The run: owns the lease loop.
pub struct Scheduler {
    pub checkpoint: Checkpoint,
    pub fetchers: Vec<FetcherHandle>,
    pub settings: Settings,
    pub stats: Arc<Stats>,
    pub state: tokio::sync::watch::Sender<RunState>,
    health: Mutex<Vec<Health>>,
}

impl Scheduler {
    pub fn new(
        checkpoint: Checkpoint,
        fetchers: Vec<FetcherHandle>,
        settings: Settings,
        stats: Arc<Stats>,
        state: tokio::sync::watch::Sender<RunState>,
    ) -> Self {
        let health = Mutex::new(vec![Health::default(); fetchers.len()]);
        Self {
            checkpoint,
            fetchers,
            settings,
            stats,
            state,
            health,
        }
    }

    /// The next fetcher (round robin) that is not resting, if any.
    fn next_fetcher(&self, cursor: &mut usize) -> Option<usize> {
        let health = self.health.lock().expect("health");
        let now = tokio::time::Instant::now();
        (0..self.fetchers.len())
            .map(|i| (*cursor + i) % self.fetchers.len())
            .find(|&i| health[i].until.is_none_or(|t| t <= now))
            .inspect(|&i| *cursor = i + 1)
    }

    /// Records how a fetcher answered; an unreachable one rests, doubling each time.
    fn record_health(&self, index: usize, unreachable: Option<String>) {
        let mut health = self.health.lock().expect("health");
        let h = &mut health[index];
        match unreachable {
            None => *h = Health::default(),
            Some(error) => {
                h.failures += 1;
                let base = Duration::from_millis(u64::from(self.settings.retry_base_ms));
                let rest = base
                    .saturating_mul(1 << (h.failures - 1).min(16))
                    .min(Duration::from_secs(30));
                tracing::warn!(fetcher = self.fetchers[index].name(), %error, rest = ?rest, "fetcher unreachable; resting it");
                h.until = Some(tokio::time::Instant::now() + rest);
                h.last_error = error;
            }
        }
    }

    /// When the first resting fetcher may be tried again, if all are resting.
    fn all_resting_until(&self) -> Option<tokio::time::Instant> {
        let health = self.health.lock().expect("health");
        let now = tokio::time::Instant::now();
        health
            .iter()
            .map(|h| h.until.filter(|&t| t > now))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    /// An error if no fetcher has answered for a long while.
    fn check_reachable(&self) -> anyhow::Result<()> {
        let health = self.health.lock().expect("health");
        if health.iter().all(|h| h.failures >= GIVE_UP_AFTER) {
            let detail: Vec<String> = self
                .fetchers
                .iter()
                .zip(health.iter())
                .map(|(f, h)| format!("{}: {}", f.name(), h.last_error))
                .collect();
            anyhow::bail!(
                "no fetcher answered {GIVE_UP_AFTER} times in a row ({}). Check the --fetcher URLs and that the fetchers run; the checkpoint keeps everything finished, so the same command carries on",
                detail.join("; ")
            );
        }
        Ok(())
    }

    /// Leases until nothing is pending or leased, marks the run complete, and returns the
    /// final counts.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<Counts> {
        self.stats
            .started
            .lock()
            .expect("started")
            .get_or_insert_with(Instant::now);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut cursor = 0usize;
        let index_running = Arc::new(AtomicUsize::new(0));
        loop {
            while tasks.len() < self.settings.max_in_flight {
                let Some(f) = self.next_fetcher(&mut cursor) else {
                    break;
                };
                let fetcher = self.fetchers[f].clone();
                let Some((token, work, deadline_ms)) = self
                    .pick(&fetcher, index_running.load(Ordering::Relaxed))
                    .await?
                else {
                    break;
                };
                let is_index = matches!(work, Work::Index(_));
                if is_index {
                    index_running.fetch_add(1, Ordering::Relaxed);
                }
                let this = self.clone();
                let index_running = index_running.clone();
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let unreachable = this.run_lease(&fetcher, token, work, deadline_ms).await;
                    this.record_health(f, unreachable);
                    if is_index {
                        index_running.fetch_sub(1, Ordering::Relaxed);
                    }
                    this.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            let (open, counts) = self
                .checkpoint
                .call(|db| Ok((db.has_open_work()?, db.counts()?)))
                .await?;
            self.state.send_replace(if open {
                state_of(&counts)
            } else {
                RunState::Done
            });
            if tasks.is_empty() && !open {
                return Ok(self
                    .checkpoint
                    .call(|db| {
                        db.set_run_complete(true)?;
                        db.counts_now()
                    })
                    .await?);
            }
            if tasks.is_empty() {
                self.check_reachable()?;
            }
            let resting = self.all_resting_until();
            tokio::select! {
                joined = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(Err(e)) = joined {
                        tracing::error!(error = %e, "a lease task panicked");
                    }
                }
                // Every fetcher is resting: try again when the first may be asked.
                _ = tokio::time::sleep_until(resting.unwrap_or_else(tokio::time::Instant::now)), if resting.is_some() => {}
                // Open work but nothing leasable and nothing in flight cannot last (a
                // partition is pending, so it is leasable); look again shortly regardless.
                _ = tokio::time::sleep(Duration::from_secs(1)), if tasks.is_empty() && resting.is_none() => {}
            }
        }
    }

    /// Picks the next work: index partitions first while fewer than half the slots index
    /// (so packuments of finished partitions flow meanwhile), then packument batches.
    async fn pick(
        &self,
        fetcher: &FetcherHandle,
        index_running: usize,
    ) -> Result<Option<(i64, Work, i64)>, CheckpointError> {
        let lease_size = self.settings.lease_size;
        let index_slots = (self.settings.max_in_flight / 2).max(1);
        let fetcher_name = fetcher.name().to_string();
        let deadline_ms = now_ms() + self.settings.lease_duration.as_millis() as i64;
        self.checkpoint
            .call(move |db| {
                let token = db.next_token()?;
                let mut work = None;
                if index_running < index_slots {
                    work = db.lease_partition(token)?.map(Work::Index);
                }
                if work.is_none() {
                    let items = db.lease_packuments(token, lease_size)?;
                    if !items.is_empty() {
                        work = Some(Work::Packuments(items));
                    }
                }
                if work.is_none() {
                    work = db.lease_partition(token)?.map(Work::Index);
                }
                if let Some(w) = &work {
                    db.record_lease(token, w, &fetcher_name, deadline_ms)?;
                }
                Ok(work.map(|w| (token, w, deadline_ms)))
            })
            .await
    }

    fn lease_for(&self, token: i64, work: &Work, deadline_ms: i64) -> Lease {
        let s = &self.settings;
        let share = if s.rate_limit > 0.0 {
            s.rate_limit / s.max_in_flight as f64
        } else {
            0.0
        };
        Lease {
            lease_id: format!("lease-{token}"),
            fencing_token: token as u64,
            deadline_unix_ms: deadline_ms,
            replicate_origin: s.replicate_origin.clone(),
            registry: s.registry.clone(),
            store_url: s.store.clone(),
            accept: s.accept as i32,
            rate_limit: share,
            concurrency: s.concurrency,
            max_retries: s.max_retries,
            retry_base_ms: s.retry_base_ms,
            work: Some(match work {
                Work::Index(p) => LeaseWork::Index(IndexWork {
                    partition: p.name.clone(),
                    start: p.start.clone(),
                    end: p.end.clone(),
                    page_size: s.page_size,
                }),
                Work::Packuments(items) => LeaseWork::Packuments(PackumentWork {
                    items: items
                        .iter()
                        .map(|(name, rev)| PackumentRequest {
                            name: name.clone(),
                            rev: rev.clone(),
                        })
                        .collect(),
                }),
            }),
        }
    }

    /// Runs one lease to its end and gives back whatever it did not finish. Returns
    /// whether the fetcher could not be reached at all.
    async fn run_lease(
        &self,
        fetcher: &FetcherHandle,
        token: i64,
        work: Work,
        deadline_ms: i64,
    ) -> Option<String> {
        let lease = self.lease_for(token, &work, deadline_ms);
        // Past the deadline the fetcher stops by itself; give it a little longer to say so.
        let give_up =
            tokio::time::Instant::now() + self.settings.lease_duration + Duration::from_secs(30);
        let end = match tokio::time::timeout_at(give_up, self.follow(fetcher, token, lease)).await {
            Ok(end) => end,
            Err(_) => LeaseEnd::counted("lease deadline passed without an answer from the fetcher"),
        };
        let returned = {
            let (outcome, count) = (end.outcome.clone(), end.count_attempt);
            self.checkpoint
                .call(move |db| db.end_lease(token, &outcome, count))
                .await
        };
        match returned {
            Ok(0) => {
                tracing::debug!(token, fetcher = fetcher.name(), outcome = %end.outcome, "lease ended")
            }
            Ok(n) => tracing::warn!(
                token, fetcher = fetcher.name(), outcome = %end.outcome, returned = n,
                attempt_counted = end.count_attempt,
                "lease ended early; its unfinished work goes back to pending"
            ),
            Err(e) => tracing::error!(token, error = %e, "could not end a lease in the checkpoint"),
        }
        end.unreachable.then_some(end.outcome)
    }

    /// Streams a lease's events into the checkpoint, in batches of what has arrived.
    async fn follow(&self, fetcher: &FetcherHandle, token: i64, lease: Lease) -> LeaseEnd {
        let mut stream = match fetcher.fetch(lease).await {
            Ok(stream) => stream,
            // The fetcher looked at the lease and refused it: that is about the work.
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                return LeaseEnd::counted(format!(
                    "fetcher {} refused the lease: {}",
                    fetcher.name(),
                    s.message()
                ))
            }
            // It could not be reached (or is overloaded): not the items' fault.
            Err(s) => {
                return LeaseEnd::unreachable(format!(
                    "fetcher {} did not answer: {}",
                    fetcher.name(),
                    s.message()
                ))
            }
        };
        let mut outcome = LeaseEnd::counted("stream ended without a summary");
        let mut received_any = false;
        loop {
            let mut batch = Vec::new();
            let mut ended = None;
            match stream.next().await {
                None => ended = Some(Ok(())),
                Some(Err(status)) => ended = Some(Err(status)),
                Some(Ok(ev)) => batch.extend(ev.event),
            }
            while ended.is_none() && batch.len() < 1024 {
                match stream.next().now_or_never() {
                    Some(Some(Ok(ev))) => batch.extend(ev.event),
                    Some(Some(Err(status))) => ended = Some(Err(status)),
                    Some(None) => ended = Some(Ok(())),
                    None => break,
                }
            }
            received_any |= !batch.is_empty();
            for ev in &batch {
                match ev {
                    Event::IndexRows(r) => {
                        self.stats
                            .rows
                            .fetch_add(r.rows.len() as u64, Ordering::Relaxed);
                    }
                    Event::Summary(s) => {
                        outcome = if s.unfinished == 0 {
                            LeaseEnd::counted("finished")
                        } else if s.deadline_exceeded {
                            LeaseEnd::counted(format!(
                                "lease deadline passed with {} items unfinished",
                                s.unfinished
                            ))
                        } else {
                            // Told to stop (SIGTERM, scale-in): hand the rest out again as is.
                            LeaseEnd::uncounted(format!(
                                "fetcher stopped with {} items unfinished",
                                s.unfinished
                            ))
                        };
                    }
                    Event::Failed(f) => {
                        tracing::warn!(name = %f.name, reason = %f.reason, retryable = f.retryable, "fetch failed");
                    }
                    _ => {}
                }
            }
            if !batch.is_empty() {
                let bytes: u64 = batch
                    .iter()
                    .map(|e| match e {
                        Event::Stored(s) => s.bytes,
                        _ => 0,
                    })
                    .sum();
                match self
                    .checkpoint
                    .call(move |db| db.apply(token, &batch))
                    .await
                {
                    Ok(stored) => {
                        self.stats.fetched.fetch_add(stored, Ordering::Relaxed);
                        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => return LeaseEnd::uncounted(format!("checkpoint: {e}")),
                }
            }
            match ended {
                Some(Ok(())) => return outcome,
                Some(Err(status)) if !received_any => {
                    return LeaseEnd::unreachable(format!(
                        "fetcher {} did not answer: {}",
                        fetcher.name(),
                        status.message()
                    ))
                }
                Some(Err(status)) => {
                    return LeaseEnd::counted(format!(
                        "stream from {} broke: {}",
                        fetcher.name(),
                        status.message()
                    ))
                }
                None => {}
            }
        }
    }
}

/// How a lease ended.
struct LeaseEnd {
    outcome: String,
    /// Whether the unfinished items' attempts count: not when the fetcher could not be
    /// reached or was told to stop, which says nothing about the items.
    count_attempt: bool,
    /// The fetcher did not answer at all.
    unreachable: bool,
}

impl LeaseEnd {
    fn counted(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: true,
            unreachable: false,
        }
    }
    fn uncounted(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: false,
            unreachable: false,
        }
    }
    fn unreachable(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
            count_attempt: false,
            unreachable: true,
        }
    }
}

/// Consecutive times every fetcher must have failed to answer before a run gives up.
const GIVE_UP_AFTER: u32 = 8;

/// How a fetcher has been answering: one that does not is rested, doubling each time.
#[derive(Clone, Debug, Default)]
struct Health {
    failures: u32,
    until: Option<tokio::time::Instant>,
    last_error: String,
}

/// What the counts say the run is doing.
pub fn state_of(c: &Counts) -> RunState {
    if c.is_done() {
        RunState::Done
    } else if c.partitions_pending + c.partitions_leased > 0 {
        RunState::Indexing
    } else {
        RunState::Fetching
    }
}
