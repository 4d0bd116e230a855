//! The SQLite checkpoint: the only state that must survive. One connection on one thread;
//! work arrives as closures through a channel and each drained batch is one transaction.

use std::{
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use alldocs_proto::v1::{
    fetch_event::Event, Failure, IndexDone, IndexRows, PackumentStored, Partition as PartitionInfo,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use alldocs_fetcher::http::redact;

use crate::plan::Partition;

/// Why the checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot open the checkpoint {path}: {source}; check the path and its permissions, or choose another --db")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the checkpoint {path} was made with {key} `{recorded}`, but this run has `{given}`.\nUse the same options to carry on with it, or pass a new --db for a new snapshot.")]
    ConfigMismatch {
        path: String,
        key: String,
        recorded: String,
        given: String,
    },
    #[error("the checkpoint {path} was written by a newer alldocs (schema version {found}; this coordinator understands up to {supported}). Use that coordinator (or a newer one) with it, or pass another --db")]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("the checkpoint {path} could not be updated: {reason}. Everything committed before is intact: fix the cause (a full disk, a read-only file) and run the same command again to carry on")]
    Write { path: String, reason: String },
    #[error("checkpoint: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the checkpoint thread has stopped")]
    Closed,
}

/// The settings a checkpoint belongs to: a run with other values would mix snapshots.
#[derive(Clone, Debug)]
pub struct RunIdentity {
    pub replicate_origin: String,
    pub registry: String,
    pub store: String,
    pub pivots: Vec<String>,
    pub accept: String,
}

impl RunIdentity {
    /// What the checkpoint records and compares: URLs without their credentials.
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--replicate-origin", redact(&self.replicate_origin)),
            ("--registry", redact(&self.registry)),
            ("--store", redact(&self.store)),
            ("--pivots", self.pivots.join(",")),
            ("--accept", self.accept.clone()),
        ]
    }
}

/// Counts behind `Progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub partitions_total: u64,
    pub partitions_done: u64,
    pub partitions_failed: u64,
    pub partitions_pending: u64,
    pub partitions_leased: u64,
    pub rows_indexed: u64,
    pub packuments_total: u64,
    pub packuments_done: u64,
    pub packuments_missing: u64,
    pub packuments_failed: u64,
    pub packuments_pending: u64,
    pub packuments_leased: u64,
    pub bytes_stored: u64,
    pub packuments_rev_mismatch: u64,
    /// Packuments fetched (stored or found missing) in this run, by any process.
    pub fetched_this_run: u64,
    /// Packuments the feed said were deleted (not in `packuments_total`).
    pub packuments_deleted: u64,
}

impl Counts {
    /// Nothing pending or leased, and no pending packument that could still be leased.
    pub fn is_done(&self) -> bool {
        self.partitions_pending == 0
            && self.partitions_leased == 0
            && self.packuments_pending == 0
            && self.packuments_leased == 0
    }
}

/// Where a page of failures starts: after this kind (0 partition, 1 packument) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCursor {
    pub kind: i64,
    pub name: String,
}

impl FailureCursor {
    /// The opaque `page_token` of the API.
    pub fn token(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (kind, name) = token.split_once(':')?;
        let kind = kind.parse().ok().filter(|k| matches!(k, 0 | 1))?;
        Some(Self {
            kind,
            name: name.to_string(),
        })
    }
}

/// One page of failures.
#[derive(Clone, Debug)]
pub struct FailurePage {
    pub failures: Vec<Failure>,
    pub total: u64,
    /// Where the next page starts, if there is one.
    pub next: Option<FailureCursor>,
}

impl FailurePage {
    /// From up to `limit + 1` rows: the extra one only says that another page follows.
    fn new(mut failures: Vec<Failure>, limit: usize, total: u64) -> Self {
        let more = failures.len() > limit;
        failures.truncate(limit);
        let next = failures.last().filter(|_| more).map(|f| FailureCursor {
            kind: i64::from(f.kind == "packument"),
            name: f.name.clone(),
        });
        Self {
            failures,
            total,
            next,
        }
    }
}

/// How opening went.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub run: i64,
    pub resumed: bool,
}

/// What a run does: the whole snapshot, the index alone, or a list of names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Full,
    IndexOnly,
    Names,
}

/// What the coordinator tells a fetcher to do.
#[derive(Clone, Debug)]
pub enum Work {
    Index(Partition),
    Packuments(Vec<(String, String)>),
}

/// The database and the run it serves; lives on the checkpoint thread.
pub struct Db {
    pub(crate) conn: Connection,
    pub(crate) run: i64,
    max_attempts: u32,
    pub(crate) cached: Option<(Instant, Duration, Counts)>,
    /// Transactions committed by the checkpoint thread (each one WAL sync).
    commits: u64,
}

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
        crate::schema::check_version(&conn, &shown)?;
        let mut db = Db {
            conn,
            run: 0,
            max_attempts: max_attempts.max(1),
            cached: None,
            commits: 0,
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
        let outcome = self.conn.execute_batch("COMMIT").map_err(|e| {
            tracing::error!(error = %e, "checkpoint: commit failed");
            let _ = self.conn.execute_batch("ROLLBACK");
            // What the batch changed is gone; so is anything counted from it.
            self.cached = None;
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
            Err(_) => self.conn.execute_batch("ROLLBACK TO job; RELEASE job")?,
        }
        result
    }

    /// Transactions the checkpoint thread has committed so far.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    pub(crate) fn meta(&self, key: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()
    }

    pub(crate) fn set_meta(&self, key: &str, value: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Refuses a checkpoint made with other settings (before writing anything).
    fn check_identity(&self, path: &str, identity: &RunIdentity) -> Result<(), CheckpointError> {
        if !crate::schema::has_tables(&self.conn)? {
            return Ok(());
        }
        for (key, given) in identity.entries() {
            // URLs are recorded without credentials (older checkpoints may hold them:
            // compare and show them redacted too).
            let Some(recorded) = self.meta(key)?.map(|r| redact(&r)) else {
                continue;
            };
            if recorded != given {
                return Err(CheckpointError::ConfigMismatch {
                    path: path.to_string(),
                    key: key.to_string(),
                    recorded,
                    given,
                });
            }
        }
        Ok(())
    }

    fn start(
        &mut self,
        path: &str,
        identity: &RunIdentity,
        plan: &[Partition],
        mode: Mode,
        follow: bool,
    ) -> Result<Opened, CheckpointError> {
        self.check_identity(path, identity)?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| -> rusqlite::Result<Opened> {
            crate::schema::create_or_migrate(&self.conn)?;
            for (key, given) in identity.entries() {
                self.set_meta(key, &given)?;
            }
            {
                let mut insert = self.conn.prepare(
                    "INSERT OR IGNORE INTO partitions (name, ord, start_key, end_key) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (ord, p) in plan.iter().enumerate() {
                    insert.execute(params![p.name, ord as i64, p.start, p.end])?;
                }
            }
            let opened = self.begin_or_resume_run(mode, follow)?;
            self.conn.execute(
                "UPDATE leases SET ended_ms = ?1, outcome = 'abandoned: coordinator restarted' WHERE ended_ms IS NULL",
                [alldocs_proto::now_unix_ms()],
            )?;
            Ok(opened)
        })();
        match result {
            Ok(opened) => {
                self.conn.execute_batch("COMMIT")?;
                self.run = opened.run;
                Ok(opened)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// A new run after a finished one (or the first), or carrying on with an unfinished one
    /// (or, with `follow`, with one the feed keeps current).
    fn begin_or_resume_run(&self, mode: Mode, follow: bool) -> rusqlite::Result<Opened> {
        let run: i64 = self.meta("run")?.and_then(|r| r.parse().ok()).unwrap_or(0);
        let complete = self.meta("run_complete")?.as_deref() == Some("1");
        let following = follow && self.meta(crate::follow::SEQ_KEY)?.is_some();
        Ok(if run == 0 || (complete && !following) {
            Opened {
                run: self.begin_run(run + 1, mode)?,
                resumed: false,
            }
        } else {
            // Carrying on after a stop or a crash: leases in flight then are void.
            self.unlease_all()?;
            Opened { run, resumed: true }
        })
    }

    /// Starts run `run`: it re-indexes everything (but with `--names`); packuments are
    /// fetched again only if their revision changed, or they failed.
    pub(crate) fn begin_run(&self, run: i64, mode: Mode) -> rusqlite::Result<i64> {
        let reset = if mode == Mode::Names {
            // A list of names: the snapshot's partitions and failures stay as they are.
            ""
        } else {
            "UPDATE partitions SET status = 'pending', rows = 0, uri = NULL, attempts = 0,
                 last_error = NULL, lease_token = NULL;
             UPDATE packages SET status = 'pending', attempts = 0, last_error = NULL, lease_token = NULL
                 WHERE status = 'failed';
             UPDATE packages SET status = 'pending', attempts = 0, last_error = NULL, lease_token = NULL
                 WHERE status = 'leased';"
        };
        self.conn.execute_batch(reset)?;
        self.set_meta("run", &run.to_string())?;
        self.set_meta("run_complete", "0")?;
        Ok(run)
    }

    /// The fencing token for a new lease: strictly increasing for the checkpoint's life.
    pub fn next_token(&self) -> rusqlite::Result<i64> {
        let token: i64 = self
            .meta("lease_token")?
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
            + 1;
        self.set_meta("lease_token", &token.to_string())?;
        Ok(token)
    }

    /// Leases the first pending partition, if any.
    pub fn lease_partition(&mut self, token: i64) -> rusqlite::Result<Option<Partition>> {
        let part = self
            .conn
            .prepare_cached(
                "SELECT name, start_key, end_key FROM partitions WHERE status = 'pending' ORDER BY ord LIMIT 1",
            )?
            .query_row([], |r| {
                    Ok(Partition {
                        name: r.get(0)?,
                        start: r.get(1)?,
                        end: r.get(2)?,
                    })
            })
            .optional()?;
        if let Some(p) = &part {
            self.conn
                .prepare_cached(
                    "UPDATE partitions SET status = 'leased', lease_token = ?1 WHERE name = ?2",
                )?
                .execute(params![token, p.name])?;
        }
        Ok(part)
    }

    /// Leases up to `max` pending packuments of partitions whose index is finished, in one
    /// statement.
    pub fn lease_packuments(
        &mut self,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(LEASE_PACKUMENTS)?;
        let rows = stmt.query_map(params![token, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Hands `items` to the lease `token`.
    fn mark_leased(&self, token: i64, items: &[(String, String)]) -> rusqlite::Result<()> {
        let mut update = self.conn.prepare_cached(
            "UPDATE packages SET status = 'leased', lease_token = ?1 WHERE name = ?2",
        )?;
        for (name, _) in items {
            update.execute(params![token, name])?;
        }
        Ok(())
    }

    /// Records a lease being handed out.
    pub fn record_lease(
        &self,
        token: i64,
        work: &Work,
        fetcher: &str,
        deadline_ms: i64,
    ) -> rusqlite::Result<()> {
        let (kind, items) = match work {
            Work::Index(_) => ("index", 1),
            Work::Packuments(items) => ("packuments", items.len()),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO leases (token, kind, items, fetcher, started_ms, deadline_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![token, kind, items as i64, fetcher, alldocs_proto::now_unix_ms(), deadline_ms])?;
        Ok(())
    }

    /// Applies a lease's events; those of a superseded lease (another token now holds the
    /// item) change nothing. Returns how many packuments this batch stored.
    pub fn apply(&mut self, token: i64, events: &[Event]) -> rusqlite::Result<u64> {
        let mut stored = 0;
        for event in events {
            match event {
                Event::IndexRows(rows) => self.apply_rows(token, rows)?,
                Event::IndexDone(done) => self.apply_done(token, done)?,
                Event::Stored(s) => stored += self.apply_stored(token, s)?,
                Event::Missing(m) => {
                    // Prepared once per connection: one statement per event is hot.
                    self.conn
                        .prepare_cached(
                            // No revision is stored: a name that 404s briefly (or for good)
                            // is asked for again by the next run, not frozen as missing.
                            "UPDATE packages SET status = 'missing', stored_rev = NULL, uri = NULL, bytes = 0,
                                 last_error = ?1, lease_token = NULL, fetched_run = ?4
                             WHERE name = ?2 AND lease_token = ?3 AND status = 'leased'",
                        )?
                        .execute(params![
                            format!("HTTP {}", m.http_status),
                            m.name,
                            token,
                            self.run
                        ])?;
                }
                Event::Failed(f) => {
                    // A failure that retrying cannot help fails at once.
                    let limit = if f.retryable {
                        self.max_attempts as i64
                    } else {
                        0
                    };
                    let (table, name) = match f.name.as_str() {
                        "" => ("partitions", None),
                        name => ("packages", Some(name)),
                    };
                    self.give_back(table, token, name, &f.reason, 1, limit)?;
                }
                Event::Summary(_) | Event::Throttled(_) => {}
            }
        }
        Ok(stored)
    }

    fn apply_rows(&mut self, token: i64, rows: &IndexRows) -> rusqlite::Result<()> {
        if !self.holds_partition(token, &rows.partition)? {
            return Ok(());
        }
        if let Some(reason) = oversized_row(rows) {
            // A fetcher must never send such a row: fail this attempt of the partition
            // (tried again up to the limit) and keep none of it.
            let limit = self.max_attempts as i64;
            let part = Some(rows.partition.as_str());
            self.give_back("partitions", token, part, &reason, 1, limit)?;
            return Ok(());
        }
        for row in &rows.rows {
            self.upsert_package(&rows.partition, &row.id, &row.rev)?;
        }
        Ok(())
    }

    fn apply_done(&mut self, token: i64, done: &IndexDone) -> rusqlite::Result<()> {
        if !self.holds_partition(token, &done.partition)? {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "UPDATE partitions SET status = 'done', rows = ?1, uri = ?2, last_error = NULL, lease_token = NULL
                 WHERE name = ?3",
            )?
            .execute(params![done.rows as i64, done.uri, done.partition])?;
        // Names that were in this partition before but not in this run's index have left
        // the registry.
        self.conn
            .prepare_cached(
                "UPDATE packages SET status = 'removed', lease_token = NULL
                 WHERE partition = ?1 AND seen_run < ?2 AND status != 'removed'",
            )?
            .execute(params![done.partition, self.run])?;
        Ok(())
    }

    /// Returns 1 if the event stored the package (its lease holds it), else 0.
    fn apply_stored(&mut self, token: i64, s: &PackumentStored) -> rusqlite::Result<u64> {
        use alldocs_fetcher::all_docs::MAX_REV_BYTES;
        if s.rev.len() > MAX_REV_BYTES || s.doc_rev.len() > MAX_REV_BYTES {
            // No fetcher may send such a revision: the checkpoint never stores one.
            let reason = format!(
                "protocol error: the fetcher reported a revision of {} bytes, over {MAX_REV_BYTES}",
                s.rev.len().max(s.doc_rev.len())
            );
            let limit = self.max_attempts as i64;
            self.give_back("packages", token, Some(&s.name), &reason, 1, limit)?;
            return Ok(0);
        }
        // The revision stored is the document's own `_rev` (a registry lagging the index
        // serves an older one: the next run fetches it again), or the one asked for if the
        // document has none.
        let n = self
            .conn
            .prepare_cached(
                "UPDATE packages SET status = 'stored', stored_rev = COALESCE(NULLIF(?2, ''), ?1),
                 doc_rev = ?2, uri = ?3, bytes = ?4, last_error = NULL, lease_token = NULL,
                 fetched_run = ?7
             WHERE name = ?5 AND lease_token = ?6 AND status = 'leased'",
            )?
            .execute(params![
                s.rev,
                s.doc_rev,
                s.uri,
                s.bytes as i64,
                s.name,
                token,
                self.run
            ])?;
        Ok(n as u64)
    }

    fn holds_partition(&self, token: i64, partition: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM partitions WHERE name = ?1 AND lease_token = ?2 AND status = 'leased'",
            )?
            .exists(params![partition, token])
    }

    /// Gives back what `token` holds in `table` (only `name`, if given): the attempt
    /// counted `add` times, then failed with `reason` once attempts reach `limit`, else
    /// pending again. Returns how many rows went back.
    fn give_back(
        &self,
        table: &str,
        token: i64,
        name: Option<&str>,
        reason: &str,
        add: i64,
        limit: i64,
    ) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(&give_back_sql(table, name.is_some()))?
            .execute(params![add, reason, limit, token, name])
    }

    fn upsert_package(&self, partition: &str, name: &str, rev: &str) -> rusqlite::Result<()> {
        let existing: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT status, stored_rev FROM packages WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match existing {
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO packages (name, partition, indexed_rev, status, seen_run) VALUES (?1, ?2, ?3, 'pending', ?4)",
                    )?
                    .execute(params![name, partition, rev, self.run])?;
            }
            Some((status, stored_rev)) => {
                let unchanged = stored_rev.as_deref() == Some(rev);
                let status = match status.as_str() {
                    "stored" | "missing" if unchanged => status,
                    "leased" | "failed" | "pending" => status,
                    _ => "pending".to_string(),
                };
                self.conn
                    .prepare_cached(
                        "UPDATE packages SET partition = ?1, indexed_rev = ?2, status = ?3, seen_run = ?4 WHERE name = ?5",
                    )?
                    .execute(params![partition, rev, status, self.run, name])?;
            }
        }
        Ok(())
    }

    /// Ends a lease: whatever it still holds returns to pending, with the attempt counted
    /// if `count_attempt` (then failing past the limit). Returns how many items went back.
    pub fn end_lease(
        &mut self,
        token: i64,
        outcome: &str,
        count_attempt: bool,
    ) -> rusqlite::Result<u64> {
        let limit = self.max_attempts as i64;
        let add = i64::from(count_attempt);
        let mut returned = 0;
        for table in ["partitions", "packages"] {
            returned += self.give_back(table, token, None, outcome, add, limit)?;
        }
        self.conn
            .prepare_cached("UPDATE leases SET ended_ms = ?1, outcome = ?2 WHERE token = ?3")?
            .execute(params![alldocs_proto::now_unix_ms(), outcome, token])?;
        Ok(returned as u64)
    }

    /// Everything leased goes back to pending, as it was (no attempt counted).
    fn unlease_all(&self) -> rusqlite::Result<()> {
        self.conn.execute_batch(
            "UPDATE partitions SET status = 'pending', lease_token = NULL WHERE status = 'leased'",
        )?;
        self.conn.execute_batch(UNLEASE_PACKAGES)
    }

    /// Gives back the work of every lease still open, with no attempt counted, and ends
    /// those leases with `outcome`: for a run that stops while leases are in flight.
    pub fn release_open_leases(&mut self, outcome: &str) -> rusqlite::Result<()> {
        self.unlease_all()?;
        self.conn.execute(
            "UPDATE leases SET ended_ms = ?1, outcome = ?2 WHERE ended_ms IS NULL",
            params![alldocs_proto::now_unix_ms(), outcome],
        )?;
        self.cached = None;
        Ok(())
    }

    /// Whether a partition is still to be indexed or being indexed (exact, and cheap).
    pub fn indexing(&self) -> rusqlite::Result<bool> {
        self.has_open_work(Mode::IndexOnly)
    }

    /// Whether anything is pending or leased (exact, and cheap on a large checkpoint).
    /// Only the partitions count with `--index-only` (packuments are not fetched), only
    /// the wanted names with `--names` (partitions are not indexed).
    pub fn has_open_work(&self, mode: Mode) -> rusqlite::Result<bool> {
        let sql = match mode {
            Mode::Full => OPEN_WORK,
            Mode::IndexOnly => {
                "SELECT EXISTS (SELECT 1 FROM partitions WHERE status IN ('pending', 'leased'))"
            }
            Mode::Names => {
                "SELECT EXISTS (SELECT 1 FROM wanted w JOIN packages p ON p.name = w.name
                                WHERE p.status IN ('pending', 'leased'))"
            }
        };
        self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))
    }

    /// Makes `names` the run's wanted list: each goes (back) to pending in the partition its
    /// key falls in, a new one with no indexed revision yet. Nothing else changes.
    pub fn want(&mut self, names: &[String], plan: &[Partition]) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM wanted", [])?;
        for name in names {
            let partition = crate::plan::partition_of(plan, name);
            self.conn
                .execute("INSERT INTO wanted (name) VALUES (?1)", [name])?;
            self.conn.execute(
                "INSERT INTO packages (name, partition, indexed_rev, status, seen_run)
                     VALUES (?1, ?2, '', 'pending', 0)
                 ON CONFLICT(name) DO UPDATE SET status = 'pending', attempts = 0,
                     last_error = NULL, lease_token = NULL",
                params![name, partition],
            )?;
        }
        self.cached = None;
        Ok(())
    }

    /// Leases up to `max` pending names of the wanted list.
    pub fn lease_wanted(
        &mut self,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        let items: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT p.name, p.indexed_rev FROM wanted w JOIN packages p ON p.name = w.name
                 WHERE p.status = 'pending' ORDER BY p.name LIMIT ?1",
            )?
            .query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.mark_leased(token, &items)?;
        Ok(items)
    }

    /// How the wanted names ended: (listed, stored, missing, failed).
    pub fn wanted_counts(&self) -> rusqlite::Result<(u64, u64, u64, u64)> {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(p.status = 'stored'), 0),
                    COALESCE(SUM(p.status = 'missing'), 0), COALESCE(SUM(p.status = 'failed'), 0)
             FROM wanted w JOIN packages p ON p.name = w.name",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            },
        )
    }

    /// Marks the run finished (so the next start is a new, incremental run) or not.
    pub fn set_run_complete(&self, complete: bool) -> rusqlite::Result<()> {
        self.set_meta("run_complete", if complete { "1" } else { "0" })
    }

    /// Counts at most a second old (older on a huge checkpoint, where counting costs more:
    /// never more than a tenth of the checkpoint thread's time). Exact once the run is
    /// done, since the scheduler counts afresh then.
    pub fn counts(&mut self) -> rusqlite::Result<Counts> {
        if let Some((at, cost, counts)) = self.cached {
            if at.elapsed() < cost.saturating_mul(10).max(Duration::from_secs(1)) {
                return Ok(counts);
            }
        }
        self.counts_now()
    }

    /// Exact counts, computed now.
    pub fn counts_now(&mut self) -> rusqlite::Result<Counts> {
        let started = Instant::now();
        let mut c = Counts::default();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT status, COUNT(*) FROM partitions GROUP BY status")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (status, n): (String, i64) = (r.get(0)?, r.get(1)?);
                let n = n as u64;
                c.partitions_total += n;
                match status.as_str() {
                    "done" => c.partitions_done = n,
                    "failed" => c.partitions_failed = n,
                    "leased" => c.partitions_leased = n,
                    _ => c.partitions_pending += n,
                }
            }
        }
        {
            let mut stmt = self.conn.prepare_cached(COUNT_PACKAGES)?;
            let v: [i64; 10] = stmt.query_row([self.run], |r| {
                let mut v = [0; 10];
                for (i, x) in v.iter_mut().enumerate() {
                    *x = r.get(i)?;
                }
                Ok(v)
            })?;
            let [seen, fetched, deleted, stored, bytes, mismatch, missing, failed, leased, pending] =
                v.map(|n| n as u64);
            c.rows_indexed = seen;
            c.fetched_this_run = fetched;
            c.packuments_deleted = deleted;
            c.packuments_done = stored;
            c.bytes_stored = bytes;
            c.packuments_rev_mismatch = mismatch;
            c.packuments_missing = missing;
            c.packuments_failed = failed;
            c.packuments_leased = leased;
            c.packuments_pending = pending;
            c.packuments_total = stored + missing + failed + leased + pending;
        }
        self.cached = Some((Instant::now(), started.elapsed(), c));
        Ok(c)
    }

    pub fn list_partitions(&self) -> rusqlite::Result<Vec<PartitionInfo>> {
        let mut stmt = self.conn.prepare(
            "WITH k AS (
                 SELECT partition,
                        SUM(status NOT IN ('removed', 'deleted')) AS total,
                        SUM(status = 'stored') AS stored
                 FROM packages GROUP BY partition
             )
             SELECT p.name, p.start_key, p.end_key, p.status, p.rows, COALESCE(p.uri, ''), p.attempts,
                    COALESCE(p.last_error, ''), COALESCE(k.total, 0), COALESCE(k.stored, 0)
             FROM partitions p LEFT JOIN k ON k.partition = p.name ORDER BY p.ord",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PartitionInfo {
                name: r.get(0)?,
                start: r.get(1)?,
                end: r.get(2)?,
                status: r.get(3)?,
                rows: r.get::<_, i64>(4)? as u64,
                uri: r.get(5)?,
                attempts: r.get::<_, i64>(6)? as u32,
                last_error: r.get(7)?,
                packuments_total: r.get::<_, i64>(8)? as u64,
                packuments_done: r.get::<_, i64>(9)? as u64,
            })
        })?;
        rows.collect()
    }

    /// One page of failures after `after` (partitions first, then packuments, each by
    /// name), at most `limit`; with the total and where the next page starts.
    pub fn list_failures(
        &self,
        limit: u32,
        after: Option<&FailureCursor>,
    ) -> rusqlite::Result<FailurePage> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, name, reason, attempts FROM (
                 SELECT 0 AS k, 'partition' AS kind, name, COALESCE(last_error, '') AS reason, attempts
                     FROM partitions WHERE status = 'failed'
                 UNION ALL
                 SELECT 1, 'packument', name, COALESCE(last_error, ''), attempts
                     FROM packages WHERE status = 'failed')
             WHERE (k, name) > (?1, ?2) ORDER BY k, name LIMIT ?3",
        )?;
        let (k, name) = after.map_or((-1, ""), |c| (c.kind, c.name.as_str()));
        let failures = stmt
            .query_map(params![k, name, i64::from(limit) + 1], |r| {
                Ok(Failure {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    reason: r.get(2)?,
                    attempts: r.get::<_, i64>(3)? as u32,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let total: i64 = self.conn.query_row(FAILURES_TOTAL, [], |r| r.get(0))?;
        Ok(FailurePage::new(failures, limit as usize, total as u64))
    }

    /// Returns failed items (all, or those named) to pending with fresh attempts.
    pub fn retry_failed(&mut self, names: &[String]) -> rusqlite::Result<(u64, u64)> {
        let (parts, pkgs) = if names.is_empty() {
            (
                self.conn.execute(
                    "UPDATE partitions SET status = 'pending', attempts = 0 WHERE status = 'failed'",
                    [],
                )?,
                self.conn.execute(
                    "UPDATE packages SET status = 'pending', attempts = 0 WHERE status = 'failed'",
                    [],
                )?,
            )
        } else {
            let (mut parts, mut pkgs) = (0, 0);
            for name in names {
                parts += self.conn.execute(
                    "UPDATE partitions SET status = 'pending', attempts = 0 WHERE status = 'failed' AND name = ?1",
                    [name],
                )?;
                pkgs += self.conn.execute(
                    "UPDATE packages SET status = 'pending', attempts = 0 WHERE status = 'failed' AND name = ?1",
                    [name],
                )?;
            }
            (parts, pkgs)
        };
        if parts + pkgs > 0 {
            self.set_run_complete(false)?;
        }
        self.cached = None;
        Ok((parts as u64, pkgs as u64))
    }
}

// The statements that find packages in flight. Each names the state as the partial index
// it needs does (`status = 'pending'`, …): SQLite uses a partial index only then, and
// otherwise scans every package of the checkpoint.

/// Leases up to ?2 pending names for lease ?1, returning them: names from the pending
/// index in (partition, name) order, which stops after LIMIT rows instead of sorting
/// every pending name.
const LEASE_PACKUMENTS: &str = "UPDATE packages SET status = 'leased', lease_token = ?1
     WHERE name IN (
         SELECT name FROM packages INDEXED BY packages_pending
         WHERE status = 'pending'
           AND partition IN (SELECT name FROM partitions WHERE status IN ('done', 'failed'))
         LIMIT ?2)
     RETURNING name, indexed_rev";

/// Every package figure of [`Counts`] (?1 the run), in one pass and as one row: a GROUP
/// BY status would sort every package in memory, there being no index over every status.
const COUNT_PACKAGES: &str =
    "SELECT COALESCE(SUM(seen_run = ?1), 0), COALESCE(SUM(fetched_run = ?1), 0),
            COUNT(*) FILTER (WHERE status = 'deleted'),
            COUNT(*) FILTER (WHERE status = 'stored'),
            COALESCE(SUM(bytes) FILTER (WHERE status = 'stored'), 0),
            COUNT(*) FILTER (WHERE status = 'stored' AND doc_rev IS NOT NULL
                             AND doc_rev != '' AND doc_rev != indexed_rev),
            COUNT(*) FILTER (WHERE status = 'missing'),
            COUNT(*) FILTER (WHERE status = 'failed'),
            COUNT(*) FILTER (WHERE status = 'leased'),
            COUNT(*) FILTER (WHERE status NOT IN
                ('stored', 'missing', 'failed', 'leased', 'removed', 'deleted'))
     FROM packages";

/// Whether a partition or a package is pending or leased.
const OPEN_WORK: &str =
    "SELECT EXISTS (SELECT 1 FROM partitions WHERE status IN ('pending', 'leased'))
         OR EXISTS (SELECT 1 FROM packages WHERE status = 'pending')
         OR EXISTS (SELECT 1 FROM packages WHERE status = 'leased')";

/// Every leased package back to pending.
const UNLEASE_PACKAGES: &str =
    "UPDATE packages SET status = 'pending', lease_token = NULL WHERE status = 'leased'";

/// How many partitions and packages failed.
const FAILURES_TOTAL: &str = "SELECT (SELECT COUNT(*) FROM partitions WHERE status = 'failed')
     + (SELECT COUNT(*) FROM packages WHERE status = 'failed')";

/// Gives back (?1 attempts added, ?2 the reason, failed at ?3 attempts) what lease ?4
/// holds in `table`: one name (?5) by its key, or the whole lease by its token (for
/// packages, through the leased index).
fn give_back_sql(table: &str, by_name: bool) -> String {
    let which = if by_name {
        "name = ?5 AND lease_token = ?4"
    } else {
        "lease_token = ?4 AND ?5 IS NULL"
    };
    format!(
        "UPDATE {table} SET attempts = attempts + ?1, last_error = ?2, lease_token = NULL,
             status = CASE WHEN attempts + ?1 >= ?3 THEN 'failed' ELSE 'pending' END
         WHERE {which} AND status = 'leased'"
    )
}

/// Why a batch of index rows cannot be taken: an id over npm's name limit or a revision
/// over its bound, which no fetcher may send (the checkpoint never stores one). The reason
/// names the row and its size, never its bytes.
fn oversized_row(rows: &alldocs_proto::v1::IndexRows) -> Option<String> {
    use alldocs_fetcher::all_docs::{MAX_ID_BYTES, MAX_REV_BYTES};
    rows.rows.iter().enumerate().find_map(|(i, row)| {
        let (field, bytes, limit) = if row.id.len() > MAX_ID_BYTES {
            ("id", row.id.len(), MAX_ID_BYTES)
        } else if row.rev.len() > MAX_REV_BYTES {
            ("rev", row.rev.len(), MAX_REV_BYTES)
        } else {
            return None;
        };
        Some(format!(
            "protocol error: the fetcher sent an index row (#{} of a batch) whose {field} is \
             {bytes} bytes, over {limit}; none of the batch was kept",
            i + 1
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alldocs_proto::v1::{IndexDone, IndexRow, IndexRows, ItemFailed, PackumentStored};

    fn identity(store: &str) -> RunIdentity {
        RunIdentity {
            replicate_origin: "http://127.0.0.1:1/db".into(),
            registry: "http://127.0.0.1:1/db".into(),
            store: store.into(),
            pivots: vec!["m".into()],
            accept: "full".into(),
        }
    }

    fn plan() -> Vec<Partition> {
        crate::plan::partitions(&["m".to_string()])
    }

    fn rows(partition: &str, rows: &[(&str, &str)]) -> Event {
        Event::IndexRows(IndexRows {
            partition: partition.into(),
            rows: rows
                .iter()
                .map(|(id, rev)| IndexRow {
                    id: id.to_string(),
                    rev: rev.to_string(),
                })
                .collect(),
        })
    }

    fn done(partition: &str, n: u64) -> Event {
        Event::IndexDone(IndexDone {
            partition: partition.into(),
            rows: n,
            ..Default::default()
        })
    }

    fn stored(name: &str, rev: &str) -> Event {
        Event::Stored(PackumentStored {
            name: name.into(),
            rev: rev.into(),
            uri: format!("memory://x/packuments/{name}.json"),
            bytes: 10,
            ..Default::default()
        })
    }

    /// Indexes both partitions of the plan with the given rows (all in the first).
    async fn index(ck: &Checkpoint, names: &[(&'static str, &'static str)]) {
        let names = names.to_vec();
        ck.call(move |db| {
            for _ in 0..2 {
                let token = db.next_token()?;
                let p = db.lease_partition(token)?.expect("a pending partition");
                let these: Vec<_> = names
                    .iter()
                    .copied()
                    .filter(|(n, _)| {
                        alldocs_fetcher::keys::in_range(n, p.start.as_deref(), p.end.as_deref())
                    })
                    .collect();
                db.apply(
                    token,
                    &[rows(&p.name, &these), done(&p.name, these.len() as u64)],
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn index_rows_over_the_bounds_fail_the_attempt_and_are_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 2).unwrap();
        let long_id = "a".repeat(215);
        let long_rev = format!("1-{}", "f".repeat(255));
        let (first, second, packages) = ck
            .call(move |db| {
                let mut states = Vec::new();
                for bad in [(long_id.as_str(), "1-x"), ("ab", long_rev.as_str())] {
                    let token = db.next_token()?;
                    let p = db.lease_partition(token)?.expect("the first partition");
                    assert_eq!(p.name, "+m");
                    db.apply(
                        token,
                        &[rows(&p.name, &[("aa", "1-a"), bad]), done(&p.name, 2)],
                    )?;
                    states.push(db.conn.query_row(
                        "SELECT status, attempts, last_error FROM partitions WHERE name = '+m'",
                        [],
                        |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, String>(2)?,
                            ))
                        },
                    )?);
                }
                let packages: i64 =
                    db.conn
                        .query_row("SELECT COUNT(*) FROM packages", [], |r| r.get(0))?;
                Ok((states[0].clone(), states[1].clone(), packages))
            })
            .await
            .unwrap();
        assert_eq!(
            first,
            (
                "pending".to_string(),
                1,
                "protocol error: the fetcher sent an index row (#2 of a batch) whose id is 215 \
                 bytes, over 214; none of the batch was kept"
                    .to_string()
            ),
            "the attempt is counted, the IndexDone after it ignored"
        );
        assert_eq!((second.0.as_str(), second.1), ("failed", 2));
        assert!(
            second.2.contains("whose rev is 257 bytes, over 256"),
            "{}",
            second.2
        );
        assert_eq!(packages, 0, "no row of a refused batch is stored");
    }

    #[tokio::test]
    async fn events_of_a_superseded_lease_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
        index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
        let counts = ck
            .call(|db| {
                let old = db.next_token()?;
                assert_eq!(db.lease_packuments(old, 10)?.len(), 2);
                // The old lease's stream broke: its work goes back and is leased anew.
                assert_eq!(db.end_lease(old, "stream broke", true)?, 2);
                let new = db.next_token()?;
                assert_eq!(db.lease_packuments(new, 10)?.len(), 2);
                // The stale fetcher's late events are ignored...
                assert_eq!(db.apply(old, &[stored("a", "1-a"), stored("b", "1-b")])?, 0);
                // ...the current attempt's are not.
                assert_eq!(db.apply(new, &[stored("a", "1-a")])?, 1);
                db.counts_now()
            })
            .await
            .unwrap();
        assert_eq!((counts.packuments_done, counts.packuments_leased), (1, 1));
    }

    #[tokio::test]
    async fn unfinished_work_fails_after_the_attempt_limit_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 2).unwrap();
        index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
        let (counts, failures) = ck
            .call(|db| {
                for _ in 0..2 {
                    let t = db.next_token()?;
                    db.lease_packuments(t, 1)?; // "a" first
                    db.end_lease(t, "lease deadline passed", true)?;
                }
                // A non-retryable failure fails at once.
                let t = db.next_token()?;
                assert_eq!(
                    db.lease_packuments(t, 10)?,
                    vec![("b".to_string(), "1-b".to_string())]
                );
                db.apply(
                    t,
                    &[Event::Failed(ItemFailed {
                        name: "b".into(),
                        reason: "HTTP 401".into(),
                        retryable: false,
                        http_status: 401,
                    })],
                )?;
                Ok((db.counts_now()?, db.list_failures(100, None)?))
            })
            .await
            .unwrap();
        assert!(counts.is_done());
        assert_eq!(counts.packuments_failed, 2);
        let reasons: Vec<_> = failures
            .failures
            .iter()
            .map(|f| (f.name.as_str(), f.reason.as_str(), f.attempts))
            .collect();
        assert_eq!(
            reasons,
            vec![("a", "lease deadline passed", 2), ("b", "HTTP 401", 1)]
        );
    }

    #[tokio::test]
    async fn a_finished_run_is_followed_by_an_incremental_one_and_an_unfinished_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        assert_eq!((opened.run, opened.resumed), (1, false));
        index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
        ck.call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)?;
            db.apply(t, &[stored("a", "1-a"), stored("b", "1-b")])?;
            db.end_lease(t, "finished", true)?;
            assert!(!db.has_open_work(Mode::Full)?);
            db.set_run_complete(true)
        })
        .await
        .unwrap();
        drop(ck);

        // A new run: "a" is unchanged, "b" has a new revision, "c" is new.
        let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        assert_eq!((opened.run, opened.resumed), (2, false));
        index(&ck, &[("a", "1-a"), ("b", "2-b"), ("c", "1-c")]).await;
        let pending = ck
            .call(|db| {
                let t = db.next_token()?;
                db.lease_packuments(t, 10)
            })
            .await
            .unwrap();
        assert_eq!(
            pending,
            vec![
                ("b".to_string(), "2-b".to_string()),
                ("c".to_string(), "1-c".to_string())
            ]
        );
        drop(ck);

        // Killed mid-run: the next start resumes run 2 and hands the leased work out again.
        let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        assert_eq!((opened.run, opened.resumed), (2, true));
        let counts = ck.call(|db| db.counts_now()).await.unwrap();
        assert_eq!(
            (
                counts.packuments_done,
                counts.packuments_pending,
                counts.partitions_done
            ),
            (1, 2, 2)
        );
    }

    #[tokio::test]
    async fn documents_whose_rev_lags_the_index_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
        index(&ck, &[("a", "2-new"), ("b", "1-b")]).await;
        let counts = ck
            .call(|db| {
                let t = db.next_token()?;
                db.lease_packuments(t, 10)?;
                let mut lagging = stored("a", "2-new");
                if let Event::Stored(s) = &mut lagging {
                    s.doc_rev = "1-old".into(); // the registry still served the previous revision
                }
                let mut current = stored("b", "1-b");
                if let Event::Stored(s) = &mut current {
                    s.doc_rev = "1-b".into();
                }
                db.apply(t, &[lagging, current])?;
                db.counts_now()
            })
            .await
            .unwrap();
        assert_eq!(
            (counts.packuments_done, counts.packuments_rev_mismatch),
            (2, 1)
        );
    }

    #[test]
    fn a_checkpoint_of_another_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(Checkpoint::open(&path, &identity("a"), &plan(), 3).unwrap());
        let Err(err) = Checkpoint::open(&path, &identity("b"), &plan(), 3) else {
            panic!("a different --store must be refused");
        };
        let msg = err.to_string();
        assert!(
            msg.contains("--store `a`") && msg.contains("`b`") && msg.contains("new --db"),
            "{msg}"
        );
    }

    #[test]
    fn a_first_layout_checkpoint_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        {
            // The first layout, as coordinators before schema versions wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE partitions (name TEXT PRIMARY KEY, ord INTEGER NOT NULL, start_key TEXT,
                     end_key TEXT, status TEXT NOT NULL DEFAULT 'pending', rows INTEGER NOT NULL DEFAULT 0,
                     uri TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, lease_token INTEGER);
                 CREATE TABLE packages (name TEXT PRIMARY KEY, partition TEXT NOT NULL,
                     indexed_rev TEXT NOT NULL, stored_rev TEXT, doc_rev TEXT, status TEXT NOT NULL,
                     uri TEXT, bytes INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
                     last_error TEXT, lease_token INTEGER, seen_run INTEGER NOT NULL);
                 CREATE TABLE leases (token INTEGER PRIMARY KEY, kind TEXT NOT NULL, items INTEGER NOT NULL,
                     fetcher TEXT NOT NULL, started_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
                     ended_ms INTEGER, outcome TEXT);
                 INSERT INTO meta VALUES ('--registry', 'http://user:hunter2@127.0.0.1:1/db'),
                     ('run', '1'), ('run_complete', '1');
                 INSERT INTO packages (name, partition, indexed_rev, stored_rev, doc_rev, status, seen_run)
                     VALUES ('lagging', '+m', '2-new', '2-new', '1-old', 'stored', 1),
                            ('current', '+m', '1-c', '1-c', '1-c', 'stored', 1),
                            ('gone', '+m', '1-g', '1-g', NULL, 'missing', 1);",
            )
            .unwrap();
        }
        let mut id = identity("s");
        id.registry = "http://user:hunter2@127.0.0.1:1/db".into();
        let (ck, opened) = Checkpoint::open(&path, &id, &plan(), 3).unwrap();
        assert_eq!((opened.run, opened.resumed), (2, false));
        drop(ck);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::schema::VERSION);
        let stored: Vec<(String, Option<String>)> = conn
            .prepare("SELECT name, stored_rev FROM packages ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            stored,
            vec![
                ("current".to_string(), Some("1-c".to_string())),
                ("gone".to_string(), None),
                ("lagging".to_string(), Some("1-old".to_string())),
            ],
            "the revision actually stored; none for a missing name"
        );
        let registry: String = conn
            .query_row("SELECT value FROM meta WHERE key = '--registry'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!registry.contains("hunter2"), "{registry}");
    }

    #[tokio::test]
    async fn a_stale_document_or_a_brief_404_is_fetched_again_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        let names = [("a", "2-new"), ("b", "1-b"), ("c", "1-c")];
        index(&ck, &names).await;
        ck.call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)?;
            let mut stale = stored("a", "2-new");
            if let Event::Stored(s) = &mut stale {
                s.doc_rev = "1-old".into(); // the registry still served the previous revision
            }
            let missing = Event::Missing(alldocs_proto::v1::PackumentMissing {
                name: "b".into(),
                http_status: 404,
            });
            db.apply(t, &[stale, missing, stored("c", "1-c")])?;
            db.end_lease(t, "finished", true)?;
            db.set_run_complete(true)
        })
        .await
        .unwrap();
        drop(ck);
        // The index is unchanged; only what was not really stored is asked for again.
        let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        index(&ck, &names).await;
        let again = ck
            .call(|db| {
                let t = db.next_token()?;
                db.lease_packuments(t, 10)
            })
            .await
            .unwrap();
        let again: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(again, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn an_oversized_revision_from_a_fetcher_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
        index(&ck, &[("a", "1-a")]).await;
        let (stored, row) = ck
            .call(|db| {
                let t = db.next_token()?;
                db.lease_packuments(t, 10)?;
                let mut huge = stored("a", "1-a");
                if let Event::Stored(s) = &mut huge {
                    s.doc_rev = "9".repeat(300);
                }
                let n = db.apply(t, &[huge])?;
                let row: (String, i64, Option<String>, String) = db.conn.query_row(
                    "SELECT status, attempts, doc_rev, last_error FROM packages WHERE name = 'a'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
                Ok((n, row))
            })
            .await
            .unwrap();
        assert_eq!(stored, 0);
        assert_eq!((row.0.as_str(), row.1, row.2), ("pending", 1, None));
        assert!(row.3.contains("300 bytes, over 256"), "{}", row.3);
    }

    #[tokio::test]
    async fn events_arriving_together_are_committed_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, _) =
            Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
        let names: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
        let indexed: Vec<(&'static str, &'static str)> =
            names.iter().map(|n| (&*n.clone().leak(), "1-x")).collect();
        index(&ck, &indexed).await;
        let token = ck
            .call(|db| {
                let t = db.next_token()?;
                assert_eq!(db.lease_packuments(t, 100)?.len(), 50);
                Ok(t)
            })
            .await
            .unwrap();
        let before = ck.call(|db| Ok(db.commits())).await.unwrap();
        // The checkpoint thread is held in a job while 50 leases' events arrive...
        let (release, held) = std::sync::mpsc::channel::<()>();
        let mut blocker = Box::pin(ck.call(move |_| {
            held.recv().unwrap();
            Ok(())
        }));
        assert!(futures::poll!(&mut blocker).is_pending());
        let mut events = Box::pin(futures::future::join_all(names.iter().map(|n| {
            let event = stored(n, "1-x");
            ck.call_grouped(move |db| db.apply(token, &[event]))
        })));
        assert!(futures::poll!(&mut events).is_pending());
        release.send(()).unwrap();
        blocker.await.unwrap();
        let stored: u64 = events.await.into_iter().map(Result::unwrap).sum();
        assert_eq!(stored, 50);
        let (after, counts) = ck
            .call(|db| Ok((db.commits(), db.counts_now()?)))
            .await
            .unwrap();
        // ...and all of them are committed with it: one WAL sync, not 51.
        assert_eq!(
            after - before,
            1 + 1,
            "the held job's transaction and the count's"
        );
        assert_eq!(counts.packuments_done, 50);
    }

    #[tokio::test]
    async fn a_lone_event_is_committed_within_the_group_commit_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        index(&ck, &[("a", "1-a")]).await;
        let token = ck
            .call(|db| {
                let t = db.next_token()?;
                db.lease_packuments(t, 1)?;
                Ok(t)
            })
            .await
            .unwrap();
        // Nothing else arrives: the transaction still commits, and then it is on disk for
        // any other reader.
        let stored = tokio::time::timeout(
            Duration::from_secs(5),
            ck.call_grouped(move |db| db.apply(token, &[stored("a", "1-a")])),
        )
        .await
        .expect("a lone event does not wait for company")
        .unwrap();
        assert_eq!(stored, 1);
        let status: String = Connection::open(&path)
            .unwrap()
            .query_row("SELECT status FROM packages WHERE name = 'a'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(status, "stored");
    }

    #[test]
    fn the_hot_queries_of_a_large_checkpoint_use_the_state_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap());
        let conn = Connection::open(&path).unwrap();
        let plan_of = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = stmt.raw_query();
            let mut steps = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get::<_, String>(3).unwrap());
            }
            steps.join("; ")
        };
        // The statements the checkpoint runs, so that one of millions of stored packages
        // never makes a lease, its end or a question about the run scan them all.
        let cases = [
            (LEASE_PACKUMENTS.to_string(), "packages_pending"),
            (give_back_sql("packages", false), "packages_leased"),
            (
                give_back_sql("packages", true),
                "sqlite_autoindex_packages_1",
            ),
            (UNLEASE_PACKAGES.to_string(), "packages_leased"),
            (OPEN_WORK.to_string(), "packages_pending"),
            (OPEN_WORK.to_string(), "packages_leased"),
            (FAILURES_TOTAL.to_string(), "packages_failed"),
        ];
        for (sql, index) in cases {
            let plan = plan_of(&sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            let full_scan = plan
                .split("; ")
                .any(|step| step.starts_with("SCAN packages") && !step.contains(" USING "));
            assert!(!full_scan, "{sql}: {plan}");
        }
        // The counts read every package once, holding nothing but the sums.
        let counts = plan_of(COUNT_PACKAGES);
        assert!(!counts.contains("TEMP B-TREE"), "{counts}");
        let export = plan_of(crate::export::STORED_NAMES);
        assert!(!export.contains("TEMP B-TREE"), "{export}");
    }

    #[test]
    fn a_version_4_checkpoint_with_work_in_flight_is_migrated_and_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        drop(ck);
        {
            // Back to version 4's indexes, mid-run: one package stored, one leased, one
            // failed, one pending.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "DROP INDEX packages_pending; DROP INDEX packages_leased; DROP INDEX packages_failed;
                 CREATE INDEX packages_by_status ON packages(status, partition, name);
                 PRAGMA user_version = 4;
                 UPDATE partitions SET status = 'done';
                 INSERT INTO packages (name, partition, indexed_rev, stored_rev, status, seen_run, lease_token, attempts)
                     VALUES ('s', '+m', '1-s', '1-s', 'stored', 1, NULL, 0),
                            ('l', '+m', '1-l', NULL, 'leased', 1, 4, 0),
                            ('f', '+m', '1-f', NULL, 'failed', 1, NULL, 3),
                            ('p', '+m', '1-p', NULL, 'pending', 1, NULL, 0);",
            )
            .unwrap();
        }
        let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
        assert!(opened.resumed, "the unfinished run carries on");
        let conn = Connection::open(&path).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'packages' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "packages_by_partition_run",
                "packages_failed",
                "packages_leased",
                "packages_pending"
            ]
        );
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, crate::schema::VERSION);
        let (leased, counts, failures) = futures::executor::block_on(ck.call(|db| {
            let t = db.next_token()?;
            let mut leased = db.lease_packuments(t, 10)?;
            leased.sort();
            Ok((leased, db.counts_now()?, db.list_failures(10, None)?))
        }))
        .unwrap();
        // The lease the crash left open went back to pending with the pending one.
        assert_eq!(
            leased,
            [
                ("l".to_string(), "1-l".to_string()),
                ("p".to_string(), "1-p".to_string())
            ]
        );
        assert_eq!(
            (
                counts.packuments_done,
                counts.packuments_failed,
                counts.packuments_leased
            ),
            (1, 1, 2)
        );
        assert_eq!(failures.failures.len(), 1);
        assert_eq!(failures.failures[0].name, "f");
    }
}
