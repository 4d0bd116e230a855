//! `fetcher serve`: the alldocs fetcher as a gRPC service (locally or on Cloud Run).

use std::net::SocketAddr;

use alldocs_fetcher::{grpc, npmrc::NpmConfig, telemetry, FetchService};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fetcher",
    version,
    about = "alldocs fetcher: pages _all_docs and fetches packuments into an object store"
)]
struct Cli {
    #[command(flatten)]
    log: telemetry::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve alldocs.v1.Fetcher (with health and reflection) until SIGTERM or Ctrl-C.
    Serve {
        /// Address to listen on; when $PORT is set (Cloud Run) the default is 0.0.0.0:$PORT.
        #[arg(long, env = "ALLDOCS_LISTEN")]
        listen: Option<SocketAddr>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match cli.command {
        Command::Serve { listen } => {
            let addr = match (listen, std::env::var("PORT")) {
                (Some(addr), _) => addr,
                (None, Ok(port)) => format!("0.0.0.0:{port}").parse().map_err(|_| {
                    anyhow::anyhow!("$PORT is `{port}`, not a port number; unset it or fix it")
                })?,
                (None, Err(_)) => "127.0.0.1:50052".parse().expect("valid default"),
            };
            // Tokens come from this process's own npm configuration; leases carry none.
            let npm = NpmConfig::from_env_and_files();
            let listener = grpc::bind(addr).await?;
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, tokens = !npm.credentials.is_empty(), "fetcher listening");
            println!("fetcher listening on {local}");
            grpc::serve_fetcher(listener, FetchService::new(npm.credentials), async {
                telemetry::shutdown_signal().await;
                tracing::info!("shutting down: ending running leases cleanly");
            })
            .await
        }
    }
}
