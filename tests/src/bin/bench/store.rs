//! What a run left in the store, read the way a user reads it: the checkpoint's counts,
//! the objects and bytes on disk against the raw bytes, packuments spot-checked through
//! `coordinator show`, and how fast `show` answers for one name and `export` reads all of
//! it. And the fetch-only comparison point: `wrk` requesting the same packuments.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alldocs_tests::sim::Registry;
use anyhow::{Context, Result};
use serde::Serialize;

/// The store after run 1.
#[derive(Debug, Default, Serialize)]
pub struct Figures {
    /// Packages the checkpoint says are stored.
    pub stored: usize,
    /// Objects holding packuments (packs, or one file each).
    pub objects: usize,
    /// Their bytes, and the packuments' own (raw) bytes.
    pub store_bytes: u64,
    pub raw_bytes: u64,
    pub spot_checked: usize,
    pub spot_mismatches: Vec<String>,
    /// `coordinator show NAME > /dev/null`, median of the samples, in milliseconds (the
    /// process started and the checkpoint opened each time).
    pub show_ms_median: Option<f64>,
    /// `coordinator export --order packs > /dev/null`: seconds, and raw MB/s.
    pub export_packs_seconds: Option<f64>,
    pub export_packs_mb_per_second: Option<f64>,
    /// `coordinator export` (key order).
    pub export_key_seconds: Option<f64>,
    pub export_key_mb_per_second: Option<f64>,
}

impl Figures {
    pub fn ratio(&self) -> f64 {
        self.store_bytes as f64 / self.raw_bytes.max(1) as f64
    }
}

/// Reads the store of a finished run at `workdir` (`alldocs.sqlite`, `data/`).
pub fn measure(
    coordinator: &Path,
    workdir: &Path,
    registry: &Registry,
    samples: usize,
    timings: bool,
) -> Result<Figures> {
    let db = workdir.join("alldocs.sqlite");
    let conn = rusqlite::Connection::open(&db)?;
    let (stored, raw): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM packages WHERE status = 'stored'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    drop(conn);
    let data = workdir.join("data");
    let (mut objects, mut store_bytes) = (0, 0);
    for dir in ["packs", "packuments"] {
        let (n, bytes) = files_and_bytes(&data.join(dir))?;
        objects += n;
        store_bytes += bytes;
    }
    let mut figures = Figures {
        stored: stored as usize,
        objects,
        store_bytes,
        raw_bytes: raw as u64,
        ..Figures::default()
    };
    let names = sample_names(registry, samples);
    for name in &names {
        let out = show(coordinator, &db, name)?;
        if Some(out) != registry.document(name, false) {
            figures.spot_mismatches.push(name.clone());
        }
    }
    figures.spot_checked = names.len();
    if timings && !names.is_empty() {
        let mut times: Vec<f64> = Vec::new();
        for name in names.iter().take(25) {
            let started = Instant::now();
            show(coordinator, &db, name)?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        figures.show_ms_median = Some(times[times.len() / 2]);
        let mb = |s: f64| figures.raw_bytes as f64 / 1e6 / s.max(1e-9);
        let packs = export(coordinator, &db, "packs")?;
        figures.export_packs_seconds = Some(packs);
        figures.export_packs_mb_per_second = Some(mb(packs));
        let key = export(coordinator, &db, "key")?;
        figures.export_key_seconds = Some(key);
        figures.export_key_mb_per_second = Some(mb(key));
    }
    Ok(figures)
}

/// About `n` served names, spread evenly over the sorted names (so scoped, uppercase and
/// digit names are all included).
fn sample_names(registry: &Registry, n: usize) -> Vec<String> {
    let served: Vec<&str> = registry
        .names()
        .filter(|n| !registry.is_missing(n))
        .collect();
    if n == 0 || served.is_empty() {
        return Vec::new();
    }
    let step = (served.len() / n).max(1);
    served
        .iter()
        .step_by(step)
        .take(n)
        .map(|s| s.to_string())
        .collect()
}

fn show(coordinator: &Path, db: &Path, name: &str) -> Result<Vec<u8>> {
    let out = Command::new(coordinator)
        .args(["show", name, "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .output()
        .context("running coordinator show")?;
    anyhow::ensure!(
        out.status.success(),
        "show {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Seconds `coordinator export --order ORDER` takes, its output discarded.
fn export(coordinator: &Path, db: &Path, order: &str) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new(coordinator)
        .args(["export", "--order", order, "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "export --order {order}: {status}");
    Ok(started.elapsed().as_secs_f64())
}

fn files_and_bytes(dir: &Path) -> Result<(usize, u64)> {
    let (mut n, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                n += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((n, bytes))
}

/// `wrk` fetching the registry's packuments (round robin over their paths) with
/// `connections` in flight for `seconds`: requests per second, or why it did not run.
pub fn wrk(
    sim_url: &str,
    registry: &Registry,
    connections: usize,
    seconds: u64,
    workdir: &Path,
) -> Result<f64, String> {
    let which = Command::new("wrk").arg("--version").output();
    if which.is_err() {
        return Err("wrk is not installed (apt-get install wrk): no fetch-only comparison".into());
    }
    let paths: Vec<String> = registry
        .names()
        .map(|n| format!("/{}", n.replace('/', "%2f")))
        .collect();
    let script = workdir.join("paths.lua");
    let list = paths
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(",\n");
    std::fs::write(
        &script,
        format!(
            "local paths = {{\n{list}\n}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i], {{[\"Accept\"] = \"application/json\", [\"Accept-Encoding\"] = \"gzip\"}})\nend\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "-s",
        ])
        .arg(&script)
        .arg(sim_url)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("wrk printed no Requests/sec: {text}"))
}

/// A directory for a run of its own under `workdir`.
pub fn subdir(workdir: &Path, name: &str) -> Result<PathBuf> {
    let dir = workdir.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// How long to let wrk run: about as long as run 1 took, within 5–30 s.
pub fn wrk_seconds(run: Duration) -> u64 {
    run.as_secs().clamp(5, 30)
}
