//! `fetcher serve`: the alldocs fetcher as a gRPC service (locally or on Cloud Run).

use std::process::ExitCode;

use alldocs_fetcher::{
    serve::auth::TOKEN_ENV,
    serve::grpc,
    serve::options::{prepare, Cli, Command, ServeArgs, StartError},
    serve::telemetry,
    source::npmrc::NpmConfig,
    FetchService,
};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    let Command::Serve(args) = cli.command;
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<StartError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Tokens come from this process's own npm configuration; leases carry none.
    let npm = NpmConfig::from_env_and_files();
    let env = |name: &str| std::env::var(name).ok();
    let startup = prepare(&args, env("PORT"), env(TOKEN_ENV), npm.registry.clone())?;
    let listener = grpc::bind(startup.addr).await?;
    let local = listener.local_addr()?;
    let stop = telemetry::shutdown_signal();
    tracing::info!(
        addr = %local, tokens = !npm.credentials.is_empty(),
        caller_token = startup.options.auth.requires_token(), exposed = startup.exposed,
        allow_store = %startup.stores, allow_origin = %startup.origins,
        max_lease_items = args.max_lease_items, max_lease_concurrency = args.max_lease_concurrency,
        "fetcher listening"
    );
    println!("fetcher listening on {local}");
    let service = FetchService::new(npm.credentials).with_policy(startup.policy);
    grpc::serve_fetcher_with(listener, service, startup.options, async {
        stop.await;
        tracing::info!("shutting down: ending running leases cleanly");
    })
    .await
}
