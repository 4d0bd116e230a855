//! Paging `_all_docs` over one half-open partition `[start, end)`, exactly: no row lost at
//! a page boundary, none duplicated at a partition edge.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    events::EventSink,
    http::{status_error, FetchError, Http},
    keys::{in_range, partition_name},
    store::{index_path, Store},
};
use alldocs_proto::v1::{IndexDone, IndexRow, IndexRows, IndexWork};

/// The largest `limit` npm's replication endpoint accepts.
pub const MAX_PAGE: u32 = 10_000;

#[derive(Deserialize)]
struct Page {
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    id: Option<String>,
    key: Option<String>,
    value: Option<RowValue>,
}

#[derive(Deserialize)]
struct RowValue {
    rev: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    id: &'a str,
    rev: &'a str,
}

/// What paging one partition produced.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexOutcome {
    pub done: IndexDone,
}

/// The `_all_docs` URL for one page: keys JSON-encoded then URL-encoded, the origin's path
/// prefix kept.
pub fn page_url(origin: &str, startkey: Option<&str>, end: Option<&str>, limit: u32) -> String {
    let mut url = url::Url::parse(&format!("{}/_all_docs", origin.trim_end_matches('/')))
        .expect("the origin was validated as a URL");
    {
        let mut q = url.query_pairs_mut();
        if let Some(start) = startkey {
            q.append_pair("startkey", &json_string(start));
        }
        if let Some(end) = end {
            q.append_pair("endkey", &json_string(end));
            q.append_pair("inclusive_end", "false");
        }
        q.append_pair("limit", &limit.to_string());
    }
    url.into()
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// Pages the partition, writes `index/<partition>.jsonl`, and streams every row back.
pub async fn run(
    http: &Http,
    origin: &str,
    store: &Store,
    work: &IndexWork,
    sink: &EventSink,
) -> Result<IndexOutcome, FetchError> {
    let start = work.start.as_deref();
    let end = work.end.as_deref();
    let partition = if work.partition.is_empty() {
        partition_name(start, end)
    } else {
        work.partition.clone()
    };
    let page_size = match work.page_size {
        0 => MAX_PAGE,
        n => n.min(MAX_PAGE),
    };
    let path = index_path(&partition);
    let uri = store.uri(&path);
    let mut writer = store.writer(&path, 8 << 20);
    let store_err = |e: std::io::Error| FetchError::Store {
        uri: uri.clone(),
        message: e.to_string(),
    };

    let mut last: Option<String> = None;
    let (mut rows_total, mut bytes, mut pages) = (0u64, 0u64, 0u64);
    let result: Result<(), FetchError> = async {
        loop {
            // After the first page, the last id seen comes back first and is dropped: ask
            // for one more row so every page makes progress, even with a page size of 1.
            let (startkey, limit) = match &last {
                None => (start, page_size),
                Some(l) => (Some(l.as_str()), (page_size + 1).min(MAX_PAGE)),
            };
            let url = page_url(origin, startkey, end, limit);
            let page = fetch_page(http, &url).await?;
            pages += 1;
            let mut raw_last: Option<String> = None;
            let mut kept = Vec::new();
            let mut past_end = false;
            for row in page.rows {
                let Some(id) = row.id.or(row.key) else {
                    continue;
                };
                if let Some(prev) = raw_last.as_deref() {
                    if id.as_bytes() <= prev.as_bytes() {
                        return Err(FetchError::Protocol {
                            url: crate::http::redact(&url),
                            message: format!(
                                "rows are not in raw byte order (`{id}` after `{prev}`); \
                                 this endpoint cannot be paged exactly"
                            ),
                        });
                    }
                }
                raw_last = Some(id.clone());
                if last
                    .as_deref()
                    .is_some_and(|l| id.as_bytes() <= l.as_bytes())
                {
                    continue; // the repeated first row
                }
                if end.is_some_and(|e| id.as_bytes() >= e.as_bytes()) {
                    past_end = true;
                    continue;
                }
                if !in_range(&id, start, end) {
                    continue;
                }
                let rev = row.value.and_then(|v| v.rev).unwrap_or_default();
                kept.push(IndexRow { id, rev });
            }
            if !kept.is_empty() {
                let mut buf = Vec::with_capacity(kept.len() * 48);
                for row in &kept {
                    serde_json::to_writer(
                        &mut buf,
                        &Line {
                            id: &row.id,
                            rev: &row.rev,
                        },
                    )
                    .expect("rows serialize");
                    buf.push(b'\n');
                }
                writer.write_all(&buf).await.map_err(store_err)?;
                bytes += buf.len() as u64;
                rows_total += kept.len() as u64;
                sink.index_rows(IndexRows {
                    partition: partition.clone(),
                    rows: kept,
                })
                .await?;
            }
            // A short page is not proof of the end: a server or proxy may cap pages below
            // `limit` without a word. The listing ends only when a page brings nothing new
            // (one small extra request per partition), or reaches the partition's end.
            if past_end {
                return Ok(());
            }
            match (&last, raw_last) {
                (Some(prev), Some(new)) if new.as_bytes() <= prev.as_bytes() => return Ok(()),
                (_, Some(new)) => last = Some(new),
                (_, None) => return Ok(()),
            }
        }
    }
    .await;
    match result {
        Ok(()) => {
            writer.shutdown().await.map_err(store_err)?;
            Ok(IndexOutcome {
                done: IndexDone {
                    partition,
                    rows: rows_total,
                    uri,
                    bytes,
                    pages,
                },
            })
        }
        Err(e) => {
            // Leave no partial index object behind.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

async fn fetch_page(http: &Http, url: &str) -> Result<Page, FetchError> {
    http.retry(url, || async {
        http.admit().await;
        let resp = http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::transport(url, &e))?;
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| FetchError::transport(url, &e))?;
        serde_json::from_slice::<Page>(&body).map_err(|e| FetchError::InvalidJson {
            url: crate::http::redact(url),
            message: e.to_string(),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_urls_encode_keys_as_json_and_keep_the_origin_path() {
        let url = page_url(
            "http://127.0.0.1:9/registry/",
            Some("@types/node"),
            Some("b"),
            7,
        );
        assert_eq!(
            url,
            "http://127.0.0.1:9/registry/_all_docs?startkey=%22%40types%2Fnode%22&endkey=%22b%22&inclusive_end=false&limit=7"
        );
        assert_eq!(
            page_url("http://h", None, None, 10),
            "http://h/_all_docs?limit=10"
        );
    }
}
