//! The `fetcher` command line: `fetcher serve`'s options, and what is decided before it listens: where, who may call
//! it, and which stores and origins its leases may name (a bad combination: exit 2).

use std::net::SocketAddr;

use crate::{
    serve::auth::{BearerAuth, TOKEN_ENV},
    serve::grpc::{max_lease_bytes, ServeOptions},
    source::http::redact,
    source::npmrc::Secret,
    source::policy::{Policy, PolicyError, DEFAULT_MAX_LEASE_CONCURRENCY, DEFAULT_MAX_LEASE_ITEMS},
};

/// The `fetcher` command line.
#[derive(clap::Parser)]
#[command(
    name = "fetcher",
    version,
    about = "alldocs fetcher: pages _all_docs and fetches packuments into an object store"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: crate::serve::telemetry::LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Serve alldocs.v1.Fetcher (with health and reflection) until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
}

/// The options of `fetcher serve`; each also reads the environment variable shown.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; when $PORT is set (Cloud Run) the default is 0.0.0.0:$PORT.
    /// Beyond loopback, callers must be authenticated (ALLDOCS_FETCHER_TOKEN or
    /// --trust-platform-auth) and --allow-store is required.
    #[arg(long, env = "ALLDOCS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Stores leases may write, as URL prefixes (comma-separated or repeated):
    /// gs://BUCKET[/PREFIX], s3://BUCKET[/PREFIX], file:///DIR or a directory. Default on
    /// loopback: any but memory://.
    #[arg(long, env = "ALLDOCS_ALLOW_STORE", value_delimiter = ',')]
    pub allow_store: Vec<String>,
    /// Origins leases may read (registry, replication endpoint), as URL prefixes
    /// (comma-separated or repeated), besides the registry of this machine's npm
    /// configuration. Default on loopback: any.
    #[arg(long, env = "ALLDOCS_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,
    /// The most packuments one lease may ask for; a larger lease is refused.
    #[arg(long, env = "ALLDOCS_MAX_LEASE_ITEMS", default_value_t = DEFAULT_MAX_LEASE_ITEMS,
          value_parser = positive_items)]
    pub max_lease_items: usize,
    /// The most requests one lease may have in flight; a lease asking for more is lowered
    /// to this.
    #[arg(long, env = "ALLDOCS_MAX_LEASE_CONCURRENCY",
          default_value_t = DEFAULT_MAX_LEASE_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_lease_concurrency: u32,
    /// Callers are authenticated by the platform (Cloud Run's IAM invoker check), so no
    /// ALLDOCS_FETCHER_TOKEN is needed beyond loopback.
    #[arg(long, env = "ALLDOCS_TRUST_PLATFORM_AUTH",
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    pub trust_platform_auth: bool,
}

fn positive_items(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => {
            Err("--max-lease-items takes a number of packuments of 1 or more, such as 10000".into())
        }
    }
}

/// Why `fetcher serve` will not start (exit 2; nothing listened, nothing written).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("$PORT is `{0}`, not a port number; unset it or fix it")]
    BadPort(String),
    #[error("{TOKEN_ENV} is set but empty: set it to the token callers must send, or unset it")]
    EmptyToken,
    #[error("fetcher serve would listen on {0}, beyond this machine, with no caller authentication: set {TOKEN_ENV} (every Fetch must then carry `authorization: Bearer <token>`), or pass --trust-platform-auth (ALLDOCS_TRUST_PLATFORM_AUTH=1) when the platform authenticates callers (Cloud Run's IAM invoker check); or listen on loopback with --listen 127.0.0.1:PORT")]
    Unauthenticated(SocketAddr),
    #[error("fetcher serve would listen on {0}, beyond this machine, with no store allowed: pass --allow-store (ALLDOCS_ALLOW_STORE) with the stores leases may write, such as --allow-store gs://BUCKET/PREFIX")]
    NoStores(SocketAddr),
    #[error("fetcher serve would listen on {0}, beyond this machine, with no origin allowed: pass --allow-origin (ALLDOCS_ALLOW_ORIGIN) with the registry and replication endpoint leases may read, or configure npm's registry (npm_config_registry or registry= in .npmrc)")]
    NoOrigins(SocketAddr),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Everything `fetcher serve` decided before listening.
#[derive(Debug)]
pub struct Startup {
    pub addr: SocketAddr,
    pub policy: Policy,
    pub options: ServeOptions,
    /// Beyond loopback (not 127.0.0.0/8 or ::1).
    pub exposed: bool,
    /// The allow-lists as given, for the start-up log line (`any` when open).
    pub stores: String,
    pub origins: String,
}

/// Decides how to serve from the options, `$PORT`, `ALLDOCS_FETCHER_TOKEN` and the
/// registry of this machine's npm configuration.
pub fn prepare(
    args: &ServeArgs,
    port: Option<String>,
    token: Option<String>,
    npm_registry: Option<String>,
) -> Result<Startup, StartError> {
    let addr = match (args.listen, port) {
        (Some(addr), _) => addr,
        (None, Some(port)) => format!("0.0.0.0:{port}")
            .parse()
            .map_err(|_| StartError::BadPort(port))?,
        (None, None) => "127.0.0.1:50052".parse().expect("valid default"),
    };
    let exposed = !addr.ip().is_loopback();
    let auth = match token {
        Some(t) if t.trim().is_empty() => return Err(StartError::EmptyToken),
        Some(t) => BearerAuth::token(Secret::new(t.trim())),
        None if exposed && !args.trust_platform_auth => {
            return Err(StartError::Unauthenticated(addr))
        }
        None => BearerAuth::open(),
    };
    let stores = entries(&args.allow_store);
    if exposed && stores.is_empty() {
        return Err(StartError::NoStores(addr));
    }
    let mut origins = entries(&args.allow_origin);
    let restrict_origins = exposed || !origins.is_empty();
    if restrict_origins {
        origins.extend(npm_registry.filter(|r| !r.trim().is_empty()));
        if origins.is_empty() {
            return Err(StartError::NoOrigins(addr));
        }
    }
    let policy = Policy::remote(
        (!stores.is_empty()).then_some(stores.as_slice()),
        restrict_origins.then_some(origins.as_slice()),
        args.max_lease_items,
        args.max_lease_concurrency,
    )?;
    let shown = |list: &[String], open: &str| match list {
        [] => open.to_string(),
        l => l.iter().map(|e| redact(e)).collect::<Vec<_>>().join(", "),
    };
    Ok(Startup {
        addr,
        policy,
        options: ServeOptions {
            auth,
            max_lease_bytes: max_lease_bytes(args.max_lease_items),
        },
        exposed,
        stores: shown(&stores, "any but memory://"),
        origins: shown(&origins, "any"),
    })
}

/// The non-empty entries of a list option, trimmed.
fn entries(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(argv: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .expect("valid options")
            .serve
    }

    fn start(
        argv: &[&str],
        port: Option<&str>,
        token: Option<&str>,
    ) -> Result<Startup, StartError> {
        prepare(
            &args(argv),
            port.map(str::to_string),
            token.map(str::to_string),
            None,
        )
    }

    #[test]
    fn loopback_needs_no_token_and_no_allow_lists() {
        let s = start(&[], None, None).unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:50052");
        assert!(!s.exposed && !s.options.auth.requires_token());
        assert_eq!(
            (s.stores.as_str(), s.origins.as_str()),
            ("any but memory://", "any")
        );
        let s = start(&["--listen", "[::1]:7000"], None, None).unwrap();
        assert!(!s.exposed);
        assert!(
            !start(&["--listen", "127.1.2.3:7000"], None, None)
                .unwrap()
                .exposed
        );
    }

    #[test]
    fn beyond_loopback_callers_must_be_authenticated() {
        for (argv, port) in [
            (
                &[
                    "--listen",
                    "0.0.0.0:7000",
                    "--allow-store",
                    "gs://b",
                    "--allow-origin",
                    "https://registry.example",
                ][..],
                None,
            ),
            (
                &[
                    "--allow-store",
                    "gs://b",
                    "--allow-origin",
                    "https://registry.example",
                ][..],
                Some("8080"),
            ),
        ] {
            let err = start(argv, port, None).unwrap_err().to_string();
            assert!(
                err.contains(TOKEN_ENV) && err.contains("--trust-platform-auth"),
                "{err}"
            );
            assert!(start(argv, port, Some("t0ken"))
                .unwrap()
                .options
                .auth
                .requires_token());
            let mut trusted = argv.to_vec();
            trusted.push("--trust-platform-auth");
            let s = start(&trusted, port, None).unwrap();
            assert!(s.exposed && !s.options.auth.requires_token());
        }
        let err = start(&[], None, Some("  ")).unwrap_err();
        assert!(matches!(err, StartError::EmptyToken), "{err}");
    }

    #[test]
    fn beyond_loopback_stores_and_origins_must_be_named() {
        let open = ["--listen", "0.0.0.0:7000", "--trust-platform-auth"];
        let err = start(&open, None, None).unwrap_err().to_string();
        assert!(
            err.contains("--allow-store") && err.contains("ALLDOCS_ALLOW_STORE"),
            "{err}"
        );
        let stores = [&open[..], &["--allow-store", "gs://b"]].concat();
        let err = start(&stores, None, None).unwrap_err().to_string();
        assert!(err.contains("--allow-origin"), "{err}");
        // The registry of npm's configuration is allowed by default.
        let s = prepare(
            &args(&stores),
            None,
            None,
            Some("https://registry.example/".into()),
        )
        .unwrap();
        assert_eq!(s.origins, "https://registry.example/");
        let err = start(&["--allow-store", "memory://x"], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-store `memory://x`"), "{err}");
    }

    #[test]
    fn list_options_take_commas_and_repeats() {
        let a = args(&["--allow-store", "gs://a,s3://b", "--allow-store", "gs://c,"]);
        assert_eq!(entries(&a.allow_store), ["gs://a", "s3://b", "gs://c"]);
        let s = start(&["--max-lease-items", "40000"], None, None).unwrap();
        assert!(
            s.options.max_lease_bytes >= 40_000 * 486,
            "{}",
            s.options.max_lease_bytes
        );
        assert!(Cli::try_parse_from(["serve", "--max-lease-items", "0"]).is_err());
        assert!(Cli::try_parse_from(["serve", "--max-lease-concurrency", "0"]).is_err());
    }
}
