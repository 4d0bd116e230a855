//! The replication endpoint's `_changes` feed, read by `serve --follow`: its head
//! (`update_seq` of `GET /`), pages of changes after an opaque sequence, and the test for a
//! feed that was reset under us.

use std::sync::Arc;

use alldocs_fetcher::{
    source::all_docs::{MAX_ID_BYTES, MAX_REV_BYTES},
    source::http::{body_within, redact, status_error, FetchError, Http, RetryPolicy},
    source::npmrc::Credentials,
    source::pace::Pace,
};
use serde::Deserialize;
use serde_json::Value;

use crate::checkpoint::feed::{Change, Seq};

/// The most one feed answer may hold. A full page of 10,000 changes at the id and revision
/// bounds is about 6 MB; past this the origin is not serving `_changes`.
pub const MAX_FEED_BYTES: usize = 32 << 20;

/// One page of the feed: its changes (in feed order) and where the next page starts.
#[derive(Debug)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    /// Rows that are not packages (design documents) or over the bounds, skipped.
    pub skipped: usize,
    pub rows: usize,
    pub last_seq: Seq,
}

#[derive(Deserialize)]
struct RawPage {
    results: Vec<RawChange>,
    last_seq: Value,
}

#[derive(Deserialize)]
struct RawChange {
    id: String,
    #[serde(default)]
    changes: Vec<RawRev>,
    #[serde(default)]
    deleted: bool,
}

#[derive(Deserialize)]
struct RawRev {
    rev: String,
}

#[derive(Deserialize)]
struct RawHead {
    update_seq: Value,
}

/// Parses a `_changes` answer. Rows for design documents, or whose id or revision is over
/// the bounds the index pass uses, are skipped (counted), never stored.
pub fn parse_page(body: &[u8]) -> Result<ChangesPage, String> {
    let raw: RawPage =
        serde_json::from_slice(body).map_err(|e| format!("not a _changes answer: {e}"))?;
    let last_seq = Seq::from_json(&raw.last_seq)
        .ok_or_else(|| format!("`last_seq` is {}, not a sequence", raw.last_seq))?;
    let rows = raw.results.len();
    let changes: Vec<Change> = raw
        .results
        .into_iter()
        .filter_map(|row| {
            let rev = row.changes.into_iter().next()?.rev;
            let usable = !row.id.starts_with("_design/")
                && !row.id.is_empty()
                && row.id.len() <= MAX_ID_BYTES
                && !rev.is_empty()
                && rev.len() <= MAX_REV_BYTES;
            usable.then_some(Change {
                name: row.id,
                rev,
                deleted: row.deleted,
            })
        })
        .collect();
    Ok(ChangesPage {
        skipped: rows - changes.len(),
        rows,
        changes,
        last_seq,
    })
}

/// Parses `GET /` of the endpoint: its `update_seq`.
pub fn parse_head(body: &[u8]) -> Result<Seq, String> {
    let raw: RawHead = serde_json::from_slice(body)
        .map_err(|e| format!("not a database info answer (no `update_seq`): {e}"))?;
    Seq::from_json(&raw.update_seq)
        .ok_or_else(|| format!("`update_seq` is {}, not a sequence", raw.update_seq))
}

/// Why the feed gave no page.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The endpoint refused our `since` (400, 404, 410): the feed was reset or the position
    /// is no longer known.
    #[error("{url} refused the feed position {since} (HTTP {status})")]
    SinceRefused {
        url: String,
        since: String,
        status: u16,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// The feed of one replication endpoint, paced like every other request of the run.
pub struct Feed {
    origin: String,
    client: reqwest::Client,
    credentials: Arc<Credentials>,
    policy: RetryPolicy,
}

impl Feed {
    pub fn new(origin: &str, credentials: Arc<Credentials>, policy: RetryPolicy) -> Self {
        Self {
            origin: origin.trim_end_matches('/').to_string(),
            client: alldocs_fetcher::source::http::build_client(),
            credentials,
            policy,
        }
    }

    /// The feed's head: `update_seq` of `GET <origin>/`.
    pub async fn head(&self, pace: Pace) -> Result<Seq, FetchError> {
        let url = format!("{}/", self.origin);
        let body = self.get(&url, pace).await?;
        parse_head(&body).map_err(|message| FetchError::Protocol {
            url: redact(&url),
            message,
        })
    }

    /// Up to `limit` changes after `since`.
    pub async fn page(
        &self,
        since: &Seq,
        limit: u32,
        pace: Pace,
    ) -> Result<ChangesPage, FeedError> {
        let mut url = url::Url::parse(&format!("{}/_changes", self.origin)).map_err(|e| {
            FetchError::Protocol {
                url: redact(&self.origin),
                message: format!("not a URL: {e}"),
            }
        })?;
        url.query_pairs_mut()
            .append_pair("since", since.as_str())
            .append_pair("limit", &limit.to_string());
        let body = match self.get(url.as_str(), pace).await {
            Err(FetchError::Status { status, .. })
                if matches!(status.as_u16(), 400 | 404 | 410) =>
            {
                return Err(FeedError::SinceRefused {
                    url: redact(url.as_str()),
                    since: since.to_string(),
                    status: status.as_u16(),
                })
            }
            other => other?,
        };
        parse_page(&body).map_err(|message| {
            FeedError::Fetch(FetchError::Protocol {
                url: redact(url.as_str()),
                message,
            })
        })
    }

    /// A GET with the run's retries, read within [`MAX_FEED_BYTES`].
    async fn get(&self, url: &str, pace: Pace) -> Result<Vec<u8>, FetchError> {
        let http = Http::new(
            self.client.clone(),
            self.credentials.clone(),
            pace,
            self.policy,
        );
        http.retry("_changes", || async {
            let mut resp = http.send(url, "application/json").await?;
            if !resp.status().is_success() {
                return Err(status_error(url, &resp));
            }
            body_within(&mut resp, url, MAX_FEED_BYTES as u64)
                .await?
                .ok_or_else(|| FetchError::Misbehaved {
                    url: redact(url),
                    message: format!("answer over {MAX_FEED_BYTES} bytes; not a _changes feed"),
                })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_packages_and_skips_design_documents_and_oversized_rows() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let body = serde_json::json!({
            "results": [
                {"seq": 2, "id": "b", "changes": [{"rev": "1-c59a"}]},
                {"seq": 3, "id": "a", "changes": [{"rev": "2-4a50"}, {"rev": "2-0000"}], "deleted": true},
                {"seq": 4, "id": "_design/app", "changes": [{"rev": "1-aaaa"}]},
                {"seq": 5, "id": long, "changes": [{"rev": "1-aaaa"}]},
                {"seq": 6, "id": "no-rev", "changes": []},
            ],
            "last_seq": 6
        });
        let page = parse_page(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            page.changes,
            vec![
                Change {
                    name: "b".into(),
                    rev: "1-c59a".into(),
                    deleted: false
                },
                Change {
                    name: "a".into(),
                    rev: "2-4a50".into(),
                    deleted: true
                },
            ]
        );
        assert_eq!((page.rows, page.skipped), (5, 3));
        assert_eq!(page.last_seq, Seq::new("6"));

        let head = br#"{"db_name":"registry","update_seq":"7-g1AA","doc_count":3}"#;
        assert_eq!(parse_head(head).unwrap(), Seq::new("7-g1AA"));
        assert!(parse_head(br#"{"db_name":"registry"}"#)
            .unwrap_err()
            .contains("update_seq"));
        assert!(parse_page(br#"{"results":[],"last_seq":null}"#)
            .unwrap_err()
            .contains("last_seq"));
        assert!(parse_page(b"<html>").unwrap_err().contains("_changes"));
    }
}
