//! An index lease: page one partition of `_all_docs` with the [`Pager`], write its rows to
//! `index/<partition>.jsonl`, and stream every row back as it is written.

use object_store::buffered::BufWriter;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::{
    source::all_docs::{read_page, Page, PageError},
    source::events::EventSink,
    source::http::{redact, status_error, FetchError, Http},
    source::pager::{page_url, Pager, Step},
    store::keys::partition_name,
    store::{index_path, Store},
};
use alldocs_proto::v1::{IndexDone, IndexRow, IndexRows, IndexWork};

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
        let page = fetch_page(http, &url, req.limit).await?;
        done.pages += 1;
        let paged = pager.step(page).map_err(|e| {
            let (url, message) = (redact(&url), e.to_string());
            if e.retryable() {
                FetchError::Misbehaved { url, message }
            } else {
                FetchError::Protocol { url, message }
            }
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

/// Fetches one page within the bounds of [`read_page`]. A body that breaks off or is not
/// JSON is asked for again at once; a page over the bounds fails the partition's attempt.
async fn fetch_page(http: &Http, url: &str, limit: u32) -> Result<Page, FetchError> {
    http.retry(url, || async {
        let resp = http.send(url, "application/json").await?;
        if !resp.status().is_success() {
            return Err(status_error(url, &resp));
        }
        read_page(resp, limit).await.map_err(|e| {
            let (url, message) = (redact(url), e.to_string());
            match e {
                PageError::Transport(_) => FetchError::Transport { url, message },
                PageError::Json(_) => FetchError::InvalidJson { url, message },
                _ => FetchError::Misbehaved { url, message },
            }
        })
    })
    .await
}
