//! `coordinator export`: stored packuments as NDJSON, one document (or one version) a
//! line, in key order, one document in memory at a time.

use std::{
    io::{self, BufWriter, Write},
    process::ExitCode,
};

use alldocs_fetcher::store::packument_path;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::read::{finish, open, recorded_store, DbArg};

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
    let mut stmt =
        conn.prepare("SELECT name FROM packages WHERE status = 'stored' ORDER BY name")?;
    let mut rows = stmt.query([])?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let bytes = rt
            .block_on(store.get(&packument_path(&name)))
            .map_err(|e| anyhow::anyhow!("`{name}`: its object is not in the store: {e}"))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("`{name}`: the stored document is not JSON: {e}"))?;
        drop(bytes);
        let written = if args.versions {
            write_versions(&mut out, &name, &doc)
        } else {
            serde_json::to_writer(&mut out, &doc)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
        };
        if let Err(e) = written {
            return finish(Err(e));
        }
    }
    finish(out.flush())
}

/// One row per version of a document; fields the document lacks are null.
fn write_versions(out: &mut impl Write, name: &str, doc: &Value) -> io::Result<()> {
    let Some(versions) = doc.get("versions").and_then(Value::as_object) else {
        return Ok(());
    };
    for (version, manifest) in versions {
        let dist = manifest.get("dist");
        let row = json!({
            "name": name,
            "version": version,
            "published": doc.get("time").and_then(|t| t.get(version)),
            "dependencies": manifest.get("dependencies"),
            "tarball": dist.and_then(|d| d.get("tarball")),
            "integrity": dist.and_then(|d| d.get("integrity")),
        });
        serde_json::to_writer(&mut *out, &row)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
