//! Read-only commands over a snapshot: `index`, `show` and `export` open the checkpoint
//! read-only (never its lock, never a write) and read objects from the recorded store.

use std::{
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use alldocs_fetcher::store::Store;
use clap::{Args, ValueEnum};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{cli::snapshot, run::args::usage};

/// The names in the index as of the last index pass (and, with `serve --follow`, the feed
/// after it): every status but `removed` (a name the registry's `_all_docs` no longer
/// lists) and `deleted` (one the `_changes` feed said was deleted).
pub const LIVE: &str = "status NOT IN ('removed', 'deleted')";

#[derive(Args, Debug)]
pub struct DbArg {
    /// The SQLite checkpoint of a snapshot (opened read-only; it may be in use by a run).
    #[arg(long, env = "ALLDOCS_DB", default_value = "./alldocs.sqlite")]
    pub db: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum IndexFormat {
    /// `name<TAB>rev` a line (npm names and revisions hold no tab or newline).
    #[default]
    Lines,
    /// One `{"name":…,"rev":…}` object a line.
    Json,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: IndexFormat,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The package name, as in the index (`@scope/name` for scoped ones).
    pub name: String,
    #[command(flatten)]
    pub db: DbArg,
    /// A dotted path into the document (`dist-tags.latest`); strings print raw, other
    /// values as JSON.
    #[arg(long)]
    pub select: Option<String>,
}

/// Opens a checkpoint read-only: refuses a missing file (creating nothing) and a newer
/// schema.
pub fn open(db: &Path) -> anyhow::Result<Connection> {
    if !db.is_file() {
        return Err(usage(format!(
            "no checkpoint at --db {}; give the --db of a snapshot (`coordinator run --db PATH`)",
            db.display()
        )));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags)
        .map_err(|e| usage(format!("cannot open --db {}: {e}", db.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let tables = crate::checkpoint::schema::has_tables(&conn)
        .map_err(|e| usage(format!("--db {} is not a checkpoint: {e}", db.display())))?;
    if !tables {
        return Err(usage(format!(
            "--db {} is not a checkpoint (no meta table)",
            db.display()
        )));
    }
    crate::checkpoint::schema::check_version(&conn, &db.display().to_string())
        .map_err(|e| usage(e.to_string()))?;
    Ok(conn)
}

/// Ends a command writing to stdout: a closed pipe (`| head`) is a quiet success.
pub fn finish(result: io::Result<()>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// `coordinator index`, on a blocking thread (the checkpoint cursor stays on it).
pub async fn index(args: IndexArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || index_rows(args)).await?
}

/// Every indexed name and revision, in key order (SQLite's BINARY collation on the
/// primary key, that is raw byte order), streamed row by row.
fn index_rows(args: IndexArgs) -> anyhow::Result<ExitCode> {
    let conn = open(&args.db.db)?;
    // Names a `--names` run added have no indexed revision until an index pass lists them.
    let sql = format!(
        "SELECT name, indexed_rev FROM packages WHERE {LIVE} AND indexed_rev != '' ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = (|| -> anyhow::Result<io::Result<()>> {
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let rev: String = row.get(1)?;
            let line = match args.format {
                IndexFormat::Lines => writeln!(out, "{name}\t{rev}"),
                IndexFormat::Json => {
                    let v = serde_json::json!({ "name": name, "rev": rev });
                    writeln!(out, "{v}")
                }
            };
            if let Err(e) = line {
                return Ok(Err(e));
            }
        }
        Ok(out.flush())
    })()?;
    finish(written)
}

/// The store a checkpoint records (`meta` key `--store`), opened.
pub fn recorded_store(conn: &Connection) -> anyhow::Result<Store> {
    let url: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = '--store'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let url = url.ok_or_else(|| {
        anyhow::anyhow!("the checkpoint records no --store; run `coordinator run` on it first")
    })?;
    Store::open_to_read(&url)
        .map_err(|e| anyhow::anyhow!("cannot open the store this checkpoint records ({url}): {e}"))
}

/// `coordinator show`: one stored packument's bytes, or a field of it.
pub async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    let (store, state) = {
        let conn = open(&args.db.db)?;
        (recorded_store(&conn)?, snapshot::lookup(&conn, name)?)
    };
    let stored = match state {
        None => anyhow::bail!(
            "`{name}` is not in the snapshot; check the spelling with `coordinator index | grep`"
        ),
        Some((status, _, stored)) if status == "stored" => stored,
        Some((status, last_error, _)) => anyhow::bail!("{}", not_stored(name, &status, last_error)),
    };
    let bytes = snapshot::read(&store, &stored).await?;
    let mut out = io::stdout().lock();
    let written = match &args.select {
        None => out.write_all(&bytes),
        Some(path) => {
            let text = select(&bytes, path).map_err(|e| e.context(format!("`{name}`")))?;
            writeln!(out, "{text}")
        }
    };
    finish(written.and_then(|()| out.flush()))
}

/// Why a name in the index has no stored document, and what to do.
fn not_stored(name: &str, status: &str, last_error: Option<String>) -> String {
    match status {
        "missing" => format!(
            "`{name}` is missing: the registry listed it but answered {} for its packument; \
             nothing to show (the next `coordinator run` on this --db asks again)",
            last_error.as_deref().unwrap_or("not found")
        ),
        "removed" | "deleted" => format!(
            "`{name}` is not in the snapshot: {}; its last stored object, if any, is kept in \
             the store unless `serve --follow --delete-objects` removed it",
            if status == "removed" {
                "the registry's index no longer lists it"
            } else {
                "the _changes feed said it was deleted"
            }
        ),
        "failed" => format!(
            "`{name}` failed to fetch ({}); rerun `coordinator run` on this --db to retry it",
            last_error.as_deref().unwrap_or("no error recorded")
        ),
        _ => format!(
            "`{name}` is {status}: not fetched yet; let the run finish (`coordinator status`) \
             or rerun `coordinator run` on this --db"
        ),
    }
}

/// The field at a dotted path: a string raw, anything else as JSON. A key that itself
/// holds dots (a version such as `1.0.0`) is matched whole, longest first.
pub fn select(bytes: &[u8], path: &str) -> anyhow::Result<String> {
    let doc: serde_json::Value = serde_json::from_slice(bytes)?;
    let parts: Vec<&str> = path.split('.').collect();
    let (mut at, mut i) = (&doc, 0);
    while i < parts.len() {
        let step = (i + 1..=parts.len()).rev().find_map(|j| {
            let key = parts[i..j].join(".");
            let item = key.parse::<usize>().ok().and_then(|n| at.get(n));
            item.or_else(|| at.get(&key)).map(|v| (v, j))
        });
        let (next, j) = step.ok_or_else(|| {
            anyhow::anyhow!("the document has no field `{path}` (no `{}`)", parts[i])
        })?;
        (at, i) = (next, j);
    }
    Ok(match at {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
