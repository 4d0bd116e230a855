//! The checkpoint's schema and its versions: `PRAGMA user_version` says which layout a
//! file holds; an older one is migrated in the run's first transaction, a newer one is
//! refused before anything is written.

use rusqlite::Connection;

use crate::checkpoint::CheckpointError;

/// The layout this coordinator writes.
///
/// - 1: the first layout (written with `user_version` 0).
/// - 2: `packages.fetched_run` (the run that last fetched a package); `stored_rev` is the
///   revision of the document actually stored (its own `_rev`), NULL for a missing one;
///   URLs in `meta` carry no credentials.
/// - 3: `wanted`, the names a `--names` run fetches (a new table: nothing to migrate).
/// - 4: `serve --follow`: `meta.follow_seq` (the feed position applied) and the package
///   status `deleted`, which an older coordinator would take for pending (nothing to
///   migrate; an older coordinator refuses the file).
/// - 5: packages in flight are indexed by state, each in its own small partial index
///   (`packages_pending`, `packages_leased`, `packages_failed`) instead of one index over
///   every package's status: a stored package leaves the indexes instead of moving within
///   a large one, and a lease's leftovers are found by its token.
/// - 6: packs. `meta.layout` (`packs` or `files`; a migrated checkpoint is `files`) and
///   `meta.snapshot_id`; the table `packs` (one row per sealed pack); and on each package
///   where its bytes are: `uri` (a file), or `pack` (a row of `packs`) with `pack_offset`
///   and `pack_length` (its zstd frame), and `sha256` of its exact bytes (NULL for a
///   package stored before version 6, until it is fetched again).
pub const VERSION: i64 = 6;

/// The tables and indexes of [`VERSION`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    name TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    start_key TEXT,
    end_key TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    rows INTEGER NOT NULL DEFAULT 0,
    uri TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    lease_token INTEGER
);
CREATE TABLE IF NOT EXISTS packages (
    name TEXT PRIMARY KEY,
    partition TEXT NOT NULL,
    indexed_rev TEXT NOT NULL,
    stored_rev TEXT,
    doc_rev TEXT,
    status TEXT NOT NULL,
    uri TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    lease_token INTEGER,
    seen_run INTEGER NOT NULL,
    fetched_run INTEGER,
    pack INTEGER,
    pack_offset INTEGER,
    pack_length INTEGER,
    sha256 BLOB
);
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    uri TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    token INTEGER,
    sealed_ms INTEGER NOT NULL
);
-- Only packages still in flight are indexed by state (a query must name the state as
-- written here for SQLite to use the index): stored, missing, removed and deleted ones,
-- nearly all of a finished snapshot, are in none of them.
CREATE INDEX IF NOT EXISTS packages_pending ON packages(partition, name) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS packages_leased ON packages(lease_token) WHERE status = 'leased';
CREATE INDEX IF NOT EXISTS packages_failed ON packages(name) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS packages_by_partition_run ON packages(partition, seen_run);
CREATE TABLE IF NOT EXISTS wanted (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS leases (
    token INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    items INTEGER NOT NULL,
    fetcher TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    outcome TEXT
);
";

/// Whether the file already holds a checkpoint (of any version).
pub fn has_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Refuses a checkpoint written by a newer coordinator; reads only.
pub fn check_version(conn: &Connection, path: &str) -> Result<(), CheckpointError> {
    let found = user_version(conn)?;
    if found > VERSION {
        return Err(CheckpointError::TooNew {
            path: path.to_string(),
            found,
            supported: VERSION,
        });
    }
    Ok(())
}

/// Creates the tables of a new checkpoint, or brings an older one up to [`VERSION`].
/// Runs inside the caller's transaction.
pub fn create_or_migrate(conn: &Connection) -> rusqlite::Result<()> {
    let existing = has_tables(conn)?;
    let version = user_version(conn)?;
    if existing && version < 2 {
        migrate_to_2(conn)?;
    }
    if existing && version < 5 {
        // The partial indexes of SCHEMA replace the index over every package's status.
        conn.execute_batch("DROP INDEX IF EXISTS packages_by_status")?;
    }
    if existing && version < 6 {
        migrate_to_6(conn)?;
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", VERSION)
}

/// 1 → 2: the fetched-run column, `stored_rev` from the stored document, and no
/// credentials in recorded URLs (they are rewritten when the run's settings are recorded).
fn migrate_to_2(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "ALTER TABLE packages ADD COLUMN fetched_run INTEGER;
         UPDATE packages SET stored_rev = doc_rev
             WHERE status = 'stored' AND doc_rev IS NOT NULL AND doc_rev != '';
         UPDATE packages SET stored_rev = NULL WHERE status = 'missing';",
    )
}

/// 5 → 6: where each package's bytes are, and their digest (unknown for what is stored
/// already: NULL until fetched again); the snapshot keeps the `files` layout it has.
fn migrate_to_6(conn: &Connection) -> rusqlite::Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('packages')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in [
        ("pack", "INTEGER"),
        ("pack_offset", "INTEGER"),
        ("pack_length", "INTEGER"),
        ("sha256", "BLOB"),
    ] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE packages ADD COLUMN {column} {kind}"))?;
        }
    }
    conn.execute_batch("INSERT OR IGNORE INTO meta (key, value) VALUES ('layout', 'files')")
}
