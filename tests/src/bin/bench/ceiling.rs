//! The comparison points measured in the same run: a bare fetch-and-store loop (the
//! ceiling), and a crawl on npm's own registry client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use alldocs_fetcher::{
    source::http::build_client,
    source::packument::packument_url,
    store::{packument_path, Store},
};
use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Deserialize;

/// Name of the bare loop's runtime threads, so their CPU time can be told apart from the
/// simulator's (which runs in the same process).
const THREAD_NAME: &str = "bare-loop";

/// What the bare loop did.
#[derive(Debug, Clone)]
pub struct Ceiling {
    pub stored: u64,
    pub missing: u64,
    pub bytes: u64,
    pub wall: Duration,
    /// CPU time of its threads (user + system).
    pub cpu: Duration,
    pub concurrency: usize,
}

/// Fetches every name from the simulator with reqwest (the fetcher's own client settings:
/// pooled connections, gzip), `concurrency` at a time, and stores each body with the same
/// durable, atomic local write the fetcher uses ([`Store::put_durable`]: staged file,
/// fdatasync, rename, directory sync) — no checkpoint, no gRPC, no JSON validation, no
/// events. Runs on its own runtime (threads named [`THREAD_NAME`]) in this process.
pub async fn run_bare_loop(
    registry: String,
    names: Vec<String>,
    store_dir: PathBuf,
    concurrency: usize,
) -> Result<Ceiling> {
    let handle = std::thread::spawn(move || -> Result<Ceiling> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let result = runtime.block_on(bare_loop(&registry, names, &store_dir, concurrency));
        // Before the runtime (and its threads) go away.
        let cpu = threads_cpu("self", THREAD_NAME)?;
        drop(runtime);
        result.map(|mut c| {
            c.cpu = cpu;
            c
        })
    });
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the bare loop panicked"))?
}

async fn bare_loop(
    registry: &str,
    names: Vec<String>,
    store_dir: &Path,
    concurrency: usize,
) -> Result<Ceiling> {
    std::fs::create_dir_all(store_dir)?;
    let store = Store::open(store_dir.to_str().context("a UTF-8 work directory")?)?;
    let client = build_client();
    let registry: std::sync::Arc<str> = registry.into();
    let started = Instant::now();
    // Each request is its own task, so the runtime spreads them (and their gzip
    // decoding) over all its worker threads, as the pipeline's leases are.
    let mut results = futures::stream::iter(names)
        .map(|name| {
            let (client, store, registry) = (client.clone(), store.clone(), registry.clone());
            tokio::spawn(async move {
                let url = packument_url(&registry, &name);
                let resp = client
                    .get(&url)
                    .header(reqwest::header::ACCEPT, "application/json")
                    .send()
                    .await?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok::<_, anyhow::Error>(None);
                }
                let resp = resp.error_for_status()?;
                let body: Bytes = resp.bytes().await?;
                let len = body.len() as u64;
                store.put_durable(&packument_path(&name), body).await?;
                Ok(Some(len))
            })
        })
        .buffer_unordered(concurrency.max(1));
    let (mut stored, mut missing, mut bytes) = (0, 0, 0);
    while let Some(result) = results.next().await {
        match result?? {
            Some(len) => {
                stored += 1;
                bytes += len;
            }
            None => missing += 1,
        }
    }
    Ok(Ceiling {
        stored,
        missing,
        bytes,
        wall: started.elapsed(),
        cpu: Duration::ZERO,
        concurrency,
    })
}

/// User + system CPU time of the threads named `name` of process `pid` (a number or
/// `self`), from `/proc/PID/task`.
pub fn threads_cpu(pid: &str, name: &str) -> Result<Duration> {
    Ok(named_threads(pid, name)?
        .filter_map(|t| thread_cpu(&t))
        .sum())
}

/// The `/proc/PID/task/TID` directories of process `pid`'s threads named `name`.
pub fn named_threads(pid: &str, name: &str) -> Result<impl Iterator<Item = PathBuf>> {
    let name = name.to_string();
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|task| task.ok().map(|t| t.path()))
        .filter(move |task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim_end() == name)
        }))
}

/// User + system CPU time of one thread (`task`: its `/proc/PID/task/TID`), or `None`
/// once it is gone.
pub fn thread_cpu(task: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    Some(ticks_to_duration(stat_cpu_ticks(&stat, 0)))
}

/// utime + stime (`offset` 0) or cutime + cstime (`offset` 2) from a `/proc/…/stat` line,
/// in clock ticks.
fn stat_cpu_ticks(stat: &str, offset: usize) -> u64 {
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime is field 14, so index 11 here.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let at = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    at(11 + offset) + at(12 + offset)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // USER_HZ is 100 on every Linux architecture this runs on.
    Duration::from_millis(ticks * 10)
}

/// CPU time of this process's children that have been waited for (`cutime + cstime`);
/// the difference around a child's `wait` is that child's CPU time.
pub fn reaped_children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    ticks_to_duration(stat_cpu_ticks(&stat, 2))
}

/// What the crawl on npm's own client printed.
#[derive(Debug, Clone, Deserialize)]
pub struct NpmCrawl {
    pub fetched: u64,
    pub missing: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub per_second: f64,
    #[serde(skip)]
    pub cpu: Duration,
    #[serde(skip)]
    pub in_flight: usize,
}

/// The node script and its installed dependencies (`tests/npm-client`).
pub fn npm_client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("npm-client")
}

/// Why the npm-client crawl cannot run here, if it cannot.
pub fn npm_client_missing() -> Option<String> {
    let dir = npm_client_dir();
    if !dir.join("node_modules/npm-registry-fetch").is_dir() {
        return Some(format!(
            "npm-registry-fetch is not installed: run `npm ci --ignore-scripts` in {}",
            dir.display()
        ));
    }
    None
}

/// Runs `node crawl.js` over `names` against `registry`, `in_flight` at a time, storing
/// into `out_dir`; returns what it printed and its CPU time.
pub async fn run_npm_crawl(
    registry: &str,
    names: &[String],
    work: &Path,
    in_flight: usize,
) -> Result<NpmCrawl> {
    let names_file = work.join("npm-crawl-names.txt");
    std::fs::write(&names_file, names.join("\n"))?;
    let cpu_before = reaped_children_cpu();
    let output = tokio::process::Command::new("node")
        .arg(npm_client_dir().join("crawl.js"))
        .arg(registry)
        .arg(&names_file)
        .arg(work.join("npm-crawl"))
        .arg(in_flight.to_string())
        .env_remove("NODE_OPTIONS")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running node (is Node.js installed?)")?;
    let cpu = reaped_children_cpu().saturating_sub(cpu_before);
    if !output.status.success() {
        bail!(
            "the npm-client crawl exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let mut crawl: NpmCrawl = serde_json::from_str(line)
        .with_context(|| format!("reading the npm-client crawl's result `{line}`"))?;
    crawl.cpu = cpu;
    crawl.in_flight = in_flight;
    Ok(crawl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_are_read_past_a_command_name_with_spaces() {
        let stat = "42 (a b) R 1 2 3 4 5 6 7 8 9 10 150 25 30 5 20 0";
        assert_eq!(stat_cpu_ticks(stat, 0), 175);
        assert_eq!(stat_cpu_ticks(stat, 2), 35);
    }
}
