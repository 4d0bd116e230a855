//! `coordinator export`: stored packuments as NDJSON, one document (or one version) a
//! line, in key order (or, with `--order packs`, pack by pack), one document (or one
//! pack) in memory at a time.

use std::{
    io::{self, BufWriter, Write},
    process::ExitCode,
};

use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::{
    cli::{
        read::{finish, open, recorded_store, DbArg},
        snapshot,
    },
    run::args::usage,
};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum ExportFormat {
    /// One JSON value a line, to stdout.
    #[default]
    Ndjson,
    /// Parquet tables (packages, versions, dependencies, maintainers, dist_tags,
    /// problems) written to --out.
    Parquet,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ExportFormat,
    /// With ndjson: one row per version: name, version, published, dependencies, tarball,
    /// integrity.
    #[arg(long)]
    pub versions: bool,
    /// key: in key order, as the index; packs: pack by pack, each read whole and
    /// sequentially (the fast way through a packed snapshot), then the files in key order.
    /// Default: key for ndjson, packs for parquet.
    #[arg(long, value_enum)]
    pub order: Option<snapshot::Order>,
    /// With parquet: the directory (created if missing) or bucket (gs://BUCKET/PREFIX,
    /// s3://BUCKET/PREFIX) the tables are written to, as NAME.parquet.
    #[arg(long)]
    pub out: Option<String>,
    /// With parquet: only packages whose `time.modified` is at or after this UTC instant
    /// (2024-05-01T12:00:00Z) or date (2024-05-01).
    #[arg(long, value_parser = crate::cli::dataset::parse_since)]
    pub since: Option<i64>,
    /// With parquet: a bar on a terminal, else a line every few seconds on stderr.
    #[arg(long, value_enum, default_value_t)]
    pub progress: crate::run::display::ProgressMode,
}

/// Streams the export on a blocking thread (the checkpoint cursor stays on it).
pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if let ExportFormat::Parquet = args.format {
        return parquet(args).await;
    }
    if args.out.is_some() || args.since.is_some() {
        return Err(usage(
            "--out and --since are options of --format parquet; NDJSON goes to stdout",
        ));
    }
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run(args, handle)).await?
}

async fn parquet(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.versions {
        return Err(usage(
            "--versions is an option of --format ndjson; the parquet export writes versions.parquet",
        ));
    }
    let Some(out) = args.out else {
        return Err(usage(
            "--format parquet writes files: give --out DIR (or gs://BUCKET/PREFIX, s3://BUCKET/PREFIX)",
        ));
    };
    crate::cli::dataset::export(crate::cli::dataset::Request {
        db: args.db.db,
        out,
        since: args.since,
        order: args.order.unwrap_or(snapshot::Order::Packs),
        progress: args.progress,
    })
    .await
}

fn run(args: ExportArgs, rt: tokio::runtime::Handle) -> anyhow::Result<ExitCode> {
    let conn = open(&args.db.db)?;
    let store = recorded_store(&conn)?;
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut written = Ok(());
    let order = args.order.unwrap_or_default();
    snapshot::each_stored(&conn, &store, &rt, order, |name, bytes, digest| {
        let line = if args.versions {
            let doc: Value = serde_json::from_slice(bytes).map_err(|e| not_json(name, e))?;
            version_rows(name, &doc)?
        } else {
            compact(bytes, digest.is_some()).map_err(|e| not_json(name, e))?
        };
        written = out.write_all(&line);
        Ok(written.is_ok())
    })?;
    finish(written.and_then(|()| out.flush()))
}

fn not_json(name: &str, e: serde_json::Error) -> anyhow::Error {
    anyhow::anyhow!("`{name}`: the stored document is not JSON ({e})")
}

/// The document on one line, its keys in their stored order, then a newline: as stored
/// when it is already compact (no whitespace between its tokens: the registry serves it
/// so), else re-serialized compactly.
fn compact(bytes: &[u8], checked: bool) -> serde_json::Result<Vec<u8>> {
    if checked && is_compact(bytes) {
        let mut line = Vec::with_capacity(bytes.len() + 1);
        line.extend_from_slice(bytes);
        line.push(b'\n');
        return Ok(line);
    }
    let mut line = Vec::with_capacity(bytes.len() + 1);
    let mut from = serde_json::Deserializer::from_slice(bytes);
    let mut to = serde_json::Serializer::new(&mut line);
    serde_transcode::transcode(&mut from, &mut to)?;
    from.end()?;
    line.push(b'\n');
    Ok(line)
}

/// Whether JSON `bytes` hold no whitespace outside strings (a JSON string holds no raw
/// control character, so no newline either). Inside a string it jumps to the next quote
/// or backslash.
fn is_compact(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                // To the closing quote, past escapes.
                at += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                        Some(i) if bytes[at + i] == b'\\' => at += i + 2,
                        Some(i) => {
                            at += i + 1;
                            break;
                        }
                        None => return false,
                    }
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => return false,
            _ => at += 1,
        }
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_documents_are_written_as_stored_and_others_re_serialized() {
        let stored = br#"{"a":"x y\" z","b":[1,2]}"#;
        assert!(is_compact(stored));
        assert_eq!(
            compact(stored, true).unwrap(),
            [&stored[..], b"\n"].concat()
        );
        for spaced in [&br#"{"a": 1}"#[..], b"{\"a\":1}\n", br#"{"a":[1, 2]}"#] {
            assert!(!is_compact(spaced), "{spaced:?}");
        }
        assert_eq!(
            compact(br#"{"a": [1, 2]}"#, true).unwrap(),
            b"{\"a\":[1,2]}\n"
        );
        // Unchecked bytes (no digest recorded) are always parsed.
        assert!(compact(br#"{"a":1"#, false).is_err());
    }
}
