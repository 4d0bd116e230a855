//! `bench`: end-to-end throughput and memory figures for alldocs, on loopback only.
//!
//! It starts the registry simulator in this process, runs the real `coordinator run` binary
//! (and, with `--fetchers remote:N`, N real `fetcher serve` processes) against it, measures
//! wall time, rates, CPU time, the simulator's request counters and the peak RSS of every
//! child process, verifies that the snapshot is complete and byte-exact, then runs the
//! coordinator a second time on the same checkpoint and checks that nothing is fetched again.
//!
//! In the same run, before the coordinator, it measures two comparison points against the
//! same simulator: the **ceiling**, a bare loop in this process (reqwest at the pipeline's
//! requests in flight, each body stored with the fetcher's own durable atomic write; no
//! checkpoint, gRPC or validation), and a **crawl on npm's own registry client**
//! (`npm-registry-fetch`, 50 in flight, `tests/npm-client/crawl.js`; install it once with
//! `npm ci --ignore-scripts` in `tests/npm-client`). It prints `ratio_to_ceiling` and
//! `ratio_to_npm_client` next to packuments/s (`--json`: one JSON line).
//!
//! Build first (the binaries are looked up next to this one, or in `target/release` with
//! `--release`):
//!
//! ```text
//! cargo build --release -p alldocs-coordinator -p alldocs-fetcher -p alldocs-tests
//! target/release/bench --packages 20000
//! target/release/bench --packages 20000 --fetchers remote:2 --json
//! ```
//!
//! Nothing leaves 127.0.0.1: every server the children talk to is one this process started.
//! With a local store most of the coordinator's CPU time is the kernel creating files, so
//! figures vary from run to run with the disk's state (writeback of the previous run, and
//! ext4 skipping recently deleted inodes right after a run removed its store): compare
//! several runs, spaced apart.
//!
//! Exit code: 0 when every check passed, 1 when one failed, 2 on a setup error. The work
//! directory (checkpoint, store, logs) is removed after a clean pass and kept otherwise.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alldocs_proto::v1::{coordinator_client::CoordinatorClient, GetProgressRequest};
use alldocs_tests::sim::{Registry, SimConfig, SimServer, StatsSnapshot};
use anyhow::{bail, Context as _, Result};
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

#[path = "bench/ceiling.rs"]
mod ceiling;
#[path = "bench/checkpoint.rs"]
mod checkpoint;
#[path = "bench/compression.rs"]
mod compression;
#[path = "bench/dataset.rs"]
mod dataset;
#[path = "bench/rounds.rs"]
mod rounds;
#[path = "bench/store.rs"]
mod store;
use ceiling::{Ceiling, NpmCrawl};

/// How often the peak RSS of a child process is sampled.
const RSS_POLL: Duration = Duration::from_millis(50);
/// How often the coordinator's progress is polled (it caches its counts for >= 250 ms).
const PROGRESS_POLL: Duration = Duration::from_millis(100);
/// How long a `fetcher serve` process may take to say where it listens.
const FETCHER_START_TIMEOUT: Duration = Duration::from_secs(20);
const BUILD_HINT: &str =
    "cargo build --release -p alldocs-coordinator -p alldocs-fetcher -p alldocs-tests";

/// End-to-end benchmark of coordinator + fetchers against the in-process registry simulator.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Packages in the simulated registry.
    #[arg(long, default_value_t = 20_000)]
    packages: usize,
    /// Mean size of a full packument in bytes (log-normal spread, like npm's).
    #[arg(long, default_value_t = 20_000)]
    mean_bytes: usize,
    /// Every k-th package is listed but answers 404 (0: none).
    #[arg(long, default_value_t = 0)]
    missing_every: usize,
    /// Delay in milliseconds the simulator adds before each packument response.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Passed to the coordinator as --max-in-flight (default: the coordinator's).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Passed to the coordinator as --concurrency (default: the coordinator's).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Passed to the coordinator as --lease-size (default: the coordinator's).
    #[arg(long)]
    lease_size: Option<u32>,
    /// `in-process` (the coordinator's embedded fetcher) or `remote:N` (N `fetcher serve`
    /// processes on loopback, each passed as --fetcher).
    #[arg(long, default_value = "in-process", value_parser = parse_fetchers)]
    fetchers: Fetchers,
    /// Use the binaries in `target/release` even when this bench is a debug build.
    #[arg(long)]
    release: bool,
    /// Print the figures as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Kill a coordinator run that takes longer than this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Keep the work directory (checkpoint, store, logs) even when every check passed.
    #[arg(long)]
    keep: bool,
    /// Skip the bare fetch-and-store loop (the ceiling).
    #[arg(long)]
    no_ceiling: bool,
    /// Skip the crawl on npm's own registry client.
    #[arg(long)]
    no_npm_client: bool,
    /// Requests in flight for the crawl on npm's own client.
    #[arg(long, default_value_t = 50)]
    npm_in_flight: usize,
    /// Rounds of the ceiling and the pipeline, alternating, each on a fresh checkpoint and
    /// store; the last one is the round the other figures describe (with the npm-client
    /// crawl, the checks and the incremental run). Prints each round's ratio and their
    /// median, which a machine whose speed drifts between phases moves much less.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Run the coordinator with --index-only (plan and index; no packument is fetched).
    #[arg(long)]
    index_only: bool,
    /// The store layout of the runs (the coordinator's --layout).
    #[arg(long, default_value = "packs", value_parser = ["packs", "files"])]
    layout: String,
    /// With --layout packs, skip the same run in the files layout that follows run 2.
    #[arg(long)]
    no_files_run: bool,
    /// Skip the fetch-only comparison with `wrk` on the same simulator.
    #[arg(long)]
    no_wrk: bool,
    /// Instead of a run: index N names into a fresh checkpoint and store them all through
    /// leases (the real SQLite checkpoint, no fetcher), and report events per second.
    #[arg(long, value_name = "N")]
    checkpoint_events: Option<usize>,
    /// Instead of a run: the store's bytes against the raw ones, each packument its own
    /// zstd frame as in a pack, over the real fixtures and --packages simulated ones of
    /// --mean-bytes; and with a zstd dictionary trained on half of each set.
    #[arg(long)]
    compression: bool,
    /// Instead of a run: snapshots of the real fixtures and of --packages simulated
    /// packuments of --mean-bytes, each exported with `export --format parquet` and
    /// checked with `verify` (beside `sha256sum` over the same bytes).
    #[arg(long)]
    dataset: bool,
}

/// The coordinator's defaults for --max-in-flight and --concurrency: their product is
/// how many packument requests the pipeline has in flight, and the bare loop's too.
const DEFAULT_MAX_IN_FLIGHT: u32 = 8;
const DEFAULT_CONCURRENCY: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetchers {
    InProcess,
    Remote(usize),
}

impl std::fmt::Display for Fetchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetchers::InProcess => f.write_str("in-process"),
            Fetchers::Remote(n) => write!(f, "remote:{n}"),
        }
    }
}

fn parse_fetchers(s: &str) -> Result<Fetchers, String> {
    if s == "in-process" {
        return Ok(Fetchers::InProcess);
    }
    match s.strip_prefix("remote:").map(str::parse::<usize>) {
        Some(Ok(n)) if n >= 1 => Ok(Fetchers::Remote(n)),
        _ => Err(format!(
            "`{s}`: expected `in-process` or `remote:N` with N >= 1"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(n) = args.checkpoint_events {
        return checkpoint_bench(n, args.json).await;
    }
    if args.compression {
        return match compression::run(args.mean_bytes, args.packages) {
            Ok(r) if args.json => {
                println!("{}", serde_json::to_string(&r).expect("figures serialize"));
                ExitCode::SUCCESS
            }
            Ok(r) => {
                print!("{}", compression::table(&r));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.dataset {
        return dataset_bench(&args).await;
    }
    match bench(&args).await {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `--dataset`: export and verify over two snapshots, in a temporary directory.
async fn dataset_bench(args: &Args) -> ExitCode {
    let result = async {
        let bins = Binaries::locate(args.release, false)?;
        let dir = tempfile::Builder::new()
            .prefix("alldocs-bench-dataset-")
            .tempdir()?;
        let figures = dataset::run(
            &bins.coordinator,
            args.packages,
            args.mean_bytes,
            dir.path(),
        )
        .await;
        if args.keep {
            eprintln!("bench: kept {}", dir.keep().display());
        }
        figures
    }
    .await;
    match result {
        Ok(figures) if args.json => {
            println!(
                "{}",
                serde_json::to_string(&figures).expect("figures serialize")
            )
        }
        Ok(figures) => print!("{}", dataset::table(&figures)),
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `--checkpoint-events N`: the checkpoint alone, in a temporary directory.
async fn checkpoint_bench(n: usize, json: bool) -> ExitCode {
    let result = async {
        let dir = tempfile::Builder::new()
            .prefix("alldocs-bench-checkpoint-")
            .tempdir()?;
        checkpoint::run(n, dir.path()).await
    }
    .await;
    match result {
        Ok(figures) if json => println!("{}", figures.to_json()),
        Ok(figures) => print!("{}", figures.to_table()),
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// The benchmark.

/// Everything measured, and the checks that failed.
struct Report {
    args_line: String,
    fetchers: Fetchers,
    packages: usize,
    expected_stored: usize,
    /// Bytes of the largest packument the registry serves.
    largest_document: usize,
    sim_setup: Duration,
    first: RunOutcome,
    first_stats: StatsSnapshot,
    second: RunOutcome,
    second_stats: StatsSnapshot,
    fetcher_peak_rss_kb: Vec<u64>,
    /// CPU time of each remote fetcher over both runs.
    fetcher_cpu: Vec<Duration>,
    bench_peak_rss_kb: u64,
    ceiling: Option<Ceiling>,
    npm: Option<NpmCrawl>,
    /// Every round's figures, the last one's (the run described above) included.
    rounds: Vec<rounds::Round>,
    /// Why a comparison point was not measured.
    notes: Vec<String>,
    stored_files: usize,
    index_rows: usize,
    spot_checked: usize,
    spot_mismatches: Vec<String>,
    store: store::Figures,
    /// With --layout packs: the same pipeline in the files layout, after run 2.
    files_run: Option<(RunOutcome, StatsSnapshot)>,
    /// wrk's requests per second on the same simulator (or why there is none).
    wrk: Option<Result<f64, String>>,
    failures: Vec<String>,
    workdir: Option<PathBuf>,
}

async fn bench(args: &Args) -> Result<Report> {
    let bins = Binaries::locate(args.release, args.fetchers != Fetchers::InProcess)?;
    if cfg!(debug_assertions) {
        eprintln!("bench: note: this bench binary is a debug build (the simulator runs in it); build with --release for meaningful figures");
    }
    let (sim, sim_setup) = start_simulator(args).await?;
    let sim_url = sim.url();
    let registry = sim.registry().clone();

    // Kept on any error or failed check (it holds the logs); removed when all is well.
    let workdir = tempfile::Builder::new()
        .prefix("alldocs-bench-")
        .tempdir()?
        .keep();
    eprintln!("bench: work directory {}", workdir.display());
    let store = workdir.join("data");
    let fetchers = start_fetchers(args.fetchers, &bins.fetcher, &workdir).await?;
    let coordinator_args = coordinator_args(args, &sim_url, &workdir, &store, &fetchers);
    let env = [("npm_config_registry", sim_url.as_str())];
    let run = |n: u32, what: &str| {
        eprintln!("bench: run {n} ({what})…");
        let log = workdir.join(format!("coordinator-{n}.log"));
        let timeout = Duration::from_secs(args.timeout_secs);
        let (bin, args, env) = (&bins.coordinator, &coordinator_args, &env);
        async move { run_coordinator(bin, args, env, &log, timeout).await }
    };
    let (expected_stored, largest_document) = expected(&registry, args.index_only);
    let mut all_rounds = extra_rounds(args, &bins, &sim, &workdir, &fetchers, &env).await?;
    let (ceiling, npm, notes) = comparisons(args, &sim_url, &registry, &workdir).await?;
    settle(&workdir).await;
    let before = sim.stats();
    let first = run(1, "full snapshot").await?;
    let first_stats = delta(&before, &sim.stats());

    eprintln!("bench: verifying the store…");
    let index_rows = count_index_rows(&store.join("index"))?;
    let samples = if args.index_only { 0 } else { 100 };
    let store_figures = store::measure(
        &bins.coordinator,
        &workdir,
        &registry,
        samples,
        !args.index_only,
    )?;

    settle(&workdir).await;
    let before = sim.stats();
    // Nothing changed at the origin, so this run must fetch nothing.
    let second = run(2, "incremental, same checkpoint").await?;
    let second_stats = delta(&before, &sim.stats());
    let files_run = files_run(args, &bins, &sim, &workdir, &fetchers, &env).await?;
    let wrk = if args.no_wrk || args.index_only {
        None
    } else {
        settle(&workdir).await;
        eprintln!("bench: wrk, fetch only…");
        let secs = store::wrk_seconds(first.wall);
        Some(store::wrk(
            &sim_url,
            &registry,
            in_flight(args),
            secs,
            &workdir,
        ))
    };

    let (mut fetcher_peak_rss_kb, mut fetcher_cpu) = (Vec::new(), Vec::new());
    for f in fetchers {
        let (peak, cpu) = f.stop().await;
        fetcher_peak_rss_kb.push(peak);
        fetcher_cpu.push(cpu);
    }
    sim.shutdown().await;
    all_rounds.push(rounds::Round::new(ceiling.as_ref(), &first, &first_stats));
    let mut report = Report {
        args_line: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        fetchers: args.fetchers,
        packages: registry.len(),
        expected_stored,
        largest_document,
        sim_setup,
        first,
        first_stats,
        second,
        second_stats,
        fetcher_peak_rss_kb,
        fetcher_cpu,
        bench_peak_rss_kb: vm_hwm_kb("self").unwrap_or(0),
        ceiling,
        npm,
        rounds: all_rounds,
        notes,
        stored_files: store_figures.stored,
        index_rows,
        spot_checked: store_figures.spot_checked,
        spot_mismatches: store_figures.spot_mismatches.clone(),
        store: store_figures,
        files_run,
        wrk,
        failures: Vec::new(),
        workdir: None,
    };
    report.failures = report.failed_checks();
    report.workdir = report.keep_or_remove(workdir, args.keep)?;
    Ok(report)
}

/// With `--layout packs`: the same pipeline once more in the files layout, on a fresh
/// checkpoint and store, so that the two layouts are measured in one run.
async fn files_run(
    args: &Args,
    bins: &Binaries,
    sim: &SimServer,
    workdir: &Path,
    fetchers: &[FetcherProcess],
    env: &[(&str, &str)],
) -> Result<Option<(RunOutcome, StatsSnapshot)>> {
    if args.layout != "packs" || args.no_files_run || args.index_only {
        return Ok(None);
    }
    let dir = store::subdir(workdir, "files-run")?;
    let mut run_args = coordinator_args(args, &sim.url(), &dir, &dir.join("data"), fetchers);
    if let Some(at) = run_args.iter().position(|a| a == "--layout") {
        run_args[at + 1] = "files".into();
    }
    settle(workdir).await;
    eprintln!("bench: run 3 (the same in the files layout)…");
    let before = sim.stats();
    let log = dir.join("coordinator.log");
    let timeout = Duration::from_secs(args.timeout_secs);
    let outcome = run_coordinator(&bins.coordinator, &run_args, env, &log, timeout).await?;
    Ok(Some((outcome, delta(&before, &sim.stats()))))
}

/// The rounds before the last (`--rounds`), each in its own directory under `workdir`.
async fn extra_rounds(
    args: &Args,
    bins: &Binaries,
    sim: &SimServer,
    workdir: &Path,
    fetchers: &[FetcherProcess],
    env: &[(&str, &str)],
) -> Result<Vec<rounds::Round>> {
    if args.rounds <= 1 {
        return Ok(Vec::new());
    }
    let sim_url = sim.url();
    let with_ceiling = !args.no_ceiling && !args.index_only;
    // The bare loop's list of names (none without it: at 5 M names it would be large).
    let names: Vec<String> = if with_ceiling {
        sim.registry().names().map(str::to_string).collect()
    } else {
        Vec::new()
    };
    let setup = rounds::RoundSetup {
        sim_url: &sim_url,
        names: &names,
        in_flight: in_flight(args),
        with_ceiling,
    };
    let mut rounds = Vec::new();
    for r in 1..args.rounds {
        eprintln!("bench: round {r} of {}…", args.rounds);
        let dir = workdir.join(format!("round-{r}"));
        let round_args = coordinator_args(args, &sim_url, &dir, &dir.join("data"), fetchers);
        let round = rounds::run_round(&setup, &dir, || async {
            let log = dir.join("coordinator.log");
            let timeout = Duration::from_secs(args.timeout_secs);
            let before = sim.stats();
            let outcome = run_coordinator(&bins.coordinator, &round_args, env, &log, timeout);
            Ok((outcome.await?, delta(&before, &sim.stats())))
        });
        rounds.push(round.await?);
    }
    Ok(rounds)
}

/// How many packuments a run must store (every name the registry does not answer with a
/// 404; none for `--index-only`), and the largest one's size in bytes.
fn expected(registry: &Registry, index_only: bool) -> (usize, usize) {
    if index_only {
        return (0, 0);
    }
    let names = || registry.names();
    let missing = names().filter(|n| registry.is_missing(n)).count();
    let largest = names()
        .filter_map(|n| registry.document_len(n, false))
        .max();
    (registry.len() - missing, largest.unwrap_or(0))
}

/// Starts the simulated registry the arguments describe; returns it and how long building
/// it took.
async fn start_simulator(args: &Args) -> Result<(SimServer, Duration)> {
    eprintln!(
        "bench: building a simulated registry of {} packages (mean {} bytes)…",
        args.packages, args.mean_bytes
    );
    let started = Instant::now();
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: args.packages,
            mean_bytes: args.mean_bytes,
            missing_every: args.missing_every,
            latency_ms: args.latency_ms,
            ..SimConfig::default()
        },
    )
    .await?;
    Ok((sim, started.elapsed()))
}

/// Starts the `fetcher serve` processes of `--fetchers remote:N` (none for in-process).
async fn start_fetchers(
    fetchers: Fetchers,
    bin: &Path,
    workdir: &Path,
) -> Result<Vec<FetcherProcess>> {
    let Fetchers::Remote(n) = fetchers else {
        return Ok(Vec::new());
    };
    let mut started = Vec::new();
    for i in 0..n {
        let log = workdir.join(format!("fetcher-{i}.log"));
        started.push(FetcherProcess::start(bin, &log).await?);
    }
    let addrs: Vec<&str> = started.iter().map(|f| f.addr.as_str()).collect();
    eprintln!("bench: {n} fetcher(s) listening on {}", addrs.join(", "));
    Ok(started)
}

/// `coordinator run` against the simulator, with the checkpoint in `workdir` and the
/// store at `store`, the bench's knobs, and the remote fetchers if any.
fn coordinator_args(
    args: &Args,
    sim_url: &str,
    workdir: &Path,
    store: &Path,
    fetchers: &[FetcherProcess],
) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "run".into(),
        "--replicate-origin".into(),
        sim_url.into(),
        "--registry".into(),
        sim_url.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        workdir.join("alldocs.sqlite").into(),
        "--store".into(),
        store.into(),
        "--layout".into(),
        args.layout.as_str().into(),
        "--rate-limit".into(),
        "0".into(),
        "--progress".into(),
        "none".into(),
    ];
    let knobs = [
        ("--max-in-flight", args.max_in_flight),
        ("--concurrency", args.concurrency),
        ("--lease-size", args.lease_size),
    ];
    for (flag, value) in knobs {
        if let Some(v) = value {
            out.extend([flag.into(), v.to_string().into()]);
        }
    }
    for f in fetchers {
        out.extend(["--fetcher".into(), format!("http://{}", f.addr).into()]);
    }
    if args.index_only {
        out.push("--index-only".into());
    }
    out
}

/// The ceiling and the crawl on npm's own client, each unless skipped (or, for the npm
/// client, not installed: a note says so); neither runs for an --index-only bench.
async fn comparisons(
    args: &Args,
    sim_url: &str,
    registry: &Registry,
    workdir: &Path,
) -> Result<(Option<Ceiling>, Option<NpmCrawl>, Vec<String>)> {
    let mut notes = Vec::new();
    if args.index_only {
        return Ok((None, None, notes));
    }
    let names: Vec<String> = registry.names().map(str::to_string).collect();
    let in_flight = in_flight(args);
    let ceiling = if args.no_ceiling {
        None
    } else {
        settle(workdir).await;
        eprintln!("bench: ceiling: bare fetch-and-store loop, {in_flight} in flight…");
        let dir = workdir.join("bare");
        let c = ceiling::run_bare_loop(sim_url.to_string(), names.clone(), dir, in_flight)
            .await
            .context("the bare loop (ceiling)")?;
        Some(c)
    };
    let npm = match (args.no_npm_client, ceiling::npm_client_missing()) {
        (true, _) => None,
        (false, Some(why)) => {
            eprintln!("bench: note: skipping the npm-client crawl: {why}");
            notes.push(format!("npm-client crawl skipped: {why}"));
            None
        }
        (false, None) => {
            settle(workdir).await;
            eprintln!(
                "bench: crawl on npm's own client (npm-registry-fetch), {} in flight…",
                args.npm_in_flight
            );
            Some(ceiling::run_npm_crawl(sim_url, &names, workdir, args.npm_in_flight).await?)
        }
    };
    Ok((ceiling, npm, notes))
}

/// Packument requests in flight in the pipeline (`--max-in-flight` × `--concurrency`),
/// and so in the bare loop.
fn in_flight(args: &Args) -> usize {
    args.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT) as usize
        * args.concurrency.unwrap_or(DEFAULT_CONCURRENCY) as usize
}

/// Flushes the work directory's file system (`sync -f`) so that no phase pays for the
/// writeback of the one before it.
async fn settle(workdir: &Path) {
    let synced = Command::new("sync")
        .arg("-f")
        .arg(workdir)
        .stdin(Stdio::null())
        .status()
        .await;
    if !synced.is_ok_and(|s| s.success()) {
        eprintln!("bench: note: `sync -f` failed; phases may pay for each other's writeback");
    }
}

/// `after - before`, counter by counter.
fn delta(before: &StatsSnapshot, after: &StatsSnapshot) -> StatsSnapshot {
    StatsSnapshot {
        all_docs_requests: after.all_docs_requests - before.all_docs_requests,
        packument_requests: after.packument_requests - before.packument_requests,
        packuments_served: after.packuments_served - before.packuments_served,
        not_modified: after.not_modified - before.not_modified,
        not_found: after.not_found - before.not_found,
        throttled: after.throttled - before.throttled,
        failed_injected: after.failed_injected - before.failed_injected,
        bytes_sent: after.bytes_sent - before.bytes_sent,
        max_requests_per_second: after.max_requests_per_second,
        names: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// The `coordinator` and `fetcher` binaries to run.
struct Binaries {
    coordinator: PathBuf,
    fetcher: PathBuf,
}

impl Binaries {
    /// Looks next to this executable, or in the sibling `release` directory with `release`.
    fn locate(release: bool, need_fetcher: bool) -> Result<Binaries> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let mut dir = exe
            .parent()
            .context("the bench executable has no parent directory")?
            .to_path_buf();
        if release && dir.file_name().is_some_and(|n| n != "release") {
            dir = dir
                .parent()
                .map(|target| target.join("release"))
                .unwrap_or(dir);
        }
        let bins = Binaries {
            coordinator: dir.join("coordinator"),
            fetcher: dir.join("fetcher"),
        };
        let mut needed = vec![&bins.coordinator];
        if need_fetcher {
            needed.push(&bins.fetcher);
        }
        for path in needed {
            if !path.is_file() {
                bail!(
                    "{} not found; the bench runs the real binaries next to it. Build them first:\n  {BUILD_HINT}",
                    path.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A command with a hermetic environment: no `ALLDOCS_*`, npm or `PORT` settings of the
/// caller leak in (they could point the child at other servers or send it a token).
fn child_command(bin: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("ALLDOCS_")
            || upper.starts_with("NPM_CONFIG_")
            || upper == "NPM_TOKEN"
            || upper == "PORT"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The peak resident set size of a process, in KiB (`VmHWM`), or `None` once it is gone.
/// `pid` is a number or `self`.
fn vm_hwm_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a child every [`RSS_POLL`] until it exits: its `VmHWM` (the largest value is
/// kept) and the CPU time of its thread named [`CHECKPOINT_THREAD`] (the coordinator's
/// SQLite writer; the last sample before the exit is kept, so up to one interval of that
/// thread's work at the very end is not counted).
struct ProcessWatch {
    peak_kb: Arc<AtomicU64>,
    checkpoint_cpu_ms: Arc<AtomicU64>,
}

/// The name of the coordinator's checkpoint thread.
const CHECKPOINT_THREAD: &str = "checkpoint";

impl ProcessWatch {
    fn watch(pid: Option<u32>) -> ProcessWatch {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let checkpoint_cpu_ms = Arc::new(AtomicU64::new(0));
        if let Some(pid) = pid {
            let (peak, cpu) = (peak_kb.clone(), checkpoint_cpu_ms.clone());
            let pid = pid.to_string();
            tokio::spawn(async move {
                // Found once: the thread lives as long as the process.
                let mut checkpoint = None;
                // VmHWM only grows; it disappears when the process exits (or is a zombie).
                while let Some(kb) = vm_hwm_kb(&pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                    if checkpoint.is_none() {
                        checkpoint = ceiling::named_threads(&pid, CHECKPOINT_THREAD)
                            .ok()
                            .and_then(|mut threads| threads.next());
                    }
                    if let Some(used) = checkpoint.as_deref().and_then(ceiling::thread_cpu) {
                        cpu.fetch_max(used.as_millis() as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(RSS_POLL).await;
                }
            });
        }
        ProcessWatch {
            peak_kb,
            checkpoint_cpu_ms,
        }
    }

    fn kb(&self) -> u64 {
        self.peak_kb.load(Ordering::Relaxed)
    }

    /// CPU time of the checkpoint thread at the last sample.
    fn checkpoint_cpu(&self) -> Duration {
        Duration::from_millis(self.checkpoint_cpu_ms.load(Ordering::Relaxed))
    }
}

/// A running `fetcher serve` process.
struct FetcherProcess {
    child: Child,
    addr: String,
    rss: ProcessWatch,
}

impl FetcherProcess {
    async fn start(bin: &Path, log: &Path) -> Result<FetcherProcess> {
        let mut child = child_command(bin, &[])
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let rss = ProcessWatch::watch(child.id());
        let mut lines = BufReader::new(child.stdout.take().context("fetcher stdout")?).lines();
        let addr = tokio::time::timeout(FETCHER_START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("fetcher listening on ") {
                    return Ok(addr.trim().to_string());
                }
            }
            bail!(
                "the fetcher exited before listening (log: {})",
                log.display()
            )
        })
        .await
        .with_context(|| {
            format!(
                "the fetcher did not listen in time (log: {})",
                log.display()
            )
        })??;
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(FetcherProcess { child, addr, rss })
    }

    /// Asks it to stop (SIGTERM, as Cloud Run does), kills it if it lingers, returns its peak
    /// RSS and CPU time.
    async fn stop(mut self) -> (u64, Duration) {
        let peak = self.rss.kb();
        let cpu_before = ceiling::reaped_children_cpu();
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        let cpu = ceiling::reaped_children_cpu().saturating_sub(cpu_before);
        (peak.max(self.rss.kb()), cpu)
    }
}

/// What one `coordinator run` did.
struct RunOutcome {
    status: ExitStatus,
    wall: Duration,
    /// From start until every partition was indexed, as seen by polling its progress, or
    /// the end of the run if it succeeded before a poll saw that.
    index_done: Option<Duration>,
    peak_rss_kb: u64,
    /// CPU time (user + system) of the coordinator process, its fetchers included when
    /// they are in-process.
    cpu: Duration,
    /// The part of `cpu` spent by its checkpoint thread (SQLite).
    checkpoint_cpu: Duration,
    log: PathBuf,
}

/// Runs `coordinator` with `args` to its end, measuring wall time, peak RSS and when the
/// index phase finished. Stderr (its logs) goes to `log`.
async fn run_coordinator(
    bin: &Path,
    args: &[OsString],
    env: &[(&str, &str)],
    log: &Path,
    timeout: Duration,
) -> Result<RunOutcome> {
    let started = Instant::now();
    let cpu_before = ceiling::reaped_children_cpu();
    let mut child = child_command(bin, env)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let rss = ProcessWatch::watch(child.id());

    // Its stdout says where its gRPC API listens; the progress poller needs that.
    let (addr_tx, addr_rx) = oneshot::channel::<String>();
    let stdout = child.stdout.take().context("coordinator stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut addr_tx = Some(addr_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("coordinator listening on ") {
                if let Some(tx) = addr_tx.take() {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        }
    });
    let index_done = Arc::new(Mutex::new(None));
    let poller = tokio::spawn(poll_progress(addr_rx, started, index_done.clone()));

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            poller.abort();
            bail!(
                "the coordinator did not finish within {} s; killed it (log: {})",
                timeout.as_secs(),
                log.display()
            );
        }
    };
    let wall = started.elapsed();
    let cpu = ceiling::reaped_children_cpu().saturating_sub(cpu_before);
    poller.abort();
    // A successful run has indexed everything by the time it exits.
    let index_done = index_done
        .lock()
        .expect("index_done")
        .or(status.success().then_some(wall));
    Ok(RunOutcome {
        status,
        wall,
        index_done,
        peak_rss_kb: rss.kb(),
        cpu,
        checkpoint_cpu: rss.checkpoint_cpu(),
        log: log.to_path_buf(),
    })
}

/// Polls `GetProgress` until aborted; records when all partitions were indexed.
async fn poll_progress(
    addr: oneshot::Receiver<String>,
    started: Instant,
    index_done: Arc<Mutex<Option<Duration>>>,
) {
    let Ok(addr) = addr.await else { return };
    let url = format!("http://{addr}");
    let mut client = loop {
        match CoordinatorClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(PROGRESS_POLL).await,
        }
    };
    loop {
        if let Ok(p) = client.get_progress(GetProgressRequest {}).await {
            let p = p.into_inner();
            let mut index_done = index_done.lock().expect("index_done");
            if index_done.is_none()
                && p.partitions_total > 0
                && p.partitions_done + p.partitions_failed == p.partitions_total
            {
                *index_done = Some(started.elapsed());
            }
        }
        tokio::time::sleep(PROGRESS_POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// Non-empty lines over all `*.jsonl` files in `dir`.
fn count_index_rows(dir: &Path) -> Result<usize> {
    let mut rows = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(&path)?;
            rows += text.lines().filter(|l| !l.trim().is_empty()).count();
        }
    }
    Ok(rows)
}

/// The last `n` lines of a log file.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Output.

/// An exit code, or the signal that ended the process.
fn exit_code(status: ExitStatus) -> String {
    status
        .code()
        .map_or_else(|| status.to_string(), |c| c.to_string())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// A figure with `digits` decimals, or `n/a`.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}"))
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl Report {
    /// What a user would call wrong: a run that failed, a store that does not match the
    /// registry, a first run that did not fetch each packument exactly once, a rerun that
    /// fetched any. Each is printed as it is found.
    fn failed_checks(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (label, run) in [("run 1", &self.first), ("run 2", &self.second)] {
            if !run.status.success() {
                failures.push(format!(
                    "{label}: coordinator exited with {} (log: {})",
                    run.status,
                    run.log.display()
                ));
            }
        }
        let expected = self.expected_stored;
        if self.stored_files != expected {
            failures.push(format!(
                "{} packuments stored, expected {expected}",
                self.stored_files
            ));
        }
        if let Some((run, _)) = &self.files_run {
            if !run.status.success() {
                failures.push(format!(
                    "run 3 (files): coordinator exited with {}",
                    run.status
                ));
            }
        }
        if self.index_rows != self.packages {
            failures.push(format!(
                "{} rows in data/index/*.jsonl, expected {}",
                self.index_rows, self.packages
            ));
        }
        if !self.spot_mismatches.is_empty() {
            failures.push(format!(
                "{} of {} spot-checked packuments differ from the registry: {}",
                self.spot_mismatches.len(),
                self.spot_checked,
                self.spot_mismatches.join(", ")
            ));
        }
        if self.first_stats.packuments_served != expected as u64 {
            failures.push(format!(
                "run 1: the registry served {} packuments, expected exactly {expected}",
                self.first_stats.packuments_served
            ));
        }
        if self.second_stats.packument_requests != 0 {
            failures.push(format!(
                "run 2: {} packument requests, expected 0 (nothing changed)",
                self.second_stats.packument_requests
            ));
        }
        for f in &failures {
            eprintln!("bench: CHECK FAILED: {f}");
        }
        failures
    }

    /// Removes the work directory when every check passed and `--keep` was not given;
    /// otherwise says where it is (with the end of run 1's log if a check failed).
    fn keep_or_remove(&self, workdir: PathBuf, keep: bool) -> Result<Option<PathBuf>> {
        if !self.failures.is_empty() {
            let tail = log_tail(&self.first.log, 20);
            if !tail.is_empty() {
                eprintln!("bench: last lines of {}:\n{tail}", self.first.log.display());
            }
        }
        if keep || !self.failures.is_empty() {
            eprintln!("bench: kept the work directory {}", workdir.display());
            return Ok(Some(workdir));
        }
        std::fs::remove_dir_all(&workdir)
            .with_context(|| format!("removing {}", workdir.display()))?;
        Ok(None)
    }

    fn packuments_per_sec(&self) -> f64 {
        per_sec(self.first_stats.packuments_served, self.first.wall)
    }

    fn mb_per_sec(&self) -> f64 {
        per_sec(self.first_stats.bytes_sent, self.first.wall) / 1e6
    }

    /// CPU seconds per 1,000 packuments stored in run 1 (coordinator process; remote
    /// fetchers separately).
    fn cpu_per_1000(&self, cpu: Duration) -> Option<f64> {
        let served = self.first_stats.packuments_served;
        (served > 0).then(|| cpu.as_secs_f64() * 1000.0 / served as f64)
    }

    fn fetchers_cpu(&self) -> Duration {
        self.fetcher_cpu.iter().sum()
    }

    fn ratio_to_ceiling(&self) -> Option<f64> {
        let c = self.ceiling.as_ref()?;
        Some(self.packuments_per_sec() / per_sec(c.stored, c.wall))
    }

    /// The median of the rounds' ratios (the one ratio with a single round).
    fn ratio_to_ceiling_median(&self) -> Option<f64> {
        rounds::median(self.rounds.iter().map(rounds::Round::ratio))
    }

    fn ratio_to_npm_client(&self) -> Option<f64> {
        let npm = self.npm.as_ref()?;
        Some(self.packuments_per_sec() / npm.per_second)
    }

    fn rows_per_sec(&self) -> Option<f64> {
        self.first
            .index_done
            .map(|d| per_sec(self.packages as u64, d))
    }

    fn to_table(&self) -> String {
        let mut t = Table::new("alldocs bench");
        t.row("arguments", &self.args_line);
        t.row("fetchers", self.fetchers);
        t.row(
            "packages (expected stored)",
            format!("{} ({})", self.packages, self.expected_stored),
        );
        t.row("simulator setup", format!("{:.2} s", secs(self.sim_setup)));
        t.row(
            "largest packument",
            format!("{} bytes", self.largest_document),
        );
        self.first_run_table(&mut t);
        self.comparison_table(&mut t);
        self.checks_table(&mut t);

        let mut out = t.0;
        if self.failures.is_empty() {
            out.push_str("\nresult: all checks passed\n");
        } else {
            let _ = writeln!(out, "\nresult: FAILED\n  {}", self.failures.join("\n  "));
        }
        if let Some(dir) = &self.workdir {
            let _ = writeln!(out, "work directory kept: {}", dir.display());
        }
        out
    }

    /// Run 1's figures: throughput, CPU, the ratios, the index phase, memory, and what
    /// the simulator counted.
    fn first_run_table(&self, t: &mut Table) {
        t.section("run 1: full snapshot");
        t.row("exit code", exit_code(self.first.status));
        t.row("wall time", format!("{:.2} s", secs(self.first.wall)));
        t.row("packuments/s", format!("{:.0}", self.packuments_per_sec()));
        t.row(
            "MB/s (uncompressed bodies, 10^6 B)",
            format!("{:.1}", self.mb_per_sec()),
        );
        t.row(
            "CPU s per 1,000 packuments: coordinator",
            opt(self.cpu_per_1000(self.first.cpu), 3),
        );
        t.row(
            "  of which its checkpoint thread (SQLite)",
            opt(self.cpu_per_1000(self.first.checkpoint_cpu), 3),
        );
        if !self.fetcher_cpu.is_empty() {
            t.row(
                "CPU s per 1,000 packuments: fetchers",
                opt(self.cpu_per_1000(self.fetchers_cpu()), 3),
            );
        }
        t.row("ratio_to_ceiling", opt(self.ratio_to_ceiling(), 2));
        if self.rounds.len() > 1 {
            for (i, r) in self.rounds.iter().enumerate() {
                t.row(
                    &format!("  round {}: packuments/s, ceiling's, ratio", i + 1),
                    format!(
                        "{:.0}, {}, {}",
                        r.pipeline_per_second,
                        opt(r.ceiling_per_second, 0),
                        opt(r.ratio(), 2)
                    ),
                );
            }
            t.row(
                &format!("ratio_to_ceiling, median of {} rounds", self.rounds.len()),
                opt(self.ratio_to_ceiling_median(), 2),
            );
        }
        t.row("ratio_to_npm_client", opt(self.ratio_to_npm_client(), 2));
        t.row(
            "index phase done after",
            self.first
                .index_done
                .map_or("n/a".into(), |d| format!("{:.2} s", secs(d))),
        );
        t.row(
            "_all_docs rows/s (index phase, pipelined)",
            self.rows_per_sec()
                .map_or("n/a".into(), |r| format!("{r:.0}")),
        );
        t.row(
            "peak RSS coordinator",
            format!("{:.1} MiB", mib(self.first.peak_rss_kb)),
        );
        for (i, kb) in self.fetcher_peak_rss_kb.iter().enumerate() {
            t.row(
                &format!("peak RSS fetcher {i} (both runs)"),
                format!("{:.1} MiB", mib(*kb)),
            );
        }
        t.row(
            "peak RSS bench (in-process simulator)",
            format!("{:.1} MiB", mib(self.bench_peak_rss_kb)),
        );
        t.stats(&self.first_stats);
    }

    /// The store checked against the registry, and run 2 (the rerun).
    fn checks_table(&self, t: &mut Table) {
        t.section("verification");
        t.row(
            "packuments stored (checkpoint)",
            format!("{} (expected {})", self.stored_files, self.expected_stored),
        );
        let s = &self.store;
        t.row("objects holding them (packs or files)", s.objects);
        t.row(
            "store bytes / raw bytes",
            format!("{} / {} = {:.3}", s.store_bytes, s.raw_bytes, s.ratio()),
        );
        t.row("show of one name, median", opt(s.show_ms_median, 1) + " ms");
        t.row(
            "export --order packs: s, raw MB/s",
            format!(
                "{}, {}",
                opt(s.export_packs_seconds, 2),
                opt(s.export_packs_mb_per_second, 0)
            ),
        );
        t.row(
            "export (key order): s, raw MB/s",
            format!(
                "{}, {}",
                opt(s.export_key_seconds, 2),
                opt(s.export_key_mb_per_second, 0)
            ),
        );
        t.row(
            "rows in data/index/*.jsonl",
            format!("{} (expected {})", self.index_rows, self.packages),
        );
        t.row(
            "spot-checked byte-for-byte",
            format!(
                "{} ({} differ)",
                self.spot_checked,
                self.spot_mismatches.len()
            ),
        );

        t.section("run 2: incremental (same checkpoint)");
        t.row("exit code", exit_code(self.second.status));
        t.row("wall time", format!("{:.2} s", secs(self.second.wall)));
        t.row(
            "packument requests (must be 0)",
            self.second_stats.packument_requests,
        );
        t.row("_all_docs requests", self.second_stats.all_docs_requests);
        t.row(
            "peak RSS coordinator",
            format!("{:.1} MiB", mib(self.second.peak_rss_kb)),
        );
    }

    fn comparison_table(&self, t: &mut Table) {
        if let Some(c) = &self.ceiling {
            t.section("ceiling: bare fetch-and-store loop (same process as the simulator)");
            t.row("requests in flight", c.concurrency);
            t.row("wall time", format!("{:.2} s", secs(c.wall)));
            t.row("packuments/s", format!("{:.0}", per_sec(c.stored, c.wall)));
            t.row("MB/s", format!("{:.1}", per_sec(c.bytes, c.wall) / 1e6));
            t.row(
                "CPU s per 1,000 packuments (its threads)",
                format!(
                    "{:.3}",
                    c.cpu.as_secs_f64() * 1000.0 / c.stored.max(1) as f64
                ),
            );
            t.row("stored / missing", format!("{} / {}", c.stored, c.missing));
        }
        if let Some(n) = &self.npm {
            t.section("crawl on npm's own client (npm-registry-fetch)");
            t.row("requests in flight", n.in_flight);
            t.row("wall time", format!("{:.2} s", n.seconds));
            t.row("packuments/s", format!("{:.0}", n.per_second));
            t.row("MB/s", format!("{:.1}", n.bytes as f64 / n.seconds / 1e6));
            t.row(
                "CPU s per 1,000 packuments (node)",
                format!(
                    "{:.3}",
                    n.cpu.as_secs_f64() * 1000.0 / n.fetched.max(1) as f64
                ),
            );
            t.row(
                "fetched / missing / failed",
                format!("{} / {} / {}", n.fetched, n.missing, n.failed),
            );
        }
        if let Some(Ok(rps)) = &self.wrk {
            t.section("wrk: fetch only, same simulator, same requests in flight");
            t.row("requests/s", format!("{rps:.0}"));
            t.row(
                "ratio_to_wrk (pipeline packuments/s)",
                opt(self.ratio_to_wrk(), 2),
            );
        }
        if let Some((run, stats)) = &self.files_run {
            t.section("run 3: the same pipeline in the files layout");
            t.row("exit code", exit_code(run.status));
            t.row(
                "packuments/s",
                format!("{:.0}", per_sec(stats.packuments_served, run.wall)),
            );
            t.row(
                "CPU s per 1,000 packuments: coordinator",
                opt(self.cpu_per_1000(run.cpu), 3),
            );
            t.row(
                "  of which its checkpoint thread (SQLite)",
                opt(self.cpu_per_1000(run.checkpoint_cpu), 3),
            );
            t.row(
                "ratio packs / files (packuments/s)",
                opt(self.ratio_packs_to_files(), 2),
            );
        }
        for note in &self.notes {
            t.row("note", note);
        }
        if let Some(Err(why)) = &self.wrk {
            t.row("note", why);
        }
    }

    fn ratio_to_wrk(&self) -> Option<f64> {
        match &self.wrk {
            Some(Ok(rps)) if *rps > 0.0 => Some(self.packuments_per_sec() / rps),
            _ => None,
        }
    }

    fn ratio_packs_to_files(&self) -> Option<f64> {
        let (run, stats) = self.files_run.as_ref()?;
        let files = per_sec(stats.packuments_served, run.wall);
        (files > 0.0).then(|| self.packuments_per_sec() / files)
    }

    fn comparisons_json(&self) -> serde_json::Value {
        let ceiling = self.ceiling.as_ref().map(|c| {
            json!({
                "in_flight": c.concurrency,
                "wall_seconds": secs(c.wall),
                "packuments_per_second": per_sec(c.stored, c.wall),
                "mb_per_second": per_sec(c.bytes, c.wall) / 1e6,
                "cpu_seconds": secs(c.cpu),
                "cpu_seconds_per_1000": secs(c.cpu) * 1000.0 / c.stored.max(1) as f64,
                "stored": c.stored,
                "missing": c.missing,
            })
        });
        let npm = self.npm.as_ref().map(|n| {
            json!({
                "in_flight": n.in_flight,
                "wall_seconds": n.seconds,
                "packuments_per_second": n.per_second,
                "mb_per_second": n.bytes as f64 / n.seconds / 1e6,
                "cpu_seconds": secs(n.cpu),
                "cpu_seconds_per_1000": secs(n.cpu) * 1000.0 / n.fetched.max(1) as f64,
                "fetched": n.fetched,
                "missing": n.missing,
                "failed": n.failed,
            })
        });
        json!({ "ceiling": ceiling, "npm_client": npm, "notes": self.notes })
    }

    fn to_json(&self) -> serde_json::Value {
        let run = |r: &RunOutcome, s: &StatsSnapshot| {
            json!({
                "exit_code": r.status.code(),
                "wall_seconds": secs(r.wall),
                "index_done_seconds": r.index_done.map(secs),
                "coordinator_peak_rss_kib": r.peak_rss_kb,
                "coordinator_cpu_seconds": secs(r.cpu),
                "checkpoint_thread_cpu_seconds": secs(r.checkpoint_cpu),
                "sim": s,
            })
        };
        json!({
            "arguments": self.args_line,
            "fetchers": self.fetchers.to_string(),
            "packages": self.packages,
            "expected_stored": self.expected_stored,
            "largest_document_bytes": self.largest_document,
            "sim_setup_seconds": secs(self.sim_setup),
            "packuments_per_second": self.packuments_per_sec(),
            "mb_per_second": self.mb_per_sec(),
            "ratio_to_ceiling": self.ratio_to_ceiling(),
            "ratio_to_ceiling_median": self.ratio_to_ceiling_median(),
            "rounds": self.rounds.iter().map(rounds::Round::to_json).collect::<Vec<_>>(),
            "ratio_to_npm_client": self.ratio_to_npm_client(),
            "coordinator_cpu_seconds": secs(self.first.cpu),
            "coordinator_cpu_seconds_per_1000": self.cpu_per_1000(self.first.cpu),
            "coordinator_checkpoint_thread_cpu_seconds_per_1000": self.cpu_per_1000(self.first.checkpoint_cpu),
            "fetchers_cpu_seconds": secs(self.fetchers_cpu()),
            "fetchers_cpu_seconds_per_1000": self.cpu_per_1000(self.fetchers_cpu()),
            "coordinator_peak_rss_kib": self.first.peak_rss_kb,
            "comparisons": self.comparisons_json(),
            "all_docs_rows_per_second": self.rows_per_sec(),
            "first_run": run(&self.first, &self.first_stats),
            "incremental_run": run(&self.second, &self.second_stats),
            "fetcher_peak_rss_kib": self.fetcher_peak_rss_kb,
            "bench_peak_rss_kib": self.bench_peak_rss_kb,
            "store": self.store,
            "store_ratio": self.store.ratio(),
            "wrk_requests_per_second": self.wrk.as_ref().and_then(|w| w.as_ref().ok()),
            "ratio_to_wrk": self.ratio_to_wrk(),
            "files_run": self.files_run.as_ref().map(|(r, s)| json!({
                "wall_seconds": secs(r.wall),
                "packuments_per_second": per_sec(s.packuments_served, r.wall),
                "coordinator_cpu_seconds_per_1000": self.cpu_per_1000(r.cpu),
                "checkpoint_thread_cpu_seconds_per_1000": self.cpu_per_1000(r.checkpoint_cpu),
            })),
            "ratio_packs_to_files": self.ratio_packs_to_files(),
            "verification": {
                "stored_files": self.stored_files,
                "index_rows": self.index_rows,
                "spot_checked": self.spot_checked,
                "spot_mismatches": self.spot_mismatches,
            },
            "passed": self.failures.is_empty(),
            "failures": self.failures,
            "workdir": self.workdir,
        })
    }
}

/// A plain two-column text table with titled sections.
struct Table(String);

impl Table {
    fn new(title: &str) -> Table {
        Table(format!("{title}\n"))
    }

    fn section(&mut self, title: &str) {
        let _ = writeln!(self.0, "\n{title}");
    }

    fn row(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "  {label:<44} {value}");
    }

    /// The simulator's counters for a run.
    fn stats(&mut self, s: &StatsSnapshot) {
        self.row("sim: _all_docs requests", s.all_docs_requests);
        self.row("sim: packument requests", s.packument_requests);
        self.row(
            "sim: 200 / 304 / 404 / 429",
            format!(
                "{} / {} / {} / {}",
                s.packuments_served, s.not_modified, s.not_found, s.throttled
            ),
        );
        self.row(
            "sim: body bytes served",
            format!("{} ({:.1} MB)", s.bytes_sent, s.bytes_sent as f64 / 1e6),
        );
    }
}
