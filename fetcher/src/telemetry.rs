//! Logging: human-readable on a terminal, JSON when asked or when running on Cloud Run.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON on Cloud Run (`K_SERVICE` set), human otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

/// The `--log-format` option both binaries share.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format (logs go to stderr; RUST_LOG sets the level).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "ALLDOCS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Resolves when the process is told to stop: SIGTERM (Cloud Run, systemd) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Installs the global subscriber (to stderr); `RUST_LOG` overrides the level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => std::env::var_os("K_SERVICE").is_some(),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
