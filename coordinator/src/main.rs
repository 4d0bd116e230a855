//! `coordinator`: plans the key space, leases work to fetchers, keeps the SQLite
//! checkpoint, and serves progress over gRPC. Everything lives in the library; this
//! parses the command line, runs it, and maps the outcome to an exit code.

use std::process::ExitCode;

use alldocs_coordinator::cli::{execute, exit_code, Cli};
use alldocs_fetcher::serve::telemetry;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match execute(cli.command, telemetry::shutdown_signal()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}
