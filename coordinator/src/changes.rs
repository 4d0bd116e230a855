//! The replication endpoint's `_changes` feed, read by `serve --follow`: its head
//! (`update_seq` of `GET /`), pages of changes after an opaque sequence, and the test for a
//! feed that was reset under us.

use std::{fmt, sync::Arc};

use alldocs_fetcher::{
    all_docs::{MAX_ID_BYTES, MAX_REV_BYTES},
    http::{redact, status_error, FetchError, Http, RetryPolicy},
    npmrc::Credentials,
    pace::Pace,
};
use serde::Deserialize;
use serde_json::Value;

/// The most one feed answer may hold. A full page of 10,000 changes at the id and revision
/// bounds is about 6 MB; past this the origin is not serving `_changes`.
pub const MAX_FEED_BYTES: usize = 32 << 20;

/// A feed position, as the endpoint gave it: a number (npm, PouchDB) or an opaque string
/// (CouchDB 2 and later). Kept as the text that goes into `since=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq(String);

impl Seq {
    /// The sequence as recorded in the checkpoint.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// A sequence from JSON: a number, or a string (its contents).
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => Some(Self(n.to_string())),
            Value::String(s) if !s.is_empty() && s.len() <= 1024 => Some(Self(s.clone())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The sequence's leading number (all of npm's and PouchDB's; the `N` of CouchDB's
    /// `N-…`), for comparing positions and showing the lag.
    pub fn number(&self) -> Option<u64> {
        let digits: &str = self
            .0
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("");
        digits.parse().ok()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the feed was reset under us (npm did so in 2016, 2021 and 2025): its head is
/// behind the position we applied. Opaque sequences without a number never compare.
pub fn is_reset(ours: &Seq, head: &Seq) -> bool {
    matches!((ours.number(), head.number()), (Some(o), Some(h)) if h < o)
}

/// How many sequence numbers `ours` is behind `head` (`None` when either is not a number).
pub fn lag(ours: &Seq, head: &Seq) -> Option<u64> {
    Some(head.number()?.saturating_sub(ours.number()?))
}

/// One change: a document's name, its winning revision now, and whether it was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub rev: String,
    pub deleted: bool,
}

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
            client: alldocs_fetcher::http::build_client(),
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
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| FetchError::transport(url, &e))?
            {
                if body.len() + chunk.len() > MAX_FEED_BYTES {
                    return Err(FetchError::Misbehaved {
                        url: redact(url),
                        message: format!("answer over {MAX_FEED_BYTES} bytes; not a _changes feed"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_opaque_but_their_numbers_compare() {
        let npm = Seq::from_json(&serde_json::json!(41_223_017)).unwrap();
        assert_eq!(npm.as_str(), "41223017");
        assert_eq!(npm.number(), Some(41_223_017));
        let couch = Seq::from_json(&serde_json::json!("12-g1AAAAFTeJzLYWBg")).unwrap();
        assert_eq!(couch.as_str(), "12-g1AAAAFTeJzLYWBg");
        assert_eq!(couch.number(), Some(12));
        let opaque = Seq::new("g1AAAA");
        assert_eq!(opaque.number(), None);
        assert!(Seq::from_json(&serde_json::json!(null)).is_none());
        assert!(Seq::from_json(&serde_json::json!("")).is_none());

        assert!(
            is_reset(&Seq::new("5000"), &Seq::new("12")),
            "head behind us"
        );
        assert!(!is_reset(&Seq::new("12"), &Seq::new("12")));
        assert!(!is_reset(&Seq::new("12"), &Seq::new("5000")));
        assert!(!is_reset(&opaque, &Seq::new("1")), "opaque never compares");
        assert_eq!(lag(&Seq::new("10"), &Seq::new("25")), Some(15));
        assert_eq!(lag(&opaque, &Seq::new("25")), None);
    }

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
