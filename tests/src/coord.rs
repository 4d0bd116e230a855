//! Helpers for tests that run a coordinator: its command line, waiting on its progress
//! stream, and reading what it left in the store and the checkpoint.

use std::{collections::BTreeMap, path::Path};

use alldocs_proto::v1::{
    coordinator_client::CoordinatorClient, Progress, RunState, WatchProgressRequest,
};

use crate::procs::args;

/// Common options: a private checkpoint and store, a free port, no progress bars; an
/// option in `extra` replaces the common one of the same name.
pub fn job_args(cmd: &str, dir: &Path, origin: &str, extra: &[&str]) -> Vec<String> {
    let base = args(&[
        "--listen",
        "127.0.0.1:0",
        "--db",
        dir.join("alldocs.sqlite").to_str().unwrap(),
        "--store",
        dir.join("data").to_str().unwrap(),
        "--replicate-origin",
        origin,
        "--registry",
        origin,
        "--rate-limit",
        "0",
        "--progress",
        "none",
        "--retry-base",
        "10ms",
    ]);
    let mut a = vec![cmd.to_string()];
    for pair in base.chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            a.extend_from_slice(pair);
        }
    }
    a.extend(args(extra));
    a
}

/// Follows WatchProgress until the run is done; returns the last progress.
pub async fn wait_done(url: &str) -> anyhow::Result<Progress> {
    let mut client = CoordinatorClient::connect(url.to_string()).await?;
    let mut stream = client
        .watch_progress(WatchProgressRequest { interval_ms: 100 })
        .await?
        .into_inner();
    let mut last = None;
    while let Some(p) = stream.message().await? {
        let done = p.state == RunState::Done as i32;
        last = Some(p);
        if done {
            break;
        }
    }
    let last = last.expect("at least one progress message");
    assert_eq!(
        last.state,
        RunState::Done as i32,
        "WatchProgress ends when the run is done"
    );
    Ok(last)
}

/// Follows WatchProgress until `pred` holds.
pub async fn wait_until(url: &str, pred: impl Fn(&Progress) -> bool) -> anyhow::Result<Progress> {
    let mut client = CoordinatorClient::connect(url.to_string()).await?;
    let mut stream = client
        .watch_progress(WatchProgressRequest { interval_ms: 50 })
        .await?
        .into_inner();
    while let Some(p) = stream.message().await? {
        if pred(&p) {
            return Ok(p);
        }
    }
    anyhow::bail!("the run ended before the condition held")
}

/// Every packument a local store holds, by package name, whatever its layout: each
/// `packuments/**.json` (keys decoded), and each packument in the packs under
/// `packs/**.pack` (decoded frame by frame with zstd, its length and SHA-256 checked
/// against the pack's own trailer), packs read in name order, so that a later copy of a
/// package (a rerun's) replaces an earlier one.
pub fn stored_files(data: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), out);
            } else if let Some(stem) = name.strip_suffix(".json") {
                let key = format!("{prefix}{stem}");
                let name = alldocs_fetcher::store::names::decode_key(&key).unwrap_or(key);
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    for pack in pack_files(data) {
        for (name, raw) in unpack_file(&pack) {
            out.insert(name, raw);
        }
    }
    walk(&data.join("packuments"), "", &mut out);
    out
}

/// Every `packs/**.pack` of a local store, in name order.
pub fn pack_files(data: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "pack") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("packs"), &mut out);
    out.sort();
    out
}

/// The packuments of one pack file, in its trailer's order; panics on a damaged pack.
pub fn unpack_file(pack: &Path) -> Vec<(String, Vec<u8>)> {
    unpack_bytes(&std::fs::read(pack).unwrap(), &pack.display().to_string())
}

/// The packuments of one pack (its bytes, named `uri` in panics), in its trailer's order.
pub fn unpack_bytes(bytes: &[u8], uri: &str) -> Vec<(String, Vec<u8>)> {
    use alldocs_fetcher::store::pack;
    let uri = uri.to_string();
    let footer = bytes.len() - pack::FOOTER_BYTES as usize;
    let len = pack::footer_len(&bytes[footer..], &uri).unwrap() as usize;
    let trailer = pack::parse_trailer(&bytes[footer - len..footer], &uri).unwrap();
    trailer
        .entries
        .into_iter()
        .map(|e| {
            let frame = &bytes[e.offset as usize..(e.offset + e.length) as usize];
            let raw = zstd::stream::decode_all(frame).unwrap();
            assert_eq!(raw.len() as u64, e.raw_length, "{} in {uri}", e.name);
            assert_eq!(pack::sha256_hex(&raw), e.sha256, "{} in {uri}", e.name);
            (e.name, raw)
        })
        .collect()
}

/// The statuses the checkpoint holds, read straight from the SQLite file.
pub fn checkpoint_statuses(db: &Path) -> BTreeMap<String, String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT name, status FROM packages").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Everything the checkpoint holds, as text, for before/after comparisons.
pub fn checkpoint_dump(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut out = Vec::new();
    for table in ["meta", "partitions", "packages", "leases"] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                Ok((0..columns)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        out.extend(rows.map(|r| format!("{table}: {}", r.unwrap())));
    }
    out
}
