//! `coordinator verify`: every stored package's object is in the store, and its bytes
//! have the length and SHA-256 the checkpoint recorded, packs and files alike. Packs are
//! read one at a time, whole and in the order they were sealed, and their frames decoded
//! and hashed across the cores; files are read a few at a time. `--sample N` also asks the
//! registry for N stored names at random ([`super::sample`]). Reads only.

use std::{process::ExitCode, time::Instant};

use alldocs_fetcher::store::{
    pack::{self, PackError},
    packument_path, Store,
};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use rusqlite::Connection;

use super::{
    findings::{text, Report},
    packs::{has_packs, split_by_bytes},
    read::{open, recorded_store, DbArg},
    snapshot::pack_path,
};

/// Exit code when a stored object is missing or damaged.
pub const DAMAGED: u8 = 4;
/// Exit code when every object is sound but `--sample` found stale or gone names.
pub const STALE: u8 = 5;

/// Files read at once.
const FILE_READS: usize = 16;
/// Files checked per round of reads.
const FILE_CHUNK: usize = 512;

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum VerifyFormat {
    /// A summary line, then the names of what is wrong, one a line.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Also ask the registry for this many stored names, chosen at random, and report
    /// those whose stored revision is no longer the registry's (0: ask nothing).
    #[arg(long, default_value_t = 0)]
    pub sample: u64,
    /// The registry --sample asks. Default: the --registry the checkpoint records.
    #[arg(long)]
    pub registry: Option<String>,
    /// Requests per second of --sample (0 = no limit).
    #[arg(long, default_value_t = 10.0, value_parser = crate::run::args::parse_rate_limit)]
    pub rate_limit: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: VerifyFormat,
    /// Names listed, each with what is wrong; the rest are counted.
    #[arg(long, default_value_t = 50)]
    pub max_listed: usize,
}

/// A stored package as verify checks it.
struct Item {
    name: String,
    bytes: u64,
    sha256: Option<Vec<u8>>,
    offset: u64,
    length: u64,
}

/// `coordinator verify`.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let conn = open(&args.db.db)?;
    let store = recorded_store(&conn)?;
    let registry = super::sample::registry_of(&conn, args.registry.as_deref(), args.sample)?;
    let rt = tokio::runtime::Handle::current();
    let max_listed = args.max_listed;
    let (conn, store, mut report) = tokio::task::spawn_blocking(move || {
        let mut report = Report {
            max_listed,
            ..Default::default()
        };
        check_storage(&conn, &store, &rt, &mut report).map(|()| (conn, store, report))
    })
    .await??;
    if let Some(registry) = registry {
        let picked = super::sample::pick(&conn, args.sample)?;
        drop(conn);
        super::sample::ask(&store, &picked, &registry, args.rate_limit, &mut report).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    match args.format {
        VerifyFormat::Json => println!("{}", serde_json::to_string(&report)?),
        VerifyFormat::Text => print!("{}", text(&report)),
    }
    Ok(report.code())
}

fn check_storage(
    conn: &Connection,
    store: &Store,
    rt: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let read = conn.unchecked_transaction()?;
    let packed = has_packs(&read)?;
    if packed {
        check_packs(&read, store, rt, report)?;
    }
    let sql = if packed {
        "SELECT name, bytes, sha256 FROM packages WHERE status = 'stored' AND pack IS NULL ORDER BY name"
    } else {
        "SELECT name, bytes, NULL FROM packages WHERE status = 'stored' ORDER BY name"
    };
    let mut stmt = read.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut chunk = Vec::with_capacity(FILE_CHUNK);
    loop {
        let row = rows.next()?;
        if let Some(r) = row {
            chunk.push(Item {
                name: r.get(0)?,
                bytes: r.get::<_, i64>(1)? as u64,
                sha256: r.get(2)?,
                offset: 0,
                length: 0,
            });
        }
        if chunk.len() >= FILE_CHUNK || (row.is_none() && !chunk.is_empty()) {
            rt.block_on(check_files(store, &chunk, report));
            chunk.clear();
        }
        if row.is_none() {
            return Ok(());
        }
    }
}

/// Every pack's stored packages, grouped pack by pack in the order they were sealed.
fn check_packs(
    conn: &Connection,
    store: &Store,
    rt: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT p.name, p.bytes, p.sha256, p.pack, k.uri, k.bytes, p.pack_offset, p.pack_length
         FROM packages p LEFT JOIN packs k ON k.id = p.pack
         WHERE p.status = 'stored' AND p.pack IS NOT NULL ORDER BY p.pack, p.pack_offset",
    )?;
    let mut rows = stmt.query([])?;
    let mut current: Option<(i64, Option<String>, u64)> = None;
    let mut items = Vec::new();
    loop {
        let row = rows.next()?;
        let pack = match row {
            Some(r) => Some((
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
            )),
            None => None,
        };
        if current.as_ref().map(|c| c.0) != pack.as_ref().map(|p| p.0) {
            if let Some((id, uri, bytes)) = current.take() {
                check_pack(store, rt, id, uri, bytes, &items, report);
                items.clear();
            }
            current = pack;
        }
        let Some(r) = row else { return Ok(()) };
        items.push(Item {
            name: r.get(0)?,
            bytes: r.get::<_, i64>(1)? as u64,
            sha256: r.get(2)?,
            offset: r.get::<_, i64>(6)? as u64,
            length: r.get::<_, i64>(7)? as u64,
        });
    }
}

fn check_pack(
    store: &Store,
    rt: &tokio::runtime::Handle,
    id: i64,
    uri: Option<String>,
    recorded: u64,
    items: &[Item],
    report: &mut Report,
) {
    report.packs += 1;
    report.packages += items.len() as u64;
    let all = |report: &mut Report, kind, detail: &str| {
        for item in items {
            report.note(&item.name, kind, detail.to_string(), false);
        }
    };
    let Some(uri) = uri else {
        let detail = format!("the checkpoint records no pack {id}");
        return all(report, "missing", &detail);
    };
    let read = pack_path(store, &uri).and_then(|path| {
        rt.block_on(store.get(&path)).map_err(|e| match e {
            object_store::Error::NotFound { .. } => anyhow::anyhow!("missing"),
            e => anyhow::anyhow!("{e}"),
        })
    });
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(e) if e.to_string() == "missing" => {
            return all(
                report,
                "missing",
                &format!("its pack {uri} is not in the store"),
            );
        }
        Err(e) => return all(report, "unreadable", &format!("its pack {uri}: {e:#}")),
    };
    let short = (bytes.len() as u64) < recorded;
    let outcomes = split_by_bytes(
        items,
        |i| i.bytes,
        |item| frame_of(&bytes, &uri, item, short),
    );
    for (item, outcome) in items.iter().zip(outcomes) {
        count(report, item);
        if let Err((kind, detail)) = outcome {
            report.note(&item.name, kind, detail, false);
        }
    }
}

fn count(report: &mut Report, item: &Item) {
    match item.sha256 {
        Some(_) => report.bytes_hashed += item.bytes,
        None => report.without_digest += 1,
    }
}

/// One frame of a pack decoded and checked; the decoded bytes are dropped at once.
fn frame_of(
    pack: &Bytes,
    uri: &str,
    item: &Item,
    short: bool,
) -> Result<(), (&'static str, String)> {
    let end = item
        .offset
        .checked_add(item.length)
        .filter(|e| *e <= pack.len() as u64);
    let Some(end) = end else {
        let kind = if short { "truncated" } else { "damaged" };
        let detail = format!(
            "its frame (bytes {}..{}) lies beyond the end of the pack {uri} ({} bytes)",
            item.offset,
            item.offset + item.length,
            pack.len()
        );
        return Err((kind, detail));
    };
    let frame = &pack[item.offset as usize..end as usize];
    let digest = item.sha256.as_deref().unwrap_or_default();
    match pack::decode(frame, &item.name, uri, item.bytes, digest) {
        Ok(_) => Ok(()),
        Err(e @ PackError::Digest { .. }) => Err(("digest", e.to_string())),
        Err(e) => Err(("damaged", e.to_string())),
    }
}

/// A round of files, read a few at a time.
async fn check_files(store: &Store, items: &[Item], report: &mut Report) {
    let outcomes: Vec<_> = futures::stream::iter(items)
        .map(|item| async move { check_file(store, item).await })
        .buffered(FILE_READS)
        .collect()
        .await;
    for (item, outcome) in items.iter().zip(outcomes) {
        report.files += 1;
        report.packages += 1;
        count(report, item);
        if let Err((kind, detail)) = outcome {
            report.note(&item.name, kind, detail, false);
        }
    }
}

async fn check_file(store: &Store, item: &Item) -> Result<(), (&'static str, String)> {
    let path = packument_path(&item.name);
    let uri = store.uri(&path);
    let bytes = store.get(&path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => {
            ("missing", format!("its object {uri} is not in the store"))
        }
        e => ("unreadable", format!("its object {uri}: {e}")),
    })?;
    if bytes.len() as u64 != item.bytes {
        let kind = if (bytes.len() as u64) < item.bytes {
            "truncated"
        } else {
            "length"
        };
        let detail = format!(
            "its object {uri} is {} bytes, the checkpoint recorded {}",
            bytes.len(),
            item.bytes
        );
        return Err((kind, detail));
    }
    let digest = item.sha256.as_deref().unwrap_or_default();
    pack::check_digest(&bytes, &item.name, &uri, digest).map_err(|e| ("digest", e.to_string()))
}
