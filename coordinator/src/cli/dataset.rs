//! `coordinator export --format parquet --out DIR|URL`: every stored packument as rows of
//! six Parquet tables ([`super::tables`]), each packument parsed on its own
//! ([`super::rows`]); what was odd in one goes to `problems.parquet` and the summary, never
//! stops the export. To a bucket, the files are written to a local temporary directory
//! first, then uploaded in parts.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use alldocs_fetcher::store::{Store, StoreLocation};
use rusqlite::Connection;

use super::{
    rows::{instant_ms, Rows},
    snapshot,
    tables::{self, Cell, Table},
};
use crate::run::{args::usage, display::ProgressMode};

/// What `export --format parquet` is asked.
pub struct Request {
    pub db: PathBuf,
    pub out: String,
    /// Milliseconds since the Unix epoch.
    pub since: Option<i64>,
    pub order: snapshot::Order,
    pub progress: ProgressMode,
}

/// `--since`: an RFC 3339 UTC instant or a date (`2024-05-01`, midnight UTC).
pub fn parse_since(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        t.to_string()
    };
    instant_ms(&full).ok_or_else(|| {
        format!("`{s}` is not an instant: give a UTC time such as 2024-05-01T12:00:00Z or a date such as 2024-05-01")
    })
}

/// The six tables being written.
struct Tables {
    packages: Table,
    versions: Table,
    dependencies: Table,
    maintainers: Table,
    dist_tags: Table,
    problems: Table,
}

impl Tables {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            packages: Table::create(dir, "packages", tables::PACKAGES)?,
            versions: Table::create(dir, "versions", tables::VERSIONS)?,
            dependencies: Table::create(dir, "dependencies", tables::DEPENDENCIES)?,
            maintainers: Table::create(dir, "maintainers", tables::MAINTAINERS)?,
            dist_tags: Table::create(dir, "dist_tags", tables::DIST_TAGS)?,
            problems: Table::create(dir, "problems", tables::PROBLEMS)?,
        })
    }

    fn push(
        &mut self,
        name: &str,
        bytes: u64,
        digest: Option<&[u8]>,
        r: &Rows,
    ) -> anyhow::Result<()> {
        use Cell::*;
        let p = &r.package;
        let sha256 = digest.map(hex::encode);
        self.packages.push(&[
            Str(Some(name)),
            Str(p.rev.as_deref()),
            Ts(p.created),
            Ts(p.modified),
            Str(p.latest.as_deref()),
            Str(p.description.as_deref()),
            Str(p.license.as_deref()),
            Str(p.repository.as_deref()),
            Str(p.homepage.as_deref()),
            I32(Some(p.versions)),
            StrList(&p.maintainers),
            I64(Some(bytes as i64)),
            Str(sha256.as_deref()),
        ])?;
        for v in &r.versions {
            self.versions.push(&[
                Str(Some(name)),
                Str(Some(&v.version)),
                Ts(v.published),
                Str(v.deprecated.as_deref()),
                Str(v.license.as_deref()),
                Str(v.tarball.as_deref()),
                Str(v.integrity.as_deref()),
                Str(v.shasum.as_deref()),
                I64(v.unpacked_size),
                I64(v.file_count),
                Bool(v.install_scripts),
                Str(v.engines.as_deref()),
                Str(v.npm_user.as_deref()),
            ])?;
        }
        for d in &r.dependencies {
            let (version, kind) = (Some(d.version.as_str()), Some(d.kind));
            let range = d.range.as_deref();
            self.dependencies.push(&[
                Str(Some(name)),
                Str(version),
                Str(kind),
                Str(Some(&d.dependency)),
                Str(range),
            ])?;
        }
        for m in &r.maintainers {
            let row = [
                Str(Some(name)),
                Str(m.name.as_deref()),
                Str(m.email.as_deref()),
            ];
            self.maintainers.push(&row)?;
        }
        for (tag, version) in &r.dist_tags {
            self.dist_tags
                .push(&[Str(Some(name)), Str(Some(tag)), Str(Some(version))])?;
        }
        for q in &r.problems {
            self.problems.push(&[
                Str(Some(name)),
                Str(q.version.as_deref()),
                Str(Some(&q.field)),
                Str(Some(q.kind)),
                Str(Some(&q.detail)),
            ])?;
        }
        Ok(())
    }

    /// Closes every file: (file, rows) in order.
    fn finish(self) -> anyhow::Result<Vec<(PathBuf, u64)>> {
        let mut out = Vec::new();
        for t in [
            self.packages,
            self.versions,
            self.dependencies,
            self.maintainers,
            self.dist_tags,
            self.problems,
        ] {
            let (rows, path) = t.finish()?;
            out.push((path, rows));
        }
        Ok(out)
    }
}

/// Where the files go.
enum Out {
    Dir(PathBuf),
    /// A bucket: staged in a temporary directory, then uploaded.
    Bucket(Store, tempfile::TempDir),
}

impl Out {
    async fn open(url: &str) -> anyhow::Result<Self> {
        match StoreLocation::parse(url).map_err(|e| usage(format!("--out: {e}")))? {
            StoreLocation::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    usage(format!(
                        "--out {}: cannot create the directory ({e})",
                        dir.display()
                    ))
                })?;
                Ok(Out::Dir(dir))
            }
            _ => {
                crate::run::preflight::check_store(url)
                    .await
                    .map_err(|e| usage(e.replace("--store", "--out")))?;
                let store = Store::open(url).map_err(|e| usage(format!("--out: {e}")))?;
                Ok(Out::Bucket(store, tempfile::tempdir()?))
            }
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Out::Dir(dir) => dir,
            Out::Bucket(_, staging) => staging.path(),
        }
    }

    /// Uploads the staged files (a directory has them already); where they are.
    async fn publish(&self, files: &[(PathBuf, u64)]) -> anyhow::Result<String> {
        let Out::Bucket(store, _) = self else {
            return Ok(self.dir().display().to_string());
        };
        for (file, _) in files {
            let name = file.file_name().expect("a file name").to_string_lossy();
            let path = object_store::path::Path::from(name.as_ref());
            let mut to =
                object_store::buffered::BufWriter::new(store.object_store().clone(), path.clone());
            let mut from = tokio::fs::File::open(file).await?;
            let uploaded = async {
                tokio::io::copy(&mut from, &mut to).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut to).await
            };
            uploaded
                .await
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", store.uri(&path)))?;
        }
        Ok(store.uri(&object_store::path::Path::from("")))
    }
}

/// Writes the tables; prints what was written and what was odd.
pub async fn export(req: Request) -> anyhow::Result<ExitCode> {
    let conn = super::read::open(&req.db)?;
    let store = super::read::recorded_store(&conn)?;
    let out = Out::open(&req.out).await?;
    let dir = out.dir().to_path_buf();
    let rt = tokio::runtime::Handle::current();
    let (since, order, progress) = (req.since, req.order, req.progress);
    let started = Instant::now();
    let (files, tally) = tokio::task::spawn_blocking(move || {
        write_tables(&conn, &store, &rt, &dir, since, order, progress)
    })
    .await??;
    let at = out.publish(&files).await?;
    println!("{}", summary(&at, &files, &tally, started.elapsed()));
    Ok(ExitCode::SUCCESS)
}

/// What an export saw.
#[derive(Default)]
struct Tally {
    packages: u64,
    bytes: u64,
    /// Left out by `--since` (modified before it, or no `time.modified`).
    older: u64,
    problems: BTreeMap<&'static str, u64>,
}

fn write_tables(
    conn: &Connection,
    store: &Store,
    rt: &tokio::runtime::Handle,
    dir: &Path,
    since: Option<i64>,
    order: snapshot::Order,
    progress: ProgressMode,
) -> anyhow::Result<(Vec<(PathBuf, u64)>, Tally)> {
    let mut tables = Tables::create(dir)?;
    let mut tally = Tally::default();
    let mut shown = Progress::new(conn, progress)?;
    snapshot::each_stored(conn, store, rt, order, |name, raw, digest| {
        let rows = Rows::of(raw);
        shown.tick(raw.len() as u64);
        if let Some(since) = since {
            if rows.package.modified.is_none_or(|m| m < since) {
                tally.older += 1;
                return Ok(true);
            }
        }
        tally.packages += 1;
        tally.bytes += raw.len() as u64;
        for p in &rows.problems {
            *tally.problems.entry(p.kind).or_default() += 1;
        }
        tables.push(name, raw.len() as u64, digest, &rows)?;
        Ok(true)
    })?;
    shown.done();
    Ok((tables.finish()?, tally))
}

fn summary(at: &str, files: &[(PathBuf, u64)], tally: &Tally, took: Duration) -> String {
    let mut line = format!(
        "exported {} packages ({} of JSON) to {at} in {:.1}s:",
        tally.packages,
        bytesize::ByteSize(tally.bytes),
        took.as_secs_f64()
    );
    for (file, rows) in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        line.push_str(&format!(" {name} {rows} rows,"));
    }
    line.pop();
    if tally.older > 0 {
        line.push_str(&format!(
            "; {} not modified since --since left out",
            tally.older
        ));
    }
    if tally.problems.is_empty() {
        line.push_str("; no problems");
    } else {
        let kinds: Vec<String> = (tally.problems.iter())
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        line.push_str(&format!(
            "; problems (see problems.parquet): {}",
            kinds.join(", ")
        ));
    }
    line
}

/// As `run` shows it: a bar on a terminal (or with `--progress bars`), else a line every
/// few seconds on stderr (or with `--progress lines`); nothing with `none`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: Option<(Instant, u64, u64)>,
    total: u64,
}

/// How often `--progress lines` prints.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(conn: &Connection, mode: ProgressMode) -> rusqlite::Result<Self> {
        let total: i64 = conn.query_row(
            "SELECT COALESCE(SUM(bytes), 0) FROM packages WHERE status = 'stored'",
            [],
            |r| r.get(0),
        )?;
        let total = total as u64;
        let bars = match mode {
            ProgressMode::Bars => true,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Lines | ProgressMode::None => false,
        };
        let bar = bars.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "export {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("a valid template");
            bar.set_style(style);
            bar
        });
        let lines = (matches!(mode, ProgressMode::Lines) || (mode == ProgressMode::Auto && !bars))
            .then(|| (Instant::now(), 0, 0));
        Ok(Self { bar, lines, total })
    }

    fn tick(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        if let Some((last, done, packages)) = &mut self.lines {
            *done += bytes;
            *packages += 1;
            if last.elapsed() >= LINE_EVERY {
                *last = Instant::now();
                eprintln!(
                    "export: {packages} packages, {} of {} of JSON",
                    bytesize::ByteSize(*done),
                    bytesize::ByteSize(self.total)
                );
            }
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
