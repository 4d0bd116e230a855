//! `bench --dataset`: from snapshot to dataset. A real snapshot (`coordinator run`) of the
//! 45 real fixtures in pouchdb-server and of `--packages` simulated packuments of
//! `--mean-bytes`, each then exported with `coordinator export --format parquet` (seconds,
//! packuments/s, MB/s of raw JSON, the process's peak RSS, Parquet bytes over raw bytes)
//! and checked with `coordinator verify` (MB/s hashed, peak RSS), beside `sha256sum` over
//! the same raw bytes in the same run: over the snapshot unpacked to files, and over one
//! file holding them end to end (the hash alone); each read once first, so the page cache
//! holds them as it holds the packs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use alldocs_tests::{
    coord::job_args,
    fixtures,
    pouch::PouchServer,
    sim::{SimConfig, SimServer},
};
use anyhow::{Context, Result};
use serde::Serialize;

/// One set's figures.
#[derive(Debug, Serialize)]
pub struct Figures {
    pub set: String,
    pub packuments: u64,
    pub raw_bytes: u64,
    pub export_seconds: f64,
    pub export_packuments_per_second: f64,
    pub export_mb_per_second: f64,
    pub export_peak_rss_kb: u64,
    pub parquet_bytes: u64,
    pub parquet_over_raw: f64,
    pub export_summary: String,
    pub verify_seconds: f64,
    pub verify_bytes_hashed: u64,
    pub verify_mb_per_second: f64,
    pub verify_peak_rss_kb: u64,
    /// `sha256sum` over the unpacked files, a file each.
    pub sha256sum_seconds: f64,
    pub sha256sum_mb_per_second: f64,
    /// `sha256sum` over one file holding the same bytes end to end: the hash alone.
    pub sha256sum_one_file_mb_per_second: f64,
    /// Against the stricter of the two (the one file).
    pub verify_over_sha256sum: f64,
}

/// Both sets, in `workdir`.
pub async fn run(
    coordinator: &Path,
    packages: usize,
    mean_bytes: usize,
    workdir: &Path,
) -> Result<Vec<Figures>> {
    let real = workdir.join("fixtures");
    std::fs::create_dir_all(&real)?;
    let peer = PouchServer::start().await?;
    peer.load(fixtures::as_couch_docs(&fixtures::packuments()?))
        .await?;
    snapshot(coordinator, &real, &peer.db_url())?;
    drop(peer);
    let mut out = vec![measure("the 45 real fixtures", coordinator, &real)?];
    let simulated = workdir.join("simulated");
    std::fs::create_dir_all(&simulated)?;
    let cfg = SimConfig {
        packages,
        mean_bytes,
        ..Default::default()
    };
    let sim = SimServer::start("127.0.0.1:0".parse()?, cfg).await?;
    snapshot(coordinator, &simulated, &sim.url())?;
    sim.shutdown().await;
    let set = format!("simulated, {packages} × mean {mean_bytes} B");
    out.push(measure(&set, coordinator, &simulated)?);
    Ok(out)
}

fn snapshot(coordinator: &Path, dir: &Path, origin: &str) -> Result<()> {
    let out = Command::new(coordinator)
        .args(job_args("run", dir, origin, &[]))
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "coordinator run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `cmd` to its end, sampling its peak RSS: (seconds, peak KiB, stdout).
fn timed(mut cmd: Command) -> Result<(f64, u64, String)> {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id().to_string();
    let (peak, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let watch = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kb) = super::vm_hwm_kb(&pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let out = child.wait_with_output()?;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = watch.join();
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    Ok((seconds, peak.load(Ordering::Relaxed), stdout))
}

fn measure(set: &str, coordinator: &Path, dir: &Path) -> Result<Figures> {
    let db = dir.join("alldocs.sqlite");
    let conn = rusqlite::Connection::open(&db)?;
    let (packuments, raw): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM packages WHERE status = 'stored'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    drop(conn);
    let (packuments, raw) = (packuments as u64, raw as u64);
    let tables = dir.join("tables");
    let mut export = Command::new(coordinator);
    export.args([
        "export",
        "--format",
        "parquet",
        "--progress",
        "none",
        "--db",
    ]);
    export.arg(&db).arg("--out").arg(&tables);
    let (export_seconds, export_peak, summary) = timed(export)?;
    let parquet_bytes = files(&tables)?.iter().map(|(_, n)| n).sum::<u64>();
    let mut verify = Command::new(coordinator);
    verify.args(["verify", "--format", "json", "--db"]).arg(&db);
    let (verify_seconds, verify_peak, report) = timed(verify)?;
    let report: serde_json::Value = serde_json::from_str(&report)?;
    let hashed = report["bytes_hashed"].as_u64().context("bytes_hashed")?;
    let unpacked = dir.join("unpacked");
    let mut unpack = Command::new(coordinator);
    unpack
        .args(["unpack", "--db"])
        .arg(&db)
        .arg("--to")
        .arg(&unpacked);
    timed(unpack)?;
    let (sha_seconds, sha_bytes) = sha256sum(&unpacked.join("packuments"))?;
    let one_file = concatenated(&unpacked.join("packuments"), &dir.join("all.raw"))?;
    std::fs::remove_dir_all(&unpacked)?;
    let started = Instant::now();
    let status = Command::new("sha256sum")
        .arg(&one_file)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "sha256sum: {status}");
    let one_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&one_file)?;
    anyhow::ensure!(
        sha_bytes == raw,
        "unpacked {sha_bytes} bytes, the checkpoint says {raw}"
    );
    let mb = |bytes: u64, s: f64| bytes as f64 / 1e6 / s.max(1e-9);
    Ok(Figures {
        set: set.to_string(),
        packuments,
        raw_bytes: raw,
        export_seconds,
        export_packuments_per_second: packuments as f64 / export_seconds.max(1e-9),
        export_mb_per_second: mb(raw, export_seconds),
        export_peak_rss_kb: export_peak,
        parquet_bytes,
        parquet_over_raw: parquet_bytes as f64 / raw.max(1) as f64,
        export_summary: summary.trim().to_string(),
        verify_seconds,
        verify_bytes_hashed: hashed,
        verify_mb_per_second: mb(hashed, verify_seconds),
        verify_peak_rss_kb: verify_peak,
        sha256sum_seconds: sha_seconds,
        sha256sum_mb_per_second: mb(sha_bytes, sha_seconds),
        sha256sum_one_file_mb_per_second: mb(sha_bytes, one_seconds),
        verify_over_sha256sum: mb(hashed, verify_seconds) / mb(sha_bytes, one_seconds),
    })
}

/// Every file under `dir` with its size.
fn files(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `sha256sum` over every file under `dir` (read once before, so the page cache holds
/// them): (seconds, bytes).
fn sha256sum(dir: &Path) -> Result<(f64, u64)> {
    let all = files(dir)?;
    let bytes = all.iter().map(|(_, n)| n).sum();
    for (path, _) in &all {
        std::fs::read(path)?;
    }
    let started = Instant::now();
    for chunk in all.chunks(2000) {
        let status = Command::new("sha256sum")
            .args(chunk.iter().map(|(p, _)| p))
            .stdout(Stdio::null())
            .status()
            .context("running sha256sum")?;
        anyhow::ensure!(status.success(), "sha256sum: {status}");
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// Every file under `dir` written end to end into `to` (then read once, so the page cache
/// holds it).
fn concatenated(dir: &Path, to: &Path) -> Result<PathBuf> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    for (path, _) in files(dir)? {
        std::io::copy(&mut std::fs::File::open(path)?, &mut out)?;
    }
    std::io::Write::flush(&mut out)?;
    drop(out);
    std::fs::read(to)?;
    Ok(to.to_path_buf())
}

pub fn table(all: &[Figures]) -> String {
    let mut out = String::from(
        "| set | packuments | raw MB | export s | packuments/s | **MB/s raw** | peak RSS | Parquet / raw | verify s | **verify MB/s** | sha256sum MB/s (files; one file) | **verify / sha256sum one file** | verify peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in all {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.2} | {:.0} | **{:.0}** | {:.1} MiB | {:.3} | {:.2} | **{:.0}** | {:.0}; {:.0} | **{:.2}** | {:.1} MiB |\n",
            f.set,
            f.packuments,
            f.raw_bytes as f64 / 1e6,
            f.export_seconds,
            f.export_packuments_per_second,
            f.export_mb_per_second,
            f.export_peak_rss_kb as f64 / 1024.0,
            f.parquet_over_raw,
            f.verify_seconds,
            f.verify_mb_per_second,
            f.sha256sum_mb_per_second,
            f.sha256sum_one_file_mb_per_second,
            f.verify_over_sha256sum,
            f.verify_peak_rss_kb as f64 / 1024.0,
        ));
    }
    for f in all {
        out.push_str(&format!("\n{}: {}\n", f.set, f.export_summary));
    }
    out
}
