//! Refusing early: every option of a job is checked, and what it needs is built (the plan,
//! the fetchers and their credentials, the lease settings), before anything is written.
//! The store the run names must be one it can write to — a local directory that is
//! writable and tells names apart by case, or a bucket that answers — so a bad `--store`
//! costs nothing and says what to change.

use std::{sync::Arc, time::Duration};

use alldocs_fetcher::{
    source::http::redact,
    source::npmrc::{Credentials, NpmConfig},
    store::{check_writable_and_case_sensitive, Store, StoreLocation},
    FetchService,
};
use alldocs_proto::v1::Accept;
use futures::StreamExt;

use crate::{
    api::admin,
    checkpoint::{Layout, Mode, RunIdentity},
    fleet::fetchers::{Auth, FetcherHandle, RemoteOptions},
    fleet::idtoken::IdTokens,
    fleet::lease::Settings,
    plan::{self, Partition},
    run::args::{usage, AcceptArg, FetcherAuthArg, JobArgs, LayoutArg},
};

/// The variable holding the token remote fetchers require (`--fetcher-auth token`).
pub const FETCHER_TOKEN_ENV: &str = "ALLDOCS_FETCHER_TOKEN";

/// Everything a job needs, checked before anything is written.
pub struct Prepared {
    pub partitions: Vec<Partition>,
    /// The whole snapshot, the index alone, or a list of names.
    pub mode: Mode,
    /// The names of a `--names` run.
    pub names: Vec<String>,
    pub identity: RunIdentity,
    pub settings: Settings,
    pub fetchers: Vec<FetcherHandle>,
    /// Tokens from npm's configuration (each sent only to its own registry URL).
    pub credentials: Arc<Credentials>,
}

/// How long past a lease's deadline a fetcher has to say it stopped.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a bucket has to answer the first listing.
const BUCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that the run can store objects at `url`; the error says what to change.
pub async fn check_store(url: &str) -> Result<(), String> {
    let location = StoreLocation::parse(url).map_err(|e| format!("--store: {e}"))?;
    match location {
        StoreLocation::Local(dir) => {
            check_writable_and_case_sensitive(&dir).map_err(|e| format!("--store: {e}"))
        }
        StoreLocation::Memory(_) => Ok(()),
        StoreLocation::Gcs { .. } => check_bucket(url).await.map_err(|e| with_google_hint(&e)),
        StoreLocation::S3 { .. } => check_bucket(url).await,
    }
}

/// For gs://, an error that came from getting a token (not from the bucket) says where
/// Google credentials come from: object_store reports it only as a failed token request,
/// usually to a metadata server that exists on Google Cloud alone.
fn with_google_hint(error: &str) -> String {
    if error.contains("token request") {
        format!(
            "{error}. No Google credentials could be had: on Google Cloud the metadata server \
             did not give a token; elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service \
             account key file, or run `gcloud auth application-default login`"
        )
    } else {
        error.to_string()
    }
}

/// Lists at most one object under the store's prefix: the bucket exists, the credentials
/// are accepted, and the endpoint answers.
async fn check_bucket(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let fail = |e: &dyn std::fmt::Display| {
        format!("--store {shown} cannot be used: {e}. Check the bucket name and that this machine's credentials may list and write it")
    };
    let store = Store::open(url).map_err(|e| fail(&e))?;
    let first = tokio::time::timeout(BUCKET_TIMEOUT, store.object_store().list(None).next())
        .await
        .map_err(|_| fail(&format!("no answer within {}s", BUCKET_TIMEOUT.as_secs())))?;
    match first {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(fail(&e)),
    }
}

/// Checks every option and builds what the job needs; writes nothing.
pub fn prepare(args: &JobArgs) -> anyhow::Result<Prepared> {
    admin::check_listen(args.listen, admin::admin_token().as_deref()).map_err(usage)?;
    StoreLocation::parse(&args.store).map_err(|e| usage(format!("--store: {e}")))?;
    let pivots = match &args.pivots {
        Some(p) => plan::parse_pivots(p).map_err(|e| usage(format!("--pivots: {e}")))?,
        None => plan::default_pivots(),
    };
    let origin = http_url("--replicate-origin", &args.replicate_origin)?;
    // Tokens always come from npm's configuration; asking `npm` itself (slow) only when the
    // registry was not given.
    let npm = if args.registry.is_some() {
        NpmConfig::from_env_and_files()
    } else {
        NpmConfig::load()
    };
    let Some(registry) = args.registry.clone().or_else(|| npm.registry.clone()) else {
        return Err(usage(
            "no npm registry is configured: pass --registry URL, set npm_config_registry, or add `registry=URL` to .npmrc",
        ));
    };
    let registry = http_url("--registry", &registry)?;
    let credentials = Arc::new(npm.credentials.clone().with_env_token(&registry));
    let fetchers = fetchers(args, &credentials)?;
    let identity = RunIdentity {
        replicate_origin: origin.clone(),
        registry: registry.clone(),
        store: args.store.clone(),
        pivots: pivots.clone(),
        accept: format!("{:?}", args.accept).to_lowercase(),
        layout: args.layout.map(|l| match l {
            LayoutArg::Packs => Layout::Packs,
            LayoutArg::Files => Layout::Files,
        }),
    };
    let names = match &args.names {
        Some(list) => crate::plan::names::parse_names(list).map_err(usage)?,
        None => Vec::new(),
    };
    let mode = match (&args.names, args.index_only) {
        (Some(_), _) => Mode::Names,
        (None, true) => Mode::IndexOnly,
        (None, false) => Mode::Full,
    };
    Ok(Prepared {
        partitions: plan::partitions(&pivots),
        mode,
        names,
        identity,
        settings: settings(args, origin, registry),
        fetchers,
        credentials,
    })
}

/// The in-process fetcher (no `--fetcher`), or one handle per remote one.
fn fetchers(args: &JobArgs, credentials: &Credentials) -> anyhow::Result<Vec<FetcherHandle>> {
    if args.fetchers.is_empty() {
        let local = FetchService::new(credentials.clone());
        return Ok(vec![FetcherHandle::Local(local)]);
    }
    if args.store.starts_with("memory://") {
        return Err(usage(
            "--store memory:// lives inside one process; remote --fetcher processes cannot write to it. Use gs://, s3:// or a shared directory",
        ));
    }
    let options = RemoteOptions {
        connections: args.fetcher_connections as usize,
        auth: fetcher_auth(args.fetcher_auth)?,
    };
    args.fetchers
        .iter()
        .map(|u| FetcherHandle::remote_with(u, &options).map_err(|e| usage(e.to_string())))
        .collect()
}

/// How to authenticate to remote fetchers: `--fetcher-auth`, by default `token` when
/// `ALLDOCS_FETCHER_TOKEN` is set.
fn fetcher_auth(mode: Option<FetcherAuthArg>) -> anyhow::Result<Auth> {
    let token = std::env::var(FETCHER_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty());
    let mode = mode.unwrap_or(if token.is_some() {
        FetcherAuthArg::Token
    } else {
        FetcherAuthArg::None
    });
    Ok(match (mode, token) {
        (FetcherAuthArg::None, _) => Auth::None,
        (FetcherAuthArg::Token, Some(token)) => {
            crate::fleet::bearer::bearer(&token).map_err(|e| usage(format!("{FETCHER_TOKEN_ENV}: {e}")))?;
            Auth::Token(token.into())
        }
        (FetcherAuthArg::Token, None) => {
            return Err(usage(format!(
                "--fetcher-auth token sends {FETCHER_TOKEN_ENV}, which is not set: set it to the fetchers' {FETCHER_TOKEN_ENV}, or choose --fetcher-auth none or google"
            )))
        }
        (FetcherAuthArg::Google, _) => Auth::Google(Arc::new(
            IdTokens::from_env().map_err(|e| usage(e.to_string()))?,
        )),
    })
}

fn settings(args: &JobArgs, replicate_origin: String, registry: String) -> Settings {
    Settings {
        replicate_origin,
        registry,
        store: args.store.clone(),
        accept: match args.accept {
            AcceptArg::Full => Accept::Full,
            AcceptArg::Abbreviated => Accept::Abbreviated,
        },
        page_size: args.page_size,
        lease_size: args.lease_size as usize,
        lease_duration: args.lease_duration,
        answer_grace: ANSWER_GRACE,
        max_in_flight: args.max_in_flight as usize,
        concurrency: args.concurrency,
        rate_limit: args.rate_limit,
        rate_recovery: args.rate_recovery,
        max_retries: args.max_retries,
        retry_base_ms: args.retry_base.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
        max_document_bytes: args.max_document_bytes.as_u64(),
        // The snapshot's own, once its checkpoint is open.
        layout: Layout::Files,
        snapshot_id: String::new(),
        pack_bytes: args.pack_bytes.as_u64(),
        pack_interval: args.pack_interval,
    }
}

fn http_url(option: &str, url: &str) -> anyhow::Result<String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(usage(format!(
            "{option} `{}` is not an http(s) URL; give one such as https://registry.example/",
            redact(url)
        ))),
    }
}
