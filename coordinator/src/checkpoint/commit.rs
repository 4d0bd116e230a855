//! The checkpoint thread and its handle: one connection, jobs sent as closures through a
//! channel, each drained batch one transaction; events of concurrent leases wait up to
//! [`GROUP_COMMIT_WINDOW`] to share a commit, everything else commits at once. A caller
//! hears back only after its transaction is committed.

use std::{
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{
    checkpoint::{CheckpointError, Db, Mode, Opened, RunIdentity},
    plan::Partition,
};

/// Called once the batch a job ran in is committed, with the commit's outcome.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Runs inside the batch's transaction (`None`: the transaction could not begin).
type JobFn = Box<dyn FnOnce(Option<&mut Db>) -> Reply + Send>;

/// Work for the checkpoint thread.
struct Job {
    run: JobFn,
    /// Whether its caller can wait for the group commit (a lease's events), or needs the
    /// commit at once (a lease to start or end, a question about the run).
    can_wait: bool,
}

/// How long a transaction holding only events may stay open for more to join it. Events
/// arrive in small batches from every lease at once; committing them in one transaction
/// instead of one each writes their shared pages to the WAL and syncs it once.
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(4);

/// The most jobs in one transaction.
const MAX_JOBS_PER_COMMIT: usize = 2048;

/// How long each COMMIT took (its fsyncs, mostly): the checkpoint's own latency, shown as
/// `alldocs_checkpoint_commit_duration_seconds`.
pub static COMMIT_SECONDS: std::sync::LazyLock<Histogram> = std::sync::LazyLock::new(|| {
    Histogram::new([
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
});

/// A handle to the checkpoint thread.
#[derive(Clone)]
pub struct Checkpoint {
    tx: mpsc::Sender<Job>,
    path: std::sync::Arc<str>,
}

impl Checkpoint {
    /// Opens or creates the checkpoint at `path`, refuses one made with other settings,
    /// and starts or resumes a run. Nothing is written if the settings do not match.
    pub fn open(
        path: &Path,
        identity: &RunIdentity,
        plan: &[Partition],
        max_attempts: u32,
    ) -> Result<(Self, Opened), CheckpointError> {
        Self::open_for(path, identity, plan, max_attempts, Mode::Full, false)
    }

    /// [`Checkpoint::open`] for a run of `mode`: a `--names` run starts without putting
    /// the snapshot's partitions and failures back to pending (it leaves them as they are).
    /// With `follow`, a finished run that follows the feed carries on (the feed keeps it
    /// current) instead of starting a new one.
    pub fn open_for(
        path: &Path,
        identity: &RunIdentity,
        plan: &[Partition],
        max_attempts: u32,
        mode: Mode,
        follow: bool,
    ) -> Result<(Self, Opened), CheckpointError> {
        let shown = path.display().to_string();
        let open_err = |source| CheckpointError::Open {
            path: shown.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(open_err(rusqlite::Error::InvalidPath(parent.to_path_buf())));
            }
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // Every commit reaches the disk before its callers hear of it: a `stored` row
        // survives a power loss (its object was made durable before the event was sent).
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Statement journals (every batch's savepoint has one) and sorts stay in memory:
        // on disk they were temporary files created, grown and deleted all run long.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Room for every statement the checkpoint thread prepares once and reuses.
        conn.set_prepared_statement_cache_capacity(64);
        crate::checkpoint::schema::check_version(&conn, &shown)?;
        let mut db = Db {
            conn,
            run: 0,
            max_attempts: max_attempts.max(1),
            cached: None,
            commits: 0,
            packs: Vec::new(),
            in_flight: Default::default(),
        };
        let opened = db.start(&shown, identity, plan, mode, follow)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || db.serve(rx))
            .expect("spawning the checkpoint thread");
        Ok((
            Self {
                tx,
                path: shown.into(),
            },
            opened,
        ))
    }

    /// Runs `f` on the checkpoint thread inside the current batch's transaction (in its own
    /// savepoint) and returns its result once the batch is committed. An error of `f`, or
    /// a batch that could not be committed, is an error here: nothing is reported done
    /// that the checkpoint does not hold.
    pub async fn call<T, F>(&self, f: F) -> Result<T, CheckpointError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(f, false).await
    }

    /// [`Checkpoint::call`] for work whose caller can wait a few milliseconds for its
    /// commit (a lease's events): it joins a group commit with the events of other leases
    /// arriving meanwhile. It is as durable when this returns.
    pub async fn call_grouped<T, F>(&self, f: F) -> Result<T, CheckpointError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<T, F>(&self, f: F, can_wait: bool) -> Result<T, CheckpointError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let run = Box::new(move |db: Option<&mut Db>| -> Reply {
            let result = db.map(|db| db.in_savepoint(f));
            Box::new(move |committed: Result<(), String>| {
                let outcome = match (result, committed) {
                    (Some(Ok(value)), Ok(())) => Ok(value),
                    (Some(Err(e)), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e),
                    (None, Ok(())) => Err("the transaction did not begin".to_string()),
                };
                let _ = reply_tx.send(outcome);
            })
        });
        self.tx
            .send(Job { run, can_wait })
            .map_err(|_| CheckpointError::Closed)?;
        reply_rx
            .await
            .map_err(|_| CheckpointError::Closed)?
            .map_err(|reason| CheckpointError::Write {
                path: self.path.to_string(),
                reason,
            })
    }
}

impl Db {
    fn serve(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            for (reply, outcome) in self.run_batch(first, &rx) {
                reply(outcome);
            }
        }
    }

    /// Runs `first` and the jobs that join it in one transaction (a group commit): those
    /// already waiting, and, while every job so far can wait, those arriving within
    /// [`GROUP_COMMIT_WINDOW`]. Pairs each reply with the commit's outcome.
    fn run_batch(
        &mut self,
        first: Job,
        rx: &mpsc::Receiver<Job>,
    ) -> Vec<(Reply, Result<(), String>)> {
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "checkpoint: cannot begin a transaction");
            let reason = format!("cannot begin a transaction: {e}");
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter().take(MAX_JOBS_PER_COMMIT - 1));
            return jobs
                .into_iter()
                .map(|job| ((job.run)(None), Err(reason.clone())))
                .collect();
        }
        let began = Instant::now();
        let mut urgent = !first.can_wait;
        let mut replies: Vec<Reply> = vec![(first.run)(Some(self))];
        while replies.len() < MAX_JOBS_PER_COMMIT {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(_) if urgent => None,
                Err(_) => GROUP_COMMIT_WINDOW
                    .checked_sub(began.elapsed())
                    .and_then(|left| rx.recv_timeout(left).ok()),
            };
            let Some(job) = next else { break };
            urgent |= !job.can_wait;
            replies.push((job.run)(Some(self)));
        }
        let committing = Instant::now();
        let committed = self.conn.execute_batch("COMMIT");
        COMMIT_SECONDS.observe(committing.elapsed().as_secs_f64());
        let outcome = committed.map_err(|e| {
            tracing::error!(error = %e, "checkpoint: commit failed");
            let _ = self.conn.execute_batch("ROLLBACK");
            // What the batch changed is gone; so is anything counted from it.
            self.cached = None;
            self.packs.clear();
            format!("commit failed: {e}")
        });
        self.commits += u64::from(outcome.is_ok());
        replies.into_iter().map(|r| (r, outcome.clone())).collect()
    }

    fn in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Db) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // Cached: every call (every batch of events) runs these two.
        self.conn.prepare_cached("SAVEPOINT job")?.execute([])?;
        let result = f(self);
        match &result {
            Ok(_) => {
                self.conn.prepare_cached("RELEASE job")?.execute([])?;
            }
            Err(_) => {
                self.packs.clear();
                self.conn.execute_batch("ROLLBACK TO job; RELEASE job")?
            }
        }
        result
    }

    /// Transactions the checkpoint thread has committed so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }
}
