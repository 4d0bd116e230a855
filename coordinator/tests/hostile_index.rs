//! `coordinator run` against hostile `_all_docs` origins on loopback: each misbehaviour
//! fails the partition after `--max-attempts` with a reason naming it (never done short),
//! no row over the bounds reaches the checkpoint, and the coordinator's peak memory
//! (VmHWM) stays far below what the origin sends.

use std::{path::Path, time::Duration};

use alldocs_tests::{
    coord::job_args,
    hostile_origin::{names, Hostile, HostileOrigin},
    procs::Listening,
};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// The coordinator's peak resident memory may not exceed this.
const MAX_PEAK_KIB: u64 = 256 << 10;

/// What one `coordinator run` left behind.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    /// Peak VmHWM seen while the process ran, in KiB.
    peak_kib: u64,
    /// status, attempts, last error of the partition `[n, —)` that holds every name.
    partition: (String, i64, String),
    packages: i64,
    longest_name: i64,
    longest_rev: i64,
    checkpoint_bytes: u64,
}

/// Runs the coordinator against `origin` with 10-row pages and two attempts per item.
async fn run_against(origin: &HostileOrigin) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let extra = ["--pivots", "n", "--page-size", "10", "--max-attempts", "2"];
    let child = Listening::start(
        &coordinator(),
        &job_args("run", dir.path(), &origin.url(), &extra),
        &[],
    )?;
    let (code, stdout, peak_kib) = tokio::task::spawn_blocking(move || watch(child)).await??;
    let db = dir.path().join("alldocs.sqlite");
    let conn = rusqlite::Connection::open(&db)?;
    let partition = conn.query_row(
        "SELECT status, attempts, COALESCE(last_error, '') FROM partitions WHERE name = 'n+'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (packages, longest_name, longest_rev) = conn.query_row(
        "SELECT COUNT(*), COALESCE(MAX(LENGTH(CAST(name AS BLOB))), 0),
                COALESCE(MAX(LENGTH(CAST(indexed_rev AS BLOB))), 0) FROM packages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    drop(conn);
    Ok(Outcome {
        code,
        stdout,
        peak_kib,
        partition,
        packages,
        longest_name,
        longest_rev,
        checkpoint_bytes: file_len(&db) + file_len(&dir.path().join("alldocs.sqlite-wal")),
    })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Samples the child's VmHWM (a high-water mark, so any sample after the peak sees it)
/// until it exits; returns its exit code, stdout and the last mark.
fn watch(mut child: Listening) -> anyhow::Result<(i32, String, u64)> {
    let status = format!("/proc/{}/status", child.child.id());
    let mut peak = 0;
    while child.is_running() {
        let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, stdout) = child.wait()?;
    Ok((code, stdout, peak))
}

/// The common assertions for an origin that misbehaves: exit 3 (finished with failed
/// items), the partition failed
/// after both attempts with `reason`, the reason in the summary, and bounded memory.
fn assert_refused(out: &Outcome, origin: &HostileOrigin, reason: &str) {
    assert_eq!(out.code, 3, "{out:?}");
    let (status, attempts, error) = &out.partition;
    assert_eq!((status.as_str(), *attempts), ("failed", 2), "{out:?}");
    assert!(error.contains(reason), "{error:?} names {reason:?}");
    assert!(
        out.stdout.contains("partition n+:") && out.stdout.contains(reason),
        "{}",
        out.stdout
    );
    assert!(out.longest_name <= 214 && out.longest_rev <= 256, "{out:?}");
    assert!(
        out.peak_kib > 0 && out.peak_kib < MAX_PEAK_KIB,
        "peak RSS {} KiB",
        out.peak_kib
    );
    // Both attempts asked for the partition's first page.
    let first_pages = origin
        .queries()
        .iter()
        .filter(|q| q.starts_with("startkey=%22n%22&"))
        .count();
    assert_eq!(first_pages, 2, "{:?}", origin.queries());
    eprintln!(
        "{reason}: peak RSS {} KiB, origin sent {} bytes",
        out.peak_kib,
        origin.bytes_sent()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_well_behaved_origin_is_indexed_whole() -> anyhow::Result<()> {
    // The control: the same origin without a misbehaviour yields all 30 names.
    let origin = HostileOrigin::start(Hostile::None).await?;
    let out = run_against(&origin).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.partition.0, "done");
    assert_eq!(out.packages, names().len() as i64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_ignores_startkey_fails_the_partition() -> anyhow::Result<()> {
    let origin = HostileOrigin::start(Hostile::IgnoresStartkey).await?;
    let out = run_against(&origin).await?;
    assert_refused(
        &out,
        &origin,
        "the origin ignored startkey: page 2 began at `n00`, before `n09`",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_repeats_a_page_fails_the_partition() -> anyhow::Result<()> {
    let origin = HostileOrigin::start(Hostile::RepeatsPage).await?;
    let out = run_against(&origin).await?;
    assert_refused(
        &out,
        &origin,
        "the origin served page 2 again as page 3, ignoring startkey `n19`",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_whose_offset_jumps_past_skipped_rows_fails_the_partition() -> anyhow::Result<()>
{
    let origin = HostileOrigin::start(Hostile::SkipsRows).await?;
    let out = run_against(&origin).await?;
    assert_refused(&out, &origin, "page 2 is at offset 15, expected 9");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_rev_is_refused_without_being_held() -> anyhow::Result<()> {
    let origin = HostileOrigin::start(Hostile::HugeRev(300 << 20)).await?;
    let out = run_against(&origin).await?;
    assert_refused(
        &out,
        &origin,
        "row 3 of the page: its `rev` is over 256 bytes (more than 1538 bytes)",
    );
    assert!(out.checkpoint_bytes < 1 << 20, "{out:?}");
    assert!(
        origin.bytes_sent() < 2 * (32 << 20),
        "{}",
        origin.bytes_sent()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_id_is_refused_without_being_held() -> anyhow::Result<()> {
    let origin = HostileOrigin::start(Hostile::HugeId(300 << 20)).await?;
    let out = run_against(&origin).await?;
    assert_refused(
        &out,
        &origin,
        "row 3 of the page: its `id` is over 214 bytes (more than 1538 bytes)",
    );
    assert!(out.checkpoint_bytes < 1 << 20, "{out:?}");
    assert!(
        origin.bytes_sent() < 2 * (32 << 20),
        "{}",
        origin.bytes_sent()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_mb_page_is_refused_at_the_cap() -> anyhow::Result<()> {
    let origin = HostileOrigin::start(Hostile::HugePage(500 << 20)).await?;
    let out = run_against(&origin).await?;
    assert_refused(&out, &origin, "the page's body is over 64 MiB");
    // Each attempt stopped reading near the cap, not at 500 MB.
    assert!(
        origin.bytes_sent() < 2 * (96 << 20),
        "{}",
        origin.bytes_sent()
    );
    Ok(())
}
