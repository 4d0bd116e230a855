//! Runs and the settings a checkpoint belongs to: the identity recorded when it is made and
//! compared on every start, a run begun or resumed, the `meta` table, fencing tokens, and
//! whether a run has work left.

use rusqlite::{params, OptionalExtension};

use alldocs_fetcher::source::http::redact;

use crate::{
    checkpoint::{CheckpointError, Db},
    plan::Partition,
};

/// How a snapshot's packuments are stored, chosen when it starts and kept (`meta` key
/// `layout`): a checkpoint made before there was a choice is `files`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// Many packuments per object: `packs/<snapshot>/…`.
    #[default]
    Packs,
    /// One object per packument: `packuments/<key>.json`.
    Files,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Packs => "packs",
            Layout::Files => "files",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "packs" {
            Layout::Packs
        } else {
            Layout::Files
        }
    }
}

/// The `meta` key of the snapshot's layout, and of the id its packs are filed under.
pub const LAYOUT_KEY: &str = "layout";
pub const SNAPSHOT_KEY: &str = "snapshot_id";

/// The settings a checkpoint belongs to: a run with other values would mix snapshots.
#[derive(Clone, Debug)]
pub struct RunIdentity {
    pub replicate_origin: String,
    pub registry: String,
    pub store: String,
    pub pivots: Vec<String>,
    pub accept: String,
    /// The layout asked for (`--layout`); none: the snapshot's own, or packs for a new one.
    pub layout: Option<Layout>,
}

impl RunIdentity {
    /// What the checkpoint records and compares: URLs without their credentials.
    pub(super) fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("--replicate-origin", redact(&self.replicate_origin)),
            ("--registry", redact(&self.registry)),
            ("--store", redact(&self.store)),
            ("--pivots", self.pivots.join(",")),
            ("--accept", self.accept.clone()),
        ]
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

impl Db {
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
    pub(super) fn check_identity(
        &self,
        path: &str,
        identity: &RunIdentity,
    ) -> Result<(), CheckpointError> {
        if !crate::checkpoint::schema::has_tables(&self.conn)? {
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
        let recorded = self.recorded_layout()?;
        match identity.layout {
            Some(given) if given != recorded => Err(CheckpointError::LayoutMismatch {
                path: path.to_string(),
                recorded: recorded.as_str(),
                given: given.as_str(),
            }),
            _ => Ok(()),
        }
    }

    /// The layout of an existing checkpoint (one from before layouts were recorded holds
    /// files).
    fn recorded_layout(&self) -> rusqlite::Result<Layout> {
        Ok(self
            .meta(LAYOUT_KEY)?
            .map_or(Layout::Files, |l| Layout::parse(&l)))
    }

    /// The snapshot's layout and the id its packs are filed under.
    pub fn layout(&self) -> rusqlite::Result<(Layout, String)> {
        Ok((
            self.recorded_layout()?,
            self.meta(SNAPSHOT_KEY)?.unwrap_or_default(),
        ))
    }

    /// Records a new snapshot's layout, and its id, once.
    fn record_layout(&self, existed: bool, asked: Option<Layout>) -> rusqlite::Result<()> {
        if self.meta(LAYOUT_KEY)?.is_none() {
            let layout = if existed {
                Layout::Files
            } else {
                asked.unwrap_or_default()
            };
            self.set_meta(LAYOUT_KEY, layout.as_str())?;
        }
        if self.meta(SNAPSHOT_KEY)?.is_none() {
            self.set_meta(SNAPSHOT_KEY, &format!("{:016x}", rand::random::<u64>()))?;
        }
        Ok(())
    }

    pub(super) fn start(
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
            let existed = crate::checkpoint::schema::has_tables(&self.conn)?;
            crate::checkpoint::schema::create_or_migrate(&self.conn)?;
            self.record_layout(existed, identity.layout)?;
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
    pub(super) fn begin_or_resume_run(
        &mut self,
        mode: Mode,
        follow: bool,
    ) -> rusqlite::Result<Opened> {
        let run: i64 = self.meta("run")?.and_then(|r| r.parse().ok()).unwrap_or(0);
        let complete = self.meta("run_complete")?.as_deref() == Some("1");
        let following = follow && self.meta(super::feed::SEQ_KEY)?.is_some();
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
    pub(crate) fn begin_run(&mut self, run: i64, mode: Mode) -> rusqlite::Result<i64> {
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
        if mode != Mode::Names {
            // As for the rows above: what leases hold now comes back with the new run.
            self.in_flight.clear();
        }
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

    /// Marks the run finished (so the next start is a new, incremental run) or not.
    pub fn set_run_complete(&self, complete: bool) -> rusqlite::Result<()> {
        self.set_meta("run_complete", if complete { "1" } else { "0" })
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
}

/// Whether a partition or a package is pending or leased.
pub(super) const OPEN_WORK: &str =
    "SELECT EXISTS (SELECT 1 FROM partitions WHERE status IN ('pending', 'leased'))
         OR EXISTS (SELECT 1 FROM packages WHERE status = 'pending')
         OR EXISTS (SELECT 1 FROM packages WHERE status = 'leased')";
