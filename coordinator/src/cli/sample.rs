//! `coordinator verify --sample N`: N stored names chosen at random, each asked of the
//! registry again (one request at a time, at most `--rate-limit` a second, with the token
//! npm's configuration gives that registry), to report those whose stored revision is no
//! longer the registry's.

use std::{sync::Arc, time::Duration};

use alldocs_fetcher::{
    source::{
        http::{body_within, build_client, redact, status_error, FetchError, Http, RetryPolicy},
        npmrc::NpmConfig,
        pace::Pace,
        packument::{packument_url, DEFAULT_MAX_DOCUMENT_BYTES},
    },
    store::Store,
};
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;

use super::{findings::Report, snapshot};
use crate::run::args::usage;

/// A name's request is tried up to four times over a few seconds: enough for a 429 or a
/// dropped connection, without an unreachable registry holding `verify` for minutes a name.
const SAMPLE_RETRIES: RetryPolicy = RetryPolicy {
    max_retries: 3,
    base: Duration::from_millis(500),
    max_delay: Duration::from_secs(8),
};

/// The registry `--sample` asks: `--registry`, else the one the checkpoint records;
/// `None` without `--sample`.
pub fn registry_of(
    conn: &Connection,
    given: Option<&str>,
    sample: u64,
) -> anyhow::Result<Option<String>> {
    if sample == 0 {
        if given.is_some() {
            return Err(usage(
                "--registry is the registry --sample asks: give --sample N too",
            ));
        }
        return Ok(None);
    }
    if let Some(url) = given {
        return Ok(Some(url.to_string()));
    }
    let recorded: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = '--registry'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match recorded.filter(|u| !u.is_empty()) {
        Some(url) => Ok(Some(url)),
        None => Err(usage(
            "--sample asks the registry, and the checkpoint records none: give --registry URL",
        )),
    }
}

/// Up to `n` stored packages, chosen at random.
pub fn pick(conn: &Connection, n: u64) -> rusqlite::Result<Vec<snapshot::Stored>> {
    let mut stmt = conn
        .prepare("SELECT name FROM packages WHERE status = 'stored' ORDER BY random() LIMIT ?1")?;
    let names: Vec<String> = stmt
        .query_map([n as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut picked = Vec::with_capacity(names.len());
    for name in names {
        if let Some((_, _, stored)) = snapshot::lookup(conn, &name)? {
            picked.push(stored);
        }
    }
    Ok(picked)
}

/// What identifies a packument's revision: `_rev` (full documents) or `modified`
/// (abbreviated ones, which have no `_rev`).
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "_rev")]
    rev: Option<String>,
    modified: Option<String>,
}

/// Asks the registry for each of `names`; notes the stale, the gone and the unanswered.
/// The requests go as a run's do: the token npm's configuration gives that registry (never
/// over a downgrade to http, never to another host or path), paced at `rate_limit`,
/// retried with backoff on 429, 5xx and broken connections.
pub async fn ask(
    store: &Store,
    picked: &[snapshot::Stored],
    registry: &str,
    rate_limit: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let credentials = NpmConfig::from_env_and_files()
        .credentials
        .with_env_token(registry);
    let pace = if rate_limit > 0.0 {
        Pace::Rate(rate_limit)
    } else {
        Pace::Unlimited
    };
    let http = Http::new(build_client(), Arc::new(credentials), pace, SAMPLE_RETRIES);
    for one in picked {
        let name = &one.name;
        // What the storage check could not read, it has reported already.
        let Some(stored) = stored_head(store, one).await else {
            continue;
        };
        report.sampled += 1;
        let (accept, ours) = match (&stored.rev, &stored.modified) {
            (Some(rev), _) => ("application/json", rev.clone()),
            (None, Some(modified)) => ("application/vnd.npm.install-v1+json", modified.clone()),
            (None, None) => continue,
        };
        let url = packument_url(registry, name);
        match current(&http, &url, accept, stored.rev.is_some()).await {
            Ok(Some(theirs)) if theirs == ours => {}
            Ok(Some(theirs)) => {
                let detail = format!("stored {ours}, the registry now has {theirs}");
                report.note(name, "stale", detail, true);
            }
            Ok(None) => {
                let detail = format!(
                    "{} answered 404: unpublished or removed since",
                    redact(&url)
                );
                report.note(name, "gone", detail, true);
            }
            Err(e) => report.note(name, "unanswered", e.to_string(), true),
        }
    }
    Ok(())
}

async fn stored_head(store: &Store, stored: &snapshot::Stored) -> Option<Head> {
    let bytes = snapshot::read(store, stored).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The registry's revision (or `modified`) of the packument at `url`; `None` on 404.
async fn current(
    http: &Http,
    url: &str,
    accept: &str,
    by_rev: bool,
) -> Result<Option<String>, FetchError> {
    let field = if by_rev { "_rev" } else { "modified" };
    http.retry("packument", || async {
        let mut resp = http.send(url, accept).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        let body = body_within(&mut resp, url, DEFAULT_MAX_DOCUMENT_BYTES)
            .await?
            .ok_or_else(|| FetchError::TooLarge {
                url: redact(url),
                limit: DEFAULT_MAX_DOCUMENT_BYTES,
            })?;
        let head: Head = serde_json::from_slice(&body).map_err(|e| FetchError::InvalidJson {
            url: redact(url),
            message: e.to_string(),
        })?;
        let found = if by_rev { head.rev } else { head.modified };
        found.map(Some).ok_or_else(|| FetchError::Protocol {
            url: redact(url),
            message: format!("its answer has no {field}"),
        })
    })
    .await
}
