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

/// The signal that told the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (Cloud Run, systemd, `kill`).
    Terminate,
}

impl Signal {
    /// The exit code of a job this signal stopped before it finished: 128 + the signal's
    /// number, as a shell reports a process the signal killed (130, 143).
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 128 + 2,
            Signal::Terminate => 128 + 15,
        }
    }
}

/// Resolves when the process is told to stop, SIGTERM (Cloud Run, systemd) or Ctrl-C,
/// with which of them it was.
pub fn shutdown_signal() -> impl std::future::Future<Output = Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed now, not when first polled: a signal that arrives as soon as the process
    // says it listens is a clean shutdown, never the default (fatal) action.
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
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
