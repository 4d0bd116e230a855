//! Paging `_all_docs` over one half-open partition `[start, end)`, exactly: no row lost at
//! a page boundary, none duplicated at a partition edge.

use object_store::buffered::BufWriter;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    events::EventSink,
    http::{redact, status_error, FetchError, Http},
    keys::{in_range, partition_name},
    store::{index_path, Store},
};
use alldocs_proto::v1::{IndexDone, IndexRow, IndexRows, IndexWork};

/// The largest `limit` npm's replication endpoint accepts.
pub const MAX_PAGE: u32 = 10_000;

/// One decoded `_all_docs` page; `total_rows` and `offset` are not used.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    pub rows: Vec<Row>,
}

/// One `_all_docs` row as served: any part may be missing.
#[derive(Debug, Default, Deserialize)]
pub struct Row {
    pub id: Option<String>,
    pub key: Option<String>,
    pub value: Option<RowValue>,
}

/// A row's `value`: the winning revision.
#[derive(Debug, Default, Deserialize)]
pub struct RowValue {
    pub rev: Option<String>,
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

/// The next `_all_docs` request of a partition, ready for [`page_url`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest<'a> {
    pub startkey: Option<&'a str>,
    pub endkey: Option<&'a str>,
    pub limit: u32,
}

/// Where a partition stands after a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask again from this key (the last id the page held).
    Next { startkey: String },
    /// The partition is complete.
    Done,
}

/// What one page gave: its new rows inside the partition, in order, and the next step.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged {
    pub rows: Vec<IndexRow>,
    pub step: Step,
}

/// Why a page cannot be paged past.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    #[error(
        "rows are not in raw byte order (`{key}` after `{previous}`); \
         this endpoint cannot be paged exactly"
    )]
    OutOfOrder { key: String, previous: String },
}

/// The paging state of one half-open partition `[start, end)`, without any I/O: it says
/// which request comes next and, given the page that answered it, which rows are new and
/// whether the partition is finished.
///
/// A short page is not proof of the end: a server or proxy may cap pages below `limit`
/// without a word. The listing ends only when a page brings nothing new (one small extra
/// request per partition), or reaches the partition's end.
#[derive(Debug, Clone)]
pub struct Pager {
    start: Option<String>,
    end: Option<String>,
    page_size: u32,
    /// The last id seen, the next `startkey`; `None` before the first page.
    last: Option<String>,
}

impl Pager {
    /// A pager at the partition's start; a `page_size` of 0 means [`MAX_PAGE`], and no
    /// page asks for more than that.
    pub fn new(start: Option<&str>, end: Option<&str>, page_size: u32) -> Self {
        let page_size = match page_size {
            0 => MAX_PAGE,
            n => n.min(MAX_PAGE),
        };
        Self {
            start: start.map(str::to_owned),
            end: end.map(str::to_owned),
            page_size,
            last: None,
        }
    }

    /// The request to send next.
    pub fn request(&self) -> PageRequest<'_> {
        // After the first page, the last id seen comes back first and is dropped: ask for
        // one more row so every page makes progress, even with a page size of 1.
        let (startkey, limit) = match &self.last {
            None => (self.start.as_deref(), self.page_size),
            Some(l) => (Some(l.as_str()), (self.page_size + 1).min(MAX_PAGE)),
        };
        PageRequest {
            startkey,
            endkey: self.end.as_deref(),
            limit,
        }
    }

    /// Takes the page that answered [`Pager::request`]: keeps the rows that are new and
    /// inside `[start, end)` (a row is named by its `id`, else its `key`, and skipped with
    /// neither; a missing `rev` is empty), and moves on. Rows must come in strictly
    /// increasing raw byte order, or the page is refused and nothing of it is kept.
    pub fn step(&mut self, page: Page) -> Result<Paged, PagingError> {
        let (start, end) = (self.start.as_deref(), self.end.as_deref());
        let mut raw_last: Option<String> = None;
        let mut rows = Vec::new();
        let mut past_end = false;
        for row in page.rows {
            let Some(id) = row.id.or(row.key) else {
                continue;
            };
            if let Some(prev) = raw_last.as_deref() {
                if id.as_bytes() <= prev.as_bytes() {
                    return Err(PagingError::OutOfOrder {
                        key: id,
                        previous: prev.to_owned(),
                    });
                }
            }
            raw_last = Some(id.clone());
            if self.seen(&id) {
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
            rows.push(IndexRow { id, rev });
        }
        let step = if past_end {
            Step::Done
        } else {
            self.advance(raw_last)
        };
        Ok(Paged { rows, step })
    }

    /// Whether `id` is at or before the last id seen.
    fn seen(&self, id: &str) -> bool {
        self.last
            .as_deref()
            .is_some_and(|l| id.as_bytes() <= l.as_bytes())
    }

    /// Moves to the page's last id, or finishes when the page brought nothing new.
    fn advance(&mut self, raw_last: Option<String>) -> Step {
        match raw_last {
            Some(new) if !self.seen(&new) => {
                self.last = Some(new.clone());
                Step::Next { startkey: new }
            }
            _ => Step::Done,
        }
    }
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
    let (start, end) = (work.start.as_deref(), work.end.as_deref());
    let partition = if work.partition.is_empty() {
        partition_name(start, end)
    } else {
        work.partition.clone()
    };
    let path = index_path(&partition);
    let mut done = IndexDone {
        partition,
        rows: 0,
        uri: store.uri(&path),
        bytes: 0,
        pages: 0,
    };
    let mut writer = store.writer(&path, 8 << 20);
    let pager = Pager::new(start, end, work.page_size);
    match page_partition(http, origin, pager, &mut writer, sink, &mut done).await {
        Ok(()) => {
            writer
                .shutdown()
                .await
                .map_err(|e| store_error(&done.uri, e))?;
            Ok(IndexOutcome { done })
        }
        Err(e) => {
            // Leave no partial index object behind.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// The paging loop: build the URL, fetch the page, step, write and send the new rows.
async fn page_partition(
    http: &Http,
    origin: &str,
    mut pager: Pager,
    writer: &mut BufWriter,
    sink: &EventSink,
    done: &mut IndexDone,
) -> Result<(), FetchError> {
    loop {
        let req = pager.request();
        let url = page_url(origin, req.startkey, req.endkey, req.limit);
        let page = fetch_page(http, &url).await?;
        done.pages += 1;
        let paged = pager.step(page).map_err(|e| FetchError::Protocol {
            url: redact(&url),
            message: e.to_string(),
        })?;
        write_rows(writer, sink, done, paged.rows).await?;
        if paged.step == Step::Done {
            return Ok(());
        }
    }
}

/// Appends rows to the index object as JSON lines, counts them, and streams them back.
async fn write_rows(
    writer: &mut BufWriter,
    sink: &EventSink,
    done: &mut IndexDone,
    rows: Vec<IndexRow>,
) -> Result<(), FetchError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(rows.len() * 48);
    for row in &rows {
        let line = Line {
            id: &row.id,
            rev: &row.rev,
        };
        serde_json::to_writer(&mut buf, &line).expect("rows serialize");
        buf.push(b'\n');
    }
    writer
        .write_all(&buf)
        .await
        .map_err(|e| store_error(&done.uri, e))?;
    done.bytes += buf.len() as u64;
    done.rows += rows.len() as u64;
    sink.index_rows(IndexRows {
        partition: done.partition.clone(),
        rows,
    })
    .await?;
    Ok(())
}

fn store_error(uri: &str, e: std::io::Error) -> FetchError {
    FetchError::Store {
        uri: uri.to_owned(),
        message: e.to_string(),
    }
}

async fn fetch_page(http: &Http, url: &str) -> Result<Page, FetchError> {
    http.retry(url, || async {
        let resp = http.send(url, "application/json").await?;
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| FetchError::transport(url, &e))?;
        serde_json::from_slice::<Page>(&body).map_err(|e| FetchError::InvalidJson {
            url: redact(url),
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

    fn row(id: &str) -> Row {
        Row {
            id: Some(id.into()),
            key: Some(id.into()),
            value: Some(RowValue {
                rev: Some(format!("1-{id}")),
            }),
        }
    }

    fn page(ids: &[&str]) -> Page {
        Page {
            rows: ids.iter().map(|id| row(id)).collect(),
        }
    }

    fn ids(paged: &Paged) -> Vec<&str> {
        paged.rows.iter().map(|r| r.id.as_str()).collect()
    }

    fn next(startkey: &str) -> Step {
        Step::Next {
            startkey: startkey.into(),
        }
    }

    fn request<'a>(
        startkey: Option<&'a str>,
        endkey: Option<&'a str>,
        limit: u32,
    ) -> PageRequest<'a> {
        PageRequest {
            startkey,
            endkey,
            limit,
        }
    }

    #[test]
    fn the_first_page_is_kept_whole_and_the_next_asks_from_its_last_id() {
        let mut pager = Pager::new(Some("b"), Some("d"), 3);
        assert_eq!(pager.request(), request(Some("b"), Some("d"), 3));
        let paged = pager.step(page(&["b", "ba", "bb"])).unwrap();
        assert_eq!(ids(&paged), ["b", "ba", "bb"]);
        assert_eq!(paged.rows[1].rev, "1-ba");
        assert_eq!(paged.step, next("bb"));
        // The repeated row comes back first: one more is asked for.
        assert_eq!(pager.request(), request(Some("bb"), Some("d"), 4));
    }

    #[test]
    fn page_sizes_default_to_and_stop_at_the_largest_page() {
        assert_eq!(Pager::new(None, None, 0).request().limit, MAX_PAGE);
        assert_eq!(Pager::new(None, None, 50_000).request().limit, MAX_PAGE);
        let mut pager = Pager::new(None, None, MAX_PAGE);
        pager.step(page(&["a"])).unwrap();
        assert_eq!(pager.request(), request(Some("a"), None, MAX_PAGE));
        let mut pager = Pager::new(None, None, 1);
        pager.step(page(&["a"])).unwrap();
        assert_eq!(pager.request(), request(Some("a"), None, 2));
    }

    #[test]
    fn the_repeated_first_row_is_dropped() {
        let mut pager = Pager::new(None, None, 2);
        pager.step(page(&["a", "b"])).unwrap();
        let paged = pager.step(page(&["b", "c", "d"])).unwrap();
        assert_eq!(ids(&paged), ["c", "d"]);
        assert_eq!(paged.step, next("d"));
        assert_eq!(pager.request(), request(Some("d"), None, 3));
    }

    #[test]
    fn a_short_page_does_not_end_the_partition() {
        let mut pager = Pager::new(None, Some("z"), 100);
        let paged = pager.step(page(&["a", "b"])).unwrap();
        assert_eq!(ids(&paged), ["a", "b"]);
        assert_eq!(
            paged.step,
            next("b"),
            "2 rows of 100 asked for is not the end"
        );
        let paged = pager.step(page(&["b", "c"])).unwrap();
        assert_eq!(ids(&paged), ["c"]);
        assert_eq!(paged.step, next("c"));
    }

    #[test]
    fn a_page_with_nothing_new_ends_the_partition() {
        let mut pager = Pager::new(Some("a"), None, 10);
        let paged = pager.step(Page::default()).unwrap();
        assert_eq!(
            paged,
            Paged {
                rows: vec![],
                step: Step::Done
            },
            "an empty partition"
        );

        let mut pager = Pager::new(None, None, 10);
        pager.step(page(&["a", "b"])).unwrap();
        let paged = pager.step(page(&["b"])).unwrap();
        assert_eq!(
            paged,
            Paged {
                rows: vec![],
                step: Step::Done
            },
            "only the repeat"
        );

        let mut pager = Pager::new(None, None, 10);
        pager.step(page(&["a", "b"])).unwrap();
        let paged = pager.step(Page::default()).unwrap();
        assert_eq!(
            paged,
            Paged {
                rows: vec![],
                step: Step::Done
            },
            "not even the repeat"
        );
    }

    #[test]
    fn rows_at_or_past_the_end_are_dropped_and_end_the_partition() {
        let mut pager = Pager::new(Some("a"), Some("c"), 4);
        // A full page: the row at `end` (inclusive_end ignored) and beyond are dropped.
        let paged = pager.step(page(&["b", "bz", "c", "ca"])).unwrap();
        assert_eq!(ids(&paged), ["b", "bz"]);
        assert_eq!(paged.step, Step::Done);

        let mut pager = Pager::new(Some("a"), Some("c"), 4);
        pager.step(page(&["a", "b"])).unwrap();
        let paged = pager.step(page(&["b", "c"])).unwrap();
        assert_eq!(
            paged,
            Paged {
                rows: vec![],
                step: Step::Done
            }
        );
    }

    #[test]
    fn rows_before_the_start_are_dropped_but_paged_past() {
        let mut pager = Pager::new(Some("b"), None, 3);
        let paged = pager.step(page(&["a", "b", "c"])).unwrap();
        assert_eq!(ids(&paged), ["b", "c"]);
        assert_eq!(paged.step, next("c"));
    }

    #[test]
    fn rows_out_of_raw_byte_order_are_refused_with_a_reason() {
        let mut pager = Pager::new(None, None, 10);
        pager.step(page(&["a"])).unwrap();
        let err = pager.step(page(&["a", "c", "b"])).unwrap_err();
        assert_eq!(
            err,
            PagingError::OutOfOrder {
                key: "b".into(),
                previous: "c".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "rows are not in raw byte order (`b` after `c`); this endpoint cannot be paged exactly"
        );
        // Nothing of a refused page is taken.
        assert_eq!(pager.request(), request(Some("a"), None, 11));
        // A repeated id is out of order too; byte order puts uppercase before lowercase.
        assert!(pager.step(page(&["a", "b", "b"])).is_err());
        assert!(pager.step(page(&["b", "B"])).is_err());
        assert_eq!(ids(&pager.step(page(&["@x", "B", "b"])).unwrap()), ["b"]);
    }

    #[test]
    fn rows_are_named_by_id_then_key_and_skipped_with_neither() {
        let mut pager = Pager::new(None, None, 10);
        let rows = vec![
            Row {
                id: None,
                key: Some("a".into()),
                value: None,
            },
            Row::default(),
            Row {
                id: Some("b".into()),
                key: Some("ignored".into()),
                value: Some(RowValue::default()),
            },
            Row {
                value: Some(RowValue {
                    rev: Some("9-z".into()),
                }),
                ..Row::default()
            },
        ];
        let paged = pager.step(Page { rows }).unwrap();
        let expect = |id: &str| IndexRow {
            id: id.into(),
            rev: String::new(),
        };
        assert_eq!(
            paged.rows,
            [expect("a"), expect("b")],
            "a missing rev is empty"
        );
        assert_eq!(paged.step, next("b"), "nameless rows do not move the pager");
        // A page of nameless rows brings nothing new.
        let paged = pager
            .step(Page {
                rows: vec![Row::default()],
            })
            .unwrap();
        assert_eq!(
            paged,
            Paged {
                rows: vec![],
                step: Step::Done
            }
        );
    }

    #[test]
    fn pages_decode_from_all_docs_json() {
        let body = br#"{"total_rows":2,"offset":0,"rows":[
            {"id":"a","key":"a","value":{"rev":"1-x"}},{"key":"b","value":null}]}"#;
        let page: Page = serde_json::from_slice(body).unwrap();
        let paged = Pager::new(None, None, 10).step(page).unwrap();
        assert_eq!(ids(&paged), ["a", "b"]);
        assert_eq!(paged.rows[0].rev, "1-x");
        assert_eq!(paged.rows[1].rev, "");
    }

    /// `_all_docs` as CouchDB answers it, `endkey` inclusive, each page capped at `cap` rows
    /// whatever the `limit`.
    fn serve(listing: &[String], req: PageRequest<'_>, cap: usize) -> Page {
        let ids = listing
            .iter()
            .filter(|id| req.startkey.is_none_or(|s| id.as_str() >= s))
            .filter(|id| req.endkey.is_none_or(|e| id.as_str() <= e))
            .take((req.limit as usize).min(cap));
        Page {
            rows: ids.map(|id| row(id)).collect(),
        }
    }

    #[test]
    fn paging_a_capped_server_yields_each_row_of_the_partition_once() {
        let mut listing: Vec<String> = ["@a/x", "@b/y", "A", "Zed", "a", "b", "ba", "bb", "c"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..40).map(|i| format!("m{i:02}")))
            .collect();
        listing.sort();
        let bounds = [
            None,
            Some("@b/y"),
            Some("a"),
            Some("b"),
            Some("bb"),
            Some("m20"),
            Some("zz"),
        ];
        for (start, end) in bounds.iter().zip(bounds.iter().skip(1).chain([&None])) {
            for (page_size, cap) in [(1, 1000), (2, 1000), (7, 3), (MAX_PAGE, 5)] {
                let mut pager = Pager::new(*start, *end, page_size);
                let mut got = Vec::new();
                for pages in 1.. {
                    assert!(pages < 200, "paging does not end");
                    let paged = pager.step(serve(&listing, pager.request(), cap)).unwrap();
                    got.extend(paged.rows.into_iter().map(|r| r.id));
                    if paged.step == Step::Done {
                        break;
                    }
                }
                let want: Vec<String> = listing
                    .iter()
                    .filter(|id| in_range(id, *start, *end))
                    .cloned()
                    .collect();
                assert_eq!(got, want, "{start:?}..{end:?}, page {page_size}, cap {cap}");
            }
        }
    }
}
