//! A job's options: every option of `serve` and `run`, each also read from an `ALLDOCS_*`
//! variable, checked as it is parsed where it can be; and the error for bad usage (exit 2).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::run::display::ProgressMode;

/// The most packuments in one lease.
pub const MAX_LEASE_SIZE: u32 = 10_000;

/// `--layout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Many packuments per object, each its own zstd frame: `packs/<snapshot>/…`.
    Packs,
    /// One object per packument, its exact bytes: `packuments/<key>.json`.
    Files,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AcceptArg {
    /// Whole packuments (Accept: application/json).
    Full,
    /// npm's abbreviated install metadata (application/vnd.npm.install-v1+json).
    Abbreviated,
}

/// How the coordinator proves who it is to remote fetchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FetcherAuthArg {
    /// Nothing.
    None,
    /// `authorization: Bearer $ALLDOCS_FETCHER_TOKEN`.
    Token,
    /// Google-signed ID tokens, audience = the fetcher's URL (Cloud Run with IAM).
    Google,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// The SQLite checkpoint; carrying on after a stop or crash means passing the same one.
    #[arg(long, env = "ALLDOCS_DB", default_value = "./alldocs.sqlite")]
    pub db: PathBuf,
    /// Address of the coordinator's gRPC API. Beyond loopback it requires ALLDOCS_ADMIN_TOKEN,
    /// which every call of the alldocs.v1.Coordinator service must then carry.
    #[arg(long, env = "ALLDOCS_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The CouchDB-compatible replication endpoint that serves `_all_docs`.
    #[arg(
        long,
        env = "ALLDOCS_REPLICATE_ORIGIN",
        default_value = "https://replicate.npmjs.com"
    )]
    pub replicate_origin: String,
    /// The npm registry packuments are fetched from. Default: the registry npm is
    /// configured with (npm_config_registry, .npmrc, then `npm config get registry`).
    #[arg(long, env = "ALLDOCS_REGISTRY")]
    pub registry: Option<String>,
    /// Where objects go: a directory, file://PATH, memory://NAME, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX.
    #[arg(long, env = "ALLDOCS_STORE", default_value = "./alldocs-data")]
    pub store: String,
    /// Partition pivots: `a,b,c` or `@FILE` (one per line, or a JSON array), strictly
    /// increasing in raw byte order. Default: a built-in set covering npm's key space.
    #[arg(long, env = "ALLDOCS_PIVOTS")]
    pub pivots: Option<String>,
    /// A remote fetcher's URL (repeatable, or comma-separated in ALLDOCS_FETCHER). None: in-process.
    #[arg(long = "fetcher", env = "ALLDOCS_FETCHER", value_delimiter = ',')]
    pub fetchers: Vec<String>,
    /// How to authenticate to remote fetchers: `token` sends ALLDOCS_FETCHER_TOKEN as a
    /// bearer token, `google` a Google-signed ID token whose audience is the fetcher's URL
    /// (from the metadata server, or GOOGLE_APPLICATION_CREDENTIALS). Default: `token` if
    /// ALLDOCS_FETCHER_TOKEN is set, else `none`.
    #[arg(long, env = "ALLDOCS_FETCHER_AUTH", value_enum)]
    pub fetcher_auth: Option<FetcherAuthArg>,
    /// HTTP/2 connections to each remote fetcher URL; leases go round robin over them, so
    /// a load balancer such as Cloud Run's spreads them over instances.
    #[arg(long, env = "ALLDOCS_FETCHER_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub fetcher_connections: u32,
    /// Leases in flight at once.
    #[arg(long, env = "ALLDOCS_MAX_IN_FLIGHT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_in_flight: u32,
    /// Requests in flight at once within one lease.
    #[arg(long, env = "ALLDOCS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub concurrency: u32,
    /// Packuments per lease (at most 10,000, so a lease always fits a fetcher's message limit).
    #[arg(long, env = "ALLDOCS_LEASE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=MAX_LEASE_SIZE as i64))]
    pub lease_size: u32,
    /// How long a lease may run before its unfinished work is handed out again (keep it
    /// well inside Cloud Run's request timeout).
    #[arg(long, env = "ALLDOCS_LEASE_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Requests per second to the origins, all fetchers together (0 = no limit): in any
    /// one-second window the origins see at most this many plus one. Halved when they
    /// answer 429 or 503, then recovered step by step.
    #[arg(long, env = "ALLDOCS_RATE_LIMIT", default_value_t = 80.0, allow_negative_numbers = true, value_parser = parse_rate_limit)]
    pub rate_limit: f64,
    /// After the origins throttled (429 or 503), how often the rate climbs back by a tenth
    /// of --rate-limit while they do not.
    #[arg(long, env = "ALLDOCS_RATE_RECOVERY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub rate_recovery: Duration,
    /// Retries of one request on connection errors, 429 and 5xx.
    #[arg(long, env = "ALLDOCS_MAX_RETRIES", default_value_t = 5)]
    pub max_retries: u32,
    /// First retry delay; it doubles each retry, with jitter (Retry-After wins).
    #[arg(long, env = "ALLDOCS_RETRY_BASE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Leases an item may go through before it is failed.
    #[arg(long, env = "ALLDOCS_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_attempts: u32,
    /// Rows per `_all_docs` request, and changes per `_changes` request with --follow
    /// (npm allows at most 10,000).
    #[arg(long, env = "ALLDOCS_PAGE_SIZE", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
    /// Only the index pass (every name and revision, in `index/` and the checkpoint): no
    /// packument is fetched.
    #[arg(long, env = "ALLDOCS_INDEX_ONLY", conflicts_with = "names")]
    pub index_only: bool,
    /// Fetch just these packuments, no index pass: `a,b,c`, or `@FILE` with a JSON array
    /// (`["express", "lodash"]`) or one name per line (`#` comments); `name@range` is the
    /// name. Names the registry does not have are `missing`.
    #[arg(long, env = "ALLDOCS_NAMES")]
    pub names: Option<String>,
    /// `serve` only: once the snapshot is done, keep it current from the replication
    /// endpoint's `_changes` feed (changed and new packuments fetched, deleted ones marked
    /// `deleted`). The feed position is kept in the checkpoint: a restart carries on.
    #[arg(long, env = "ALLDOCS_FOLLOW", conflicts_with = "names")]
    pub follow: bool,
    /// With --follow: how long to wait between looks at the feed once caught up (at
    /// least 100ms).
    #[arg(long, env = "ALLDOCS_FOLLOW_INTERVAL", default_value = "10s", value_parser = parse_follow_interval)]
    pub follow_interval: Duration,
    /// With --follow: remove a deleted package's stored object (by default it is kept and
    /// the package marked `deleted`).
    #[arg(long, env = "ALLDOCS_DELETE_OBJECTS", requires = "follow")]
    pub delete_objects: bool,
    /// Full or abbreviated packuments.
    #[arg(long, env = "ALLDOCS_ACCEPT", value_enum, default_value = "full")]
    pub accept: AcceptArg,
    /// Largest packument stored, decoded (e.g. 256MiB, 1GB); a larger one fails and is
    /// not stored. npm refuses documents over 100 MB, so the default leaves ample room.
    #[arg(long, env = "ALLDOCS_MAX_DOCUMENT_BYTES", default_value = "256MiB", value_parser = parse_max_document_bytes)]
    pub max_document_bytes: bytesize::ByteSize,
    /// How packuments are stored, for a new snapshot: packs (many per object, compressed;
    /// the default) or files (one object each). Recorded in the checkpoint; a later run
    /// keeps it, and another --layout on that checkpoint is refused.
    #[arg(long, env = "ALLDOCS_LAYOUT", value_enum)]
    pub layout: Option<LayoutArg>,
    /// With packs: a pack is sealed (written whole, then reported) once it holds this many
    /// compressed bytes (e.g. 64MiB); a larger packument goes into a pack of its own.
    #[arg(long, env = "ALLDOCS_PACK_BYTES", default_value = "64MiB", value_parser = parse_pack_bytes)]
    pub pack_bytes: bytesize::ByteSize,
    /// With packs: a pack is also sealed once its first packument is this old, so
    /// progress keeps moving on a slow registry.
    #[arg(long, env = "ALLDOCS_PACK_INTERVAL", default_value = "5s", value_parser = parse_pack_interval)]
    pub pack_interval: Duration,
    /// Progress display: bars on a terminal, log lines otherwise.
    #[arg(long, env = "ALLDOCS_PROGRESS", value_enum, default_value_t)]
    pub progress: ProgressMode,
    /// How often a progress line is logged when not on a terminal.
    #[arg(long, env = "ALLDOCS_PROGRESS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
}

/// A byte size such as `256MiB`, `1GB` or `1000000`, at least 1 KiB.
fn parse_max_document_bytes(s: &str) -> Result<bytesize::ByteSize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a size ({e}); give one such as 256MiB or 1GB"))?;
    if size.as_u64() < 1024 {
        return Err(format!(
            "{size} is too small for any packument; give at least 1KiB"
        ));
    }
    Ok(size)
}

/// `--pack-bytes`: a size from 64 KiB to 4 GiB.
fn parse_pack_bytes(s: &str) -> Result<bytesize::ByteSize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a size ({e}); give one such as 64MiB"))?;
    if !(64 << 10..=4 << 30).contains(&size.as_u64()) {
        return Err(format!(
            "{size} is outside 64KiB..4GiB; give a pack size such as 64MiB"
        ));
    }
    Ok(size)
}

/// `--pack-interval`: from 10 ms to 10 minutes.
fn parse_pack_interval(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if (Duration::from_millis(10)..=Duration::from_secs(600)).contains(&d) => Ok(d),
        Ok(_) => Err("--pack-interval must be from 10ms to 10m; give one such as 5s".into()),
        Err(e) => Err(format!(
            "`{value}` is not a duration ({e}); give one such as 5s"
        )),
    }
}

/// `--follow-interval`: a duration of at least 100 ms, so a caught-up follower never
/// polls the feed in a tight loop.
fn parse_follow_interval(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("--follow-interval must be at least 100ms (the feed is read back to back while behind anyway); give one such as 10s".into()),
        Err(e) => Err(format!("`{value}` is not a duration ({e}); give one such as 10s or 1m")),
    }
}

/// `--rate-limit`: a finite number of requests per second, 0 or more.
pub fn parse_rate_limit(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err("--rate-limit takes requests per second: a number of 0 or more (0 = no limit), such as 40 or 12.5".into()),
    }
}

/// An error the user can fix: printed plainly, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_finite_and_not_negative() {
        assert_eq!(parse_rate_limit("40"), Ok(40.0));
        assert_eq!(parse_rate_limit("0"), Ok(0.0));
        assert_eq!(parse_rate_limit("12.5"), Ok(12.5));
        for bad in ["-5", "NaN", "inf", "-inf", "fast", ""] {
            let message = parse_rate_limit(bad).expect_err(bad);
            assert!(message.contains("--rate-limit") && message.contains("0 = no limit"));
        }
    }

    #[test]
    fn follow_intervals_are_durations_of_at_least_100ms() {
        assert_eq!(parse_follow_interval("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_follow_interval("100ms"),
            Ok(Duration::from_millis(100))
        );
        assert!(parse_follow_interval("0s")
            .unwrap_err()
            .contains("at least 100ms"));
        assert!(parse_follow_interval("soon")
            .unwrap_err()
            .contains("such as 10s"));
    }

    #[test]
    fn pack_sizes_and_intervals_are_bounded() {
        assert_eq!(parse_pack_bytes("64MiB").unwrap().as_u64(), 64 << 20);
        assert!(parse_pack_bytes("1KiB")
            .unwrap_err()
            .contains("64KiB..4GiB"));
        assert!(parse_pack_bytes("lots").unwrap_err().contains("64MiB"));
        assert_eq!(parse_pack_interval("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_pack_interval("0s")
            .unwrap_err()
            .contains("10ms to 10m"));
        assert!(parse_pack_interval("1h")
            .unwrap_err()
            .contains("10ms to 10m"));
    }

    #[test]
    fn max_document_bytes_takes_human_sizes() {
        assert_eq!(
            parse_max_document_bytes("256MiB").unwrap().as_u64(),
            256 << 20
        );
        assert_eq!(
            parse_max_document_bytes("1 GB").unwrap().as_u64(),
            1_000_000_000
        );
        assert_eq!(parse_max_document_bytes("5000").unwrap().as_u64(), 5000);
        let err = parse_max_document_bytes("lots").unwrap_err();
        assert!(err.contains("256MiB"), "{err}");
        assert!(parse_max_document_bytes("12").unwrap_err().contains("1KiB"));
    }
}
