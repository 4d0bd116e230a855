//! `coordinator verify --sample N`: N stored names chosen at random, each asked of the
//! registry again (one request at a time, at most `--rate-limit` a second), to report
//! those whose stored revision is no longer the registry's.

use std::time::Duration;

use alldocs_fetcher::{source::packument::packument_url, store::Store};
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;

use super::{findings::Report, snapshot};
use crate::run::args::usage;

/// How long one request may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

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
pub async fn ask(
    store: &Store,
    picked: &[snapshot::Stored],
    registry: &str,
    rate_limit: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("alldocs/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_LIMIT)
        .build()?;
    let mut pace = (rate_limit > 0.0).then(|| {
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_limit));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    for one in picked {
        let name = &one.name;
        // What the storage check could not read, it has reported already.
        let Some(stored) = stored_head(store, one).await else {
            continue;
        };
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        report.sampled += 1;
        let (accept, ours) = match (&stored.rev, &stored.modified) {
            (Some(rev), _) => ("application/json", rev.clone()),
            (None, Some(modified)) => ("application/vnd.npm.install-v1+json", modified.clone()),
            (None, None) => continue,
        };
        let url = packument_url(registry, name);
        match current(&client, &url, accept, stored.rev.is_some()).await {
            Ok(Some(theirs)) if theirs == ours => {}
            Ok(Some(theirs)) => {
                let detail = format!("stored {ours}, the registry now has {theirs}");
                report.note(name, "stale", detail, true);
            }
            Ok(None) => {
                let detail = format!("{url} answered 404: unpublished or removed since");
                report.note(name, "gone", detail, true);
            }
            Err(e) => report.note(name, "unanswered", format!("{url}: {e}"), true),
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
    client: &reqwest::Client,
    url: &str,
    accept: &str,
    by_rev: bool,
) -> anyhow::Result<Option<String>> {
    let resp = client.get(url).header("accept", accept).send().await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        anyhow::bail!("HTTP {}", resp.status());
    }
    let head: Head = serde_json::from_slice(&resp.bytes().await?)?;
    let found = if by_rev { head.rev } else { head.modified };
    found.map(Some).ok_or_else(|| {
        anyhow::anyhow!(
            "its answer has no {}",
            if by_rev { "_rev" } else { "modified" }
        )
    })
}
