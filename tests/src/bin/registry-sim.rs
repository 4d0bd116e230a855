//! `registry-sim`: serves a deterministic simulated npm registry (see `alldocs_tests::sim`).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use alldocs_tests::sim::{SimConfig, SimServer};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// A fast, deterministic simulator of npm's replication endpoint and registry.
#[derive(Debug, Parser)]
#[command(name = "registry-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:5984")]
    listen: SocketAddr,
    /// Number of packages.
    #[arg(long)]
    packages: usize,
    /// Mean size in bytes of full packuments.
    #[arg(long, default_value_t = 54_000)]
    mean_bytes: usize,
    /// Seed of all deterministic choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each generation step changes the revisions of ~5% of the packages.
    #[arg(long, default_value_t = 0)]
    generation: u64,
    /// Path prefix to serve under, e.g. /registry.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Every k-th package is listed but its packument answers 404 (0: none).
    #[arg(long, default_value_t = 0)]
    missing_every: usize,
    /// The first k packument requests of each package answer 503.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Every k-th packument request answers 429 with Retry-After: 0 (0: none).
    #[arg(long, default_value_t = 0)]
    throttle_every: usize,
    /// Delay in milliseconds before each packument response.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Never gzip packuments.
    #[arg(long)]
    no_gzip: bool,
    /// `_all_docs` silently answers at most this many rows whatever `limit` asks (0: no cap).
    #[arg(long, default_value_t = 0)]
    page_cap: usize,
}

/// Resolves when the process gets SIGTERM or Ctrl-C.
async fn terminated() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = sigterm.recv() => Ok(()),
            result = tokio::signal::ctrl_c() => Ok(result?),
        }
    }
    #[cfg(not(unix))]
    {
        Ok(tokio::signal::ctrl_c().await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = SimConfig {
        packages: args.packages,
        mean_bytes: args.mean_bytes,
        seed: args.seed,
        generation: args.generation,
        prefix: args.prefix,
        missing_every: args.missing_every,
        fail_first: args.fail_first,
        throttle_every: args.throttle_every,
        latency_ms: args.latency_ms,
        gzip: !args.no_gzip,
        page_cap: args.page_cap,
    };
    let server = SimServer::start(args.listen, cfg).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{}", server.addr())?;
        stdout.flush()?;
    }
    terminated().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
