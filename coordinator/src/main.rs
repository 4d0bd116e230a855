//! `coordinator`: plans the key space, leases work to fetchers, keeps the SQLite
//! checkpoint, and serves progress over gRPC.

mod api;
mod checkpoint;
mod display;
mod fetchers;
mod lease;
mod plan;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use alldocs_fetcher::{grpc, npmrc::NpmConfig, store::StoreLocation, telemetry, FetchService};
use alldocs_proto::v1::{
    coordinator_client::CoordinatorClient, coordinator_server::CoordinatorServer, Accept,
    GetProgressRequest, ListFailuresRequest, RunState,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::{watch, Notify};

use crate::{
    api::CoordinatorService,
    checkpoint::{Checkpoint, RunIdentity},
    display::ProgressMode,
    fetchers::FetcherHandle,
    lease::{Scheduler, Settings, Stats},
};

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "alldocs: a complete, verifiable, resumable snapshot of the npm registry"
)]
struct Cli {
    #[command(flatten)]
    log: telemetry::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API and run the job; stay up when it is done.
    Serve(JobArgs),
    /// Run the job and exit when it is done: 0 when nothing failed, 1 otherwise.
    Run(JobArgs),
    /// Show progress from a running coordinator.
    Status(StatusArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AcceptArg {
    /// Whole packuments (Accept: application/json).
    Full,
    /// npm's abbreviated install metadata (application/vnd.npm.install-v1+json).
    Abbreviated,
}

#[derive(Args, Debug)]
struct JobArgs {
    /// The SQLite checkpoint; carrying on after a stop or crash means passing the same one.
    #[arg(long, env = "ALLDOCS_DB", default_value = "./alldocs.sqlite")]
    db: PathBuf,
    /// Address of the coordinator's gRPC API.
    #[arg(long, env = "ALLDOCS_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The CouchDB-compatible replication endpoint that serves `_all_docs`.
    #[arg(
        long,
        env = "ALLDOCS_REPLICATE_ORIGIN",
        default_value = "https://replicate.npmjs.com"
    )]
    replicate_origin: String,
    /// The npm registry packuments are fetched from. Default: the registry npm is
    /// configured with (npm_config_registry, .npmrc, then `npm config get registry`).
    #[arg(long, env = "ALLDOCS_REGISTRY")]
    registry: Option<String>,
    /// Where objects go: a directory, file://PATH, memory://NAME, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX.
    #[arg(long, env = "ALLDOCS_STORE", default_value = "./alldocs-data")]
    store: String,
    /// Partition pivots: `a,b,c` or `@FILE` (one per line, or a JSON array), strictly
    /// increasing in raw byte order. Default: a built-in set covering npm's key space.
    #[arg(long, env = "ALLDOCS_PIVOTS")]
    pivots: Option<String>,
    /// A remote fetcher's URL (repeatable, or comma-separated in ALLDOCS_FETCHER). None: in-process.
    #[arg(long = "fetcher", env = "ALLDOCS_FETCHER", value_delimiter = ',')]
    fetchers: Vec<String>,
    /// Leases in flight at once.
    #[arg(long, env = "ALLDOCS_MAX_IN_FLIGHT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_in_flight: u32,
    /// Requests in flight at once within one lease.
    #[arg(long, env = "ALLDOCS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    concurrency: u32,
    /// Packuments per lease.
    #[arg(long, env = "ALLDOCS_LEASE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    lease_size: u32,
    /// How long a lease may run before its unfinished work is handed out again (keep it
    /// well inside Cloud Run's request timeout).
    #[arg(long, env = "ALLDOCS_LEASE_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Requests per second to the origins, all fetchers together (0 = no limit).
    #[arg(long, env = "ALLDOCS_RATE_LIMIT", default_value_t = 80.0)]
    rate_limit: f64,
    /// Retries of one request on connection errors, 429 and 5xx.
    #[arg(long, env = "ALLDOCS_MAX_RETRIES", default_value_t = 5)]
    max_retries: u32,
    /// First retry delay; it doubles each retry, with jitter (Retry-After wins).
    #[arg(long, env = "ALLDOCS_RETRY_BASE", default_value = "500ms", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    /// Leases an item may go through before it is failed.
    #[arg(long, env = "ALLDOCS_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    max_attempts: u32,
    /// Rows per `_all_docs` request (npm allows at most 10,000).
    #[arg(long, env = "ALLDOCS_PAGE_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// Full or abbreviated packuments.
    #[arg(long, env = "ALLDOCS_ACCEPT", value_enum, default_value = "full")]
    accept: AcceptArg,
    /// Progress display: bars on a terminal, log lines otherwise.
    #[arg(long, env = "ALLDOCS_PROGRESS", value_enum, default_value_t)]
    progress: ProgressMode,
    /// How often a progress line is logged when not on a terminal.
    #[arg(long, env = "ALLDOCS_PROGRESS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    progress_interval: Duration,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The coordinator's gRPC address (HOST:PORT or http://HOST:PORT).
    #[arg(long, env = "ALLDOCS_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// An error the user can fix: printed plainly, exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    let result = match cli.command {
        Command::Serve(args) => job(args, true).await,
        Command::Run(args) => job(args, false).await,
        Command::Status(args) => status(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn http_url(option: &str, url: &str) -> anyhow::Result<String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(usage(format!(
            "{option} `{}` is not an http(s) URL; give one such as https://registry.example/",
            alldocs_fetcher::http::redact(url)
        ))),
    }
}

async fn job(args: JobArgs, stay: bool) -> anyhow::Result<ExitCode> {
    // Everything a user can get wrong is checked before anything is written.
    StoreLocation::parse(&args.store).map_err(|e| usage(format!("--store: {e}")))?;
    let pivots = match &args.pivots {
        Some(p) => plan::parse_pivots(p).map_err(|e| usage(format!("--pivots: {e}")))?,
        None => plan::default_pivots(),
    };
    let partitions = plan::partitions(&pivots);
    let origin = http_url("--replicate-origin", &args.replicate_origin)?;
    // Tokens always come from npm's configuration; asking `npm` itself (slow) only when the
    // registry was not given.
    let npm = if args.registry.is_some() {
        NpmConfig::from_env_and_files()
    } else {
        NpmConfig::load()
    };
    let registry = match args.registry.clone().or_else(|| npm.registry.clone()) {
        Some(r) => http_url("--registry", &r)?,
        None => {
            return Err(usage(
                "no npm registry is configured: pass --registry URL, set npm_config_registry, or add `registry=URL` to .npmrc",
            ))
        }
    };
    if !args.fetchers.is_empty() && args.store.starts_with("memory://") {
        return Err(usage(
            "--store memory:// lives inside one process; remote --fetcher processes cannot write to it. Use gs://, s3:// or a shared directory",
        ));
    }
    let fetchers: Vec<FetcherHandle> = if args.fetchers.is_empty() {
        let credentials = npm.credentials.clone().with_env_token(&registry);
        vec![FetcherHandle::Local(FetchService::new(credentials))]
    } else {
        args.fetchers
            .iter()
            .map(|u| FetcherHandle::remote(u).map_err(|e| usage(e.to_string())))
            .collect::<anyhow::Result<_>>()?
    };
    let accept = match args.accept {
        AcceptArg::Full => Accept::Full,
        AcceptArg::Abbreviated => Accept::Abbreviated,
    };
    let identity = RunIdentity {
        replicate_origin: origin.clone(),
        registry: registry.clone(),
        store: args.store.clone(),
        pivots: pivots.clone(),
        accept: format!("{:?}", args.accept).to_lowercase(),
    };
    let listener = grpc::bind(args.listen)
        .await
        .map_err(|e| usage(e.to_string()))?;
    let (checkpoint, opened) =
        Checkpoint::open(&args.db, &identity, &partitions, args.max_attempts).map_err(
            |e| match e {
                checkpoint::CheckpointError::ConfigMismatch { .. }
                | checkpoint::CheckpointError::Open { .. } => usage(e.to_string()),
                other => other.into(),
            },
        )?;
    let local = listener.local_addr()?;
    println!("coordinator listening on {local}");
    tracing::info!(
        run = opened.run, resumed = opened.resumed, partitions = partitions.len(),
        db = %args.db.display(), store = %args.store, registry = %alldocs_fetcher::http::redact(&registry),
        fetchers = fetchers.len(), "starting"
    );

    let stats = Arc::new(Stats::default());
    let retried = Arc::new(Notify::new());
    let (state_tx, state_rx) = watch::channel(RunState::Planning);
    let service = CoordinatorService {
        checkpoint: checkpoint.clone(),
        stats: stats.clone(),
        retried: retried.clone(),
        state: state_rx,
    };
    let (refl_v1, refl_v1alpha) = grpc::reflection();
    let health = grpc::health::<CoordinatorServer<CoordinatorService>>().await;
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(refl_v1)
        .add_service(refl_v1alpha)
        .add_service(CoordinatorServer::new(service.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let mut server = tokio::spawn(server);

    let scheduler = Arc::new(Scheduler::new(
        checkpoint.clone(),
        fetchers.clone(),
        Settings {
            replicate_origin: origin,
            registry,
            store: args.store.clone(),
            accept,
            page_size: args.page_size,
            lease_size: args.lease_size as usize,
            lease_duration: args.lease_duration,
            max_in_flight: args.max_in_flight as usize,
            concurrency: args.concurrency,
            rate_limit: args.rate_limit.max(0.0),
            max_retries: args.max_retries,
            retry_base_ms: args.retry_base.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
        },
        stats.clone(),
        state_tx,
    ));
    let stop = telemetry::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (stop_display, display_stopped) = tokio::sync::oneshot::channel();
        let display = tokio::spawn(display::show(
            service.clone(),
            args.progress,
            args.progress_interval,
            display_stopped,
        ));
        let outcome = tokio::select! {
            result = scheduler.clone().run() => Some(result?),
            _ = &mut stop => None,
        };
        let _ = stop_display.send(());
        let _ = display.await;
        if outcome.is_none() {
            for f in &fetchers {
                if let FetcherHandle::Local(svc) = f {
                    svc.stop();
                }
            }
            eprintln!(
                "interrupted: the checkpoint {} keeps everything finished so far; run the same command again to carry on",
                args.db.display()
            );
            return Ok(ExitCode::from(130));
        }
        let failed = summarize(&service, &checkpoint, &args, local).await?;
        if !stay {
            server.abort();
            return Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        // `serve` stays up: for watching, and to run again when RetryFailed puts work back.
        tokio::select! {
            _ = retried.notified() => tracing::info!("failures put back by RetryFailed; running again"),
            _ = &mut stop => {
                eprintln!("stopped; the run was complete");
                return Ok(ExitCode::SUCCESS);
            }
            r = &mut server => {
                r??;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// Prints the end-of-run summary to stdout; returns how many items failed.
async fn summarize(
    service: &CoordinatorService,
    checkpoint: &Checkpoint,
    args: &JobArgs,
    local: SocketAddr,
) -> anyhow::Result<u64> {
    let progress = service.progress().await?;
    println!("\n{}", display::table(&progress));
    let failed = progress.partitions_failed + progress.packuments_failed;
    if failed > 0 {
        let (failures, total) = checkpoint.call(|db| db.list_failures(10)).await?;
        println!("{total} failed (first {}):", failures.len());
        for f in &failures {
            println!(
                "  {} {}: {} (after {} attempts)",
                f.kind, f.name, f.reason, f.attempts
            );
        }
        println!(
            "Retry them: run the same command again (a new run fetches failures again), or while `coordinator serve` runs:\n  grpcurl -plaintext {local} alldocs.v1.Coordinator/RetryFailed"
        );
    }
    println!("store: {}   checkpoint: {}", args.store, args.db.display());
    Ok(failed)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = if args.addr.contains("://") {
        args.addr.clone()
    } else {
        format!("http://{}", args.addr)
    };
    let mut client = CoordinatorClient::connect(url.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot reach a coordinator at {url}: {e}; is `coordinator serve` running there? Pass --addr HOST:PORT")
    })?;
    let progress = client
        .get_progress(GetProgressRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetProgress from {url} failed: {}", s.message()))?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&display::to_json(&progress))?
        );
    } else {
        print!("{}", display::table(&progress));
        if progress.packuments_failed + progress.partitions_failed > 0 {
            let failures = client
                .list_failures(ListFailuresRequest { limit: 5 })
                .await?
                .into_inner();
            println!(
                "\nfailures ({} in all, first {}):",
                failures.total,
                failures.failures.len()
            );
            for f in failures.failures {
                println!("  {} {}: {}", f.kind, f.name, f.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
