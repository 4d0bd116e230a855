//! **Part `cli`: the command line.** The subcommands and the exit code an outcome maps
//! to; `status` (progress from a running coordinator), and the read-only commands over a
//! snapshot: `index` and `show` ([`read`]) and [`export`], reading either layout through
//! [`snapshot`] (packs read whole in [`packs`]); the Parquet export ([`dataset`]: rows of
//! a packument in [`rows`] and [`manifest`], files in [`tables`]); [`verify`] (every
//! object's length and digest, a [`sample`] asked of the registry, [`findings`]);
//! [`unpack`] (a snapshot as files) and [`compact`] (packs rewritten). A job's own options
//! are `run::args`.
//!
//! Uses: `run`, `api`, `fleet` (the bearer header that status sends), `checkpoint`.

pub mod compact;
pub mod dataset;
pub mod export;
pub mod findings;
pub mod manifest;
pub mod packs;
pub mod read;
pub mod rows;
pub mod sample;
pub mod snapshot;
pub mod status;
pub mod tables;
pub mod unpack;
pub mod verify;

use std::process::ExitCode;

use alldocs_fetcher::serve::telemetry;
use clap::{Args, Parser, Subcommand};

use crate::run::args::{JobArgs, UsageError};

#[derive(Parser)]
#[command(
    name = "coordinator",
    version,
    about = "alldocs: a complete, verifiable, resumable snapshot of the npm registry"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the gRPC API and run the job; stay up when it is done.
    Serve(JobArgs),
    /// Run the job and exit when it is done: 0 when nothing failed, 3 when items failed for
    /// good, 1 on an error, 130/143 when interrupted (docs/troubleshooting.md).
    Run(JobArgs),
    /// Show progress from a running coordinator.
    Status(StatusArgs),
    /// Print every indexed name and revision of a snapshot, in key order (read-only).
    Index(crate::cli::read::IndexArgs),
    /// Print one stored packument (or a field of it) from a snapshot, no network.
    Show(crate::cli::read::ShowArgs),
    /// Stream a snapshot's stored packuments as NDJSON (read-only).
    Export(crate::cli::export::ExportArgs),
    /// Write a snapshot in the files layout (one object per packument) to a directory or
    /// bucket (reads the snapshot only).
    Unpack(crate::cli::unpack::UnpackArgs),
    /// Rewrite packs that are mostly dead (older copies) into new ones, then delete them;
    /// takes the checkpoint's lock.
    Compact(crate::cli::compact::CompactArgs),
    /// Check that every stored package's object is in the store with the length and
    /// SHA-256 the checkpoint recorded; with --sample, that stored revisions are current
    /// (exit 4: damaged or missing, 5: stale; reads only).
    Verify(crate::cli::verify::VerifyArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The coordinator's gRPC address (HOST:PORT or http://HOST:PORT). The admin token in
    /// ALLDOCS_ADMIN_TOKEN, if set, is sent with the call.
    #[arg(long, env = "ALLDOCS_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command until it is done or `stop` resolves (a signal, in the binary).
pub async fn execute(
    command: Command,
    stop: impl std::future::Future<Output = telemetry::Signal> + Send,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => crate::run::job::job(args, true, stop, None).await,
        Command::Run(args) => crate::run::job::job(args, false, stop, None).await,
        Command::Status(args) => crate::cli::status::status(args).await,
        Command::Index(args) => crate::cli::read::index(args).await,
        Command::Show(args) => crate::cli::read::show(args).await,
        Command::Export(args) => crate::cli::export::export(args).await,
        Command::Unpack(args) => crate::cli::unpack::unpack(args).await,
        Command::Compact(args) => crate::cli::compact::compact(args).await,
        Command::Verify(args) => crate::cli::verify::verify(args).await,
    }
}

/// The exit code of an error: 2 for one the user can fix by changing the command, 1
/// otherwise.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}
