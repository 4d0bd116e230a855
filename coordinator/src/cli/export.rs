//! `coordinator export`: stored packuments as NDJSON, one document (or one version) a
//! line, in key order, one document in memory at a time.

use std::{
    io::{self, BufWriter, Write},
    process::ExitCode,
};

use alldocs_fetcher::store::packument_path;
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::cli::read::{finish, open, recorded_store, DbArg};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum ExportFormat {
    /// One JSON value a line.
    #[default]
    Ndjson,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ExportFormat,
    /// One row per version: name, version, published, dependencies, tarball, integrity.
    #[arg(long)]
    pub versions: bool,
}

/// Streams the export on a blocking thread (the checkpoint cursor stays on it).
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run(args, handle)).await?
}

fn run(args: ExportArgs, rt: tokio::runtime::Handle) -> anyhow::Result<ExitCode> {
    let conn = open(&args.db.db)?;
    let store = recorded_store(&conn)?;
    let mut stmt = conn.prepare(crate::checkpoint::STORED_NAMES)?;
    let mut rows = stmt.query([])?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let bytes = rt
            .block_on(store.get(&packument_path(&name)))
            .map_err(|e| {
                anyhow::anyhow!(
                "`{name}` is stored in the checkpoint but its object is not in the store ({e}); \
                 rerun `coordinator run` on this --db to fetch it again"
            )
            })?;
        let line = if args.versions {
            let doc: Value = serde_json::from_slice(&bytes).map_err(|e| not_json(&name, e))?;
            version_rows(&name, &doc)?
        } else {
            compact(&bytes).map_err(|e| not_json(&name, e))?
        };
        drop(bytes);
        if let Err(e) = out.write_all(&line) {
            return finish(Err(e));
        }
    }
    finish(out.flush())
}

fn not_json(name: &str, e: serde_json::Error) -> anyhow::Error {
    anyhow::anyhow!("`{name}`: the stored document is not JSON ({e})")
}

/// The document on one line, its keys in their stored order, then a newline.
fn compact(bytes: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(bytes.len() + 1);
    let mut from = serde_json::Deserializer::from_slice(bytes);
    let mut to = serde_json::Serializer::new(&mut line);
    serde_transcode::transcode(&mut from, &mut to)?;
    from.end()?;
    line.push(b'\n');
    Ok(line)
}

/// One `--versions` row, its fields in this order; what a document lacks is null.
#[derive(serde::Serialize)]
struct VersionRow<'a> {
    name: &'a str,
    version: &'a str,
    published: Option<&'a Value>,
    dependencies: Option<&'a Value>,
    tarball: Option<&'a Value>,
    integrity: Option<&'a Value>,
}

/// One row per version of a document (versions in byte order of their numbers), each
/// line ending in a newline.
fn version_rows(name: &str, doc: &Value) -> serde_json::Result<Vec<u8>> {
    let mut lines = Vec::new();
    let Some(versions) = doc.get("versions").and_then(Value::as_object) else {
        return Ok(lines);
    };
    for (version, manifest) in versions {
        let dist = manifest.get("dist");
        let row = VersionRow {
            name,
            version,
            published: doc.get("time").and_then(|t| t.get(version)),
            dependencies: manifest.get("dependencies"),
            tarball: dist.and_then(|d| d.get("tarball")),
            integrity: dist.and_then(|d| d.get("integrity")),
        };
        serde_json::to_writer(&mut lines, &row)?;
        lines.push(b'\n');
    }
    Ok(lines)
}
