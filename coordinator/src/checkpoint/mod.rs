//! **Part `checkpoint`: the SQLite checkpoint, the only state that must survive.** One
//! connection on one thread; work arrives as closures through a channel and each drained
//! batch is one transaction (events of concurrent leases share a group commit: [`commit`]).
//! It owns the schema and its migrations ([`schema`]), the lock that keeps one coordinator
//! per checkpoint ([`lock`]), runs and the settings they belong to ([`runs`]), leases of
//! partitions and packuments ([`leases`]), the events a lease streams back ([`events`]),
//! the counts and listings progress is made of ([`progress`]), and the `_changes` feed's
//! position ([`feed`]).
//!
//! The statements that find packages in flight each name the state as the partial index
//! they need does (`status = 'pending'`, …): SQLite uses a partial index only then, and
//! otherwise scans every package of the checkpoint.
//!
//! Uses: `plan`.

pub mod commit;
pub mod events;
pub mod feed;
pub mod leases;
pub mod lock;
pub mod progress;
pub mod runs;
pub mod schema;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use rusqlite::Connection;

pub use commit::Checkpoint;
pub use leases::Work;
pub use progress::{
    Counts, FailureCursor, FailurePage, STORED_FILES, STORED_LOCATIONS, STORED_NAMES,
};
pub use runs::{Layout, Mode, Opened, RunIdentity};

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
    #[error("the checkpoint {path} holds a snapshot in the `{recorded}` layout (chosen when the snapshot started, and kept); this run asks for --layout {given}.\nCarry on with --layout {recorded} (or without --layout), or start a new snapshot in the `{given}` layout with a new --db and a new --store.")]
    LayoutMismatch {
        path: String,
        recorded: &'static str,
        given: &'static str,
    },
    #[error("checkpoint: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the checkpoint thread has stopped")]
    Closed,
}

/// The database and the run it serves; lives on the checkpoint thread.
pub struct Db {
    pub(crate) conn: Connection,
    pub(crate) run: i64,
    max_attempts: u32,
    pub(crate) cached: Option<(Instant, Duration, Counts)>,
    /// Transactions committed by the checkpoint thread (each one WAL sync).
    commits: u64,
    /// The ids of the packs sealed last (their `stored` events follow at once), forgotten
    /// whenever a change is rolled back.
    packs: Vec<(String, i64)>,
    /// Which lease holds each packument in flight (in memory only).
    in_flight: leases::InFlight,
}
