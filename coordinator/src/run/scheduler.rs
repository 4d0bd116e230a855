//! The lease loop: hands partitions and packument batches to fetchers, follows each lease
//! to its end, and gives back whatever a lease did not finish.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use alldocs_proto::v1::RunState;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    checkpoint::{Checkpoint, CheckpointError, Counts, Db, Mode, Work},
    fleet::budget::{Budget, Slot},
    fleet::fetchers::FetcherHandle,
    fleet::health::FetcherPool,
    fleet::lease::Settings,
    fleet::rates::Stats,
    fleet::refusal::{LeaseEnd, Verdict},
    fleet::stream::Follower,
};

/// The leases in flight: each ends in an error only if the checkpoint failed or a
/// fetcher refused the coordinator itself.
type Leases = JoinSet<anyhow::Result<()>>;

/// Work just leased: its fencing token, what it is, and when it is due.
#[derive(Clone, Debug)]
pub struct Picked {
    pub token: i64,
    pub work: Work,
    pub deadline_ms: i64,
}

/// The run: owns the lease loop.
pub struct Scheduler {
    pub checkpoint: Checkpoint,
    pub fetchers: Arc<FetcherPool>,
    pub settings: Settings,
    pub stats: Arc<Stats>,
    pub state: watch::Sender<RunState>,
    /// Grid slots and the current rate, shared by every lease.
    pub budget: Arc<Budget>,
    /// Index leases in flight (they take at most half the slots).
    index_running: AtomicUsize,
    /// The whole snapshot, the index alone (no packument leased), or the wanted names
    /// alone (no partition leased).
    mode: Mode,
}

impl Scheduler {
    pub fn new(
        checkpoint: Checkpoint,
        fetchers: Vec<FetcherHandle>,
        settings: Settings,
        stats: Arc<Stats>,
        state: watch::Sender<RunState>,
    ) -> Self {
        let base_rest = Duration::from_millis(u64::from(settings.retry_base_ms));
        let budget = stats
            .budget
            .get_or_init(|| {
                Arc::new(Budget::new(
                    settings.rate_limit,
                    settings.max_in_flight,
                    settings.rate_recovery,
                ))
            })
            .clone();
        Self {
            budget,
            checkpoint,
            fetchers: Arc::new(FetcherPool::new(fetchers, base_rest)),
            settings,
            stats,
            state,
            index_running: AtomicUsize::new(0),
            mode: Mode::Full,
        }
    }

    /// What the run does (`--index-only`, `--names`).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Leases until nothing is pending or leased, marks the run complete, and returns the
    /// final counts. Fails if the checkpoint fails or no fetcher answers for long.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<Counts> {
        self.stats.start();
        let mut tasks: Leases = JoinSet::new();
        let result = self.clone().lease_until_done(&mut tasks).await;
        if let Err(e) = &result {
            // The run stops: the leases still in flight end here, and their work goes back
            // (no attempt counted) so the checkpoint shows nothing leased.
            tasks.shutdown().await;
            let outcome = format!("the run stopped: {e:#}");
            if let Err(e) = self
                .checkpoint
                .call(move |db| db.release_open_leases(&outcome))
                .await
            {
                tracing::warn!(error = %e, "could not give back the leases in flight; the next start does");
            }
        }
        result
    }

    /// The lease loop of [`Scheduler::run`].
    async fn lease_until_done(self: Arc<Self>, tasks: &mut Leases) -> anyhow::Result<Counts> {
        let mut cursor = 0usize;
        loop {
            self.fill(tasks, &mut cursor).await?;
            let open = self.publish_state().await?;
            if tasks.is_empty() && !open {
                let counts = self
                    .checkpoint
                    .call(|db| {
                        db.set_run_complete(true)?;
                        db.counts_now()
                    })
                    .await?;
                return Ok(counts);
            }
            if tasks.is_empty() {
                self.fetchers.check_reachable()?;
            }
            self.wait(tasks).await?;
        }
    }

    /// Starts leases until every slot is taken, no fetcher is free, or nothing is leasable.
    async fn fill(self: &Arc<Self>, tasks: &mut Leases, cursor: &mut usize) -> anyhow::Result<()> {
        while tasks.len() < self.settings.max_in_flight {
            let Some(f) = self.fetchers.next(cursor) else {
                return Ok(());
            };
            let fetcher = self.fetchers.get(f).clone();
            // Every lease in flight holds a slot, so one is free while a slot is.
            let Some(slot) = self.budget.take_slot() else {
                return Ok(());
            };
            let Some(picked) = self.pick(fetcher.name()).await? else {
                return Ok(());
            };
            let is_index = matches!(picked.work, Work::Index(_));
            if is_index {
                self.index_running.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            tasks.spawn(async move {
                let ended = this.run_lease(&fetcher, picked, &slot).await;
                drop(slot);
                if is_index {
                    this.index_running.fetch_sub(1, Ordering::Relaxed);
                }
                this.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let end = ended?;
                match end.verdict {
                    Verdict::Stop => anyhow::bail!("{}", end.outcome),
                    Verdict::Unreachable { retry_after } => {
                        this.fetchers.record(f, Some((end.outcome, retry_after)))
                    }
                    Verdict::Answered => this.fetchers.record(f, None),
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Tells watchers what the run is doing; returns whether any work is pending or leased.
    async fn publish_state(&self) -> Result<bool, CheckpointError> {
        let mode = self.mode;
        // Two cheap questions, not the counts (a pass over every package).
        let (open, indexing) = self
            .checkpoint
            .call(move |db| Ok((db.has_open_work(mode)?, db.indexing()?)))
            .await?;
        let state = match (open, indexing) {
            (false, _) => RunState::Done,
            // A list of names is fetched without an index pass.
            (true, _) if mode == Mode::Names => RunState::Fetching,
            (true, true) => RunState::Indexing,
            (true, false) => RunState::Fetching,
        };
        // Watchers wake on a change of state, not on every look.
        self.state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
        Ok(open)
    }

    /// Waits for a lease to end, for a resting fetcher to be askable again, or (open work
    /// but nothing leasable and nothing in flight, which cannot last) a moment. A lease
    /// whose events the checkpoint could not commit, or whose fetcher refused the
    /// coordinator, stops the run (the other leases end and their work goes back).
    async fn wait(&self, tasks: &mut Leases) -> anyhow::Result<()> {
        let resting = self.fetchers.all_resting_until();
        tokio::select! {
            joined = tasks.join_next(), if !tasks.is_empty() => match joined {
                Some(Ok(result)) => return result,
                Some(Err(e)) => tracing::error!(error = %e, "a lease task panicked"),
                None => {}
            },
            _ = tokio::time::sleep_until(resting.unwrap_or_else(tokio::time::Instant::now)), if resting.is_some() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)), if tasks.is_empty() && resting.is_none() => {}
        }
        Ok(())
    }

    /// Picks the next work: index partitions first while fewer than half the slots index
    /// (so packuments of finished partitions flow meanwhile), then packument batches.
    async fn pick(&self, fetcher: &str) -> Result<Option<Picked>, CheckpointError> {
        let lease_size = self.settings.lease_size;
        let index_first =
            self.index_running.load(Ordering::Relaxed) < (self.settings.max_in_flight / 2).max(1);
        let (fetcher, mode) = (fetcher.to_string(), self.mode);
        let deadline_ms =
            alldocs_proto::now_unix_ms() + self.settings.lease_duration.as_millis() as i64;
        self.checkpoint
            .call(move |db| {
                let token = db.next_token()?;
                let work = if mode == Mode::Names {
                    let items = db.lease_wanted(token, lease_size)?;
                    (!items.is_empty()).then_some(Work::Packuments(items))
                } else {
                    pick_full(db, token, lease_size, index_first, mode)?
                };
                let Some(work) = work else { return Ok(None) };
                db.record_lease(token, &work, &fetcher, deadline_ms)?;
                Ok(Some(Picked {
                    token,
                    work,
                    deadline_ms,
                }))
            })
            .await
    }

    /// Runs one lease to its end, gives back whatever it did not finish, and returns how
    /// it ended.
    async fn run_lease(
        &self,
        fetcher: &FetcherHandle,
        picked: Picked,
        slot: &Slot,
    ) -> Result<LeaseEnd, CheckpointError> {
        let token = picked.token;
        let (began, index) = (
            std::time::Instant::now(),
            matches!(picked.work, Work::Index(_)),
        );
        let pace = self.budget.pace(slot);
        let lease = self
            .settings
            .lease(token, &picked.work, picked.deadline_ms, pace);
        // Past the deadline the fetcher stops by itself; give it a little longer to say so.
        let give_up =
            tokio::time::Instant::now() + self.settings.lease_duration + self.settings.answer_grace;
        let follower = Follower {
            checkpoint: &self.checkpoint,
            stats: &self.stats,
            budget: &self.budget,
            token,
        };
        let end = match tokio::time::timeout_at(give_up, follower.follow(fetcher, lease)).await {
            Ok(end) => end?,
            Err(_) => LeaseEnd::counted("lease deadline passed without an answer from the fetcher"),
        };
        crate::fleet::metrics::FLEET.lease_ended(index, began.elapsed().as_secs_f64());
        let (outcome, count) = (end.outcome.clone(), end.count_attempt);
        let returned = self
            .checkpoint
            .call(move |db| db.end_lease(token, &outcome, count))
            .await?;
        if returned == 0 {
            tracing::debug!(token, fetcher = fetcher.name(), outcome = %end.outcome, "lease ended");
        } else {
            tracing::warn!(
                token, fetcher = fetcher.name(), outcome = %end.outcome, returned,
                attempt_counted = end.count_attempt,
                "lease ended early; its unfinished work goes back to pending"
            );
        }
        Ok(end)
    }
}

/// Index partitions first while `index_first`, then packument batches (none with
/// `--index-only`), then any partition.
fn pick_full(
    db: &mut Db,
    token: i64,
    lease_size: usize,
    index_first: bool,
    mode: Mode,
) -> rusqlite::Result<Option<Work>> {
    if index_first || mode == Mode::IndexOnly {
        if let Some(p) = db.lease_partition(token)? {
            return Ok(Some(Work::Index(p)));
        }
    }
    if mode != Mode::IndexOnly {
        let items = db.lease_packuments(token, lease_size)?;
        if !items.is_empty() {
            return Ok(Some(Work::Packuments(items)));
        }
    }
    Ok(db.lease_partition(token)?.map(Work::Index))
}
