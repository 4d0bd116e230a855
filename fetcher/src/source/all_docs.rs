//! Reading one `_all_docs` page off the wire within fixed bounds, so that no origin can make
//! a fetcher (or the coordinator it runs in) hold more than a few megabytes for a page.

use std::io::{self, BufReader, Read};

use futures::TryStreamExt;
use serde::de::DeserializeSeed;
use tokio_util::io::{StreamReader, SyncIoBridge};

mod bounded;

use bounded::{PageSeed, Position};

/// The most a page's body may hold (decoded), 64 MiB. A full page of 10,001 rows is about
/// 1.5 MB; even ids and revisions at their bounds, every byte escaped as `\uXXXX`, stay
/// under 45 MB. Past this the origin is not serving `_all_docs`, and reading on would only
/// cost memory and bandwidth.
pub const MAX_PAGE_BYTES: u64 = 64 << 20;

/// The longest package name npm accepts, in bytes: a longer `id` or `key` is refused.
pub const MAX_ID_BYTES: usize = 214;

/// The longest revision accepted, in bytes. CouchDB revisions are `N-<32 hex digits>`,
/// about 40 bytes; 256 leaves room for other CouchDB-API servers.
pub const MAX_REV_BYTES: usize = 256;

/// The longest JSON string (as sent, escapes included) read anywhere in a page: an id or
/// a revision at its bound, every byte escaped as `\uXXXX`, fits. A longer string is
/// refused as it streams in, so it is never held.
const MAX_JSON_STRING_BYTES: usize = 6 * MAX_REV_BYTES + 2;

/// One decoded `_all_docs` page; `total_rows` is not used.
#[derive(Debug, Default)]
pub struct Page {
    /// CouchDB's count of rows before this page's first (PouchDB puts `skip` here).
    pub offset: Option<u64>,
    pub rows: Vec<Row>,
}

/// One `_all_docs` row as served: any part may be missing.
#[derive(Debug, Default)]
pub struct Row {
    pub id: Option<String>,
    pub key: Option<String>,
    pub value: Option<RowValue>,
}

impl Row {
    /// What names the row: its `id`, else its `key`.
    pub fn name(&self) -> Option<&str> {
        self.id.as_deref().or(self.key.as_deref())
    }
}

/// A row's `value`: the winning revision.
#[derive(Debug, Default)]
pub struct RowValue {
    pub rev: Option<String>,
}

/// Why a page's body was not read. None of these hold or echo the offending bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("the page's body is over {} MiB; an `_all_docs` page is a few MB at most", MAX_PAGE_BYTES >> 20)]
    TooLarge,
    #[error("row {row} of the page: its `{field}` is over {limit} bytes ({bytes} bytes)")]
    FieldTooLong {
        row: usize,
        field: &'static str,
        limit: usize,
        /// The field's size, or how much of it was read before it was refused.
        bytes: String,
    },
    #[error(
        "the page holds a string over {} bytes outside its rows",
        MAX_JSON_STRING_BYTES
    )]
    StringTooLong,
    #[error("the page has more than the {limit} rows asked for")]
    TooManyRows { limit: u32 },
    #[error("the page is not `_all_docs` JSON: {0}")]
    Json(String),
    #[error("the response body broke off: {0}")]
    Transport(String),
}

/// Reads an `_all_docs` body of at most [`MAX_PAGE_BYTES`], refusing more than `limit`
/// rows and any id, key or revision over its bound as soon as it streams in.
pub async fn read_page(resp: reqwest::Response, limit: u32) -> Result<Page, PageError> {
    // reqwest's Display names the URL, which may carry a password: the caller adds the
    // redacted one.
    let stream = resp
        .bytes_stream()
        .map_err(|e| io::Error::other(e.without_url()));
    let bridge = SyncIoBridge::new(StreamReader::new(stream));
    tokio::task::spawn_blocking(move || parse(bridge, limit))
        .await
        .map_err(|e| PageError::Transport(e.to_string()))?
}

/// Parses a page from `body` (a blocking reader) within the bounds.
pub fn parse(body: impl Read, limit: u32) -> Result<Page, PageError> {
    let mut guard = Guard::new(body);
    let at = Position::default();
    let result = {
        let mut de = serde_json::Deserializer::from_reader(BufReader::new(&mut guard));
        PageSeed { limit, at: &at }
            .deserialize(&mut de)
            .and_then(|page| de.end().map(|()| page))
    };
    result.map_err(|e| {
        if let Some(refused) = at.refused.take() {
            return refused;
        }
        match guard.tripped {
            Some(Trip::TooLarge) => PageError::TooLarge,
            Some(Trip::LongString(read)) => at.too_long(format!("more than {read}")),
            None if e.is_io() => PageError::Transport(e.to_string()),
            None => PageError::Json(e.to_string()),
        }
    })
}

/// Why the guard stopped the body.
#[derive(Debug, Clone, Copy)]
enum Trip {
    TooLarge,
    LongString(usize),
}

/// A reader that counts the body's bytes and the length of the JSON string it is in, and
/// fails past [`MAX_PAGE_BYTES`] or [`MAX_JSON_STRING_BYTES`]. (A `"` or `\` byte never
/// occurs inside a multi-byte UTF-8 character, so scanning bytes is exact.)
struct Guard<R> {
    inner: R,
    total: u64,
    /// Bytes of the current string so far, when inside one.
    string: Option<usize>,
    escaped: bool,
    tripped: Option<Trip>,
}

impl<R> Guard<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            total: 0,
            string: None,
            escaped: false,
            tripped: None,
        }
    }

    /// Scans the bytes just read; on a trip, says how many of them may still be handed on
    /// (those before the offending byte, so the parser stands where the problem is).
    fn scan(&mut self, bytes: &[u8]) -> Option<(usize, Trip)> {
        let room = usize::try_from(MAX_PAGE_BYTES - self.total).unwrap_or(usize::MAX);
        let over = bytes.len() > room;
        let bytes = &bytes[..bytes.len().min(room)];
        for (i, &b) in bytes.iter().enumerate() {
            match (&mut self.string, b) {
                (None, b'"') => self.string = Some(0),
                (None, _) => {}
                (Some(_), _) if self.escaped => self.escaped = false,
                (Some(_), b'\\') => self.escaped = true,
                (Some(_), b'"') => self.string = None,
                (Some(n), _) => {
                    *n += 1;
                    if *n > MAX_JSON_STRING_BYTES {
                        return Some((i, Trip::LongString(*n - 1)));
                    }
                }
            }
        }
        self.total += bytes.len() as u64;
        over.then_some((bytes.len(), Trip::TooLarge))
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tripped.is_some() {
            return Err(io::Error::other("refused"));
        }
        let n = self.inner.read(buf)?;
        match self.scan(&buf[..n]) {
            None => Ok(n),
            Some((keep, trip)) => {
                self.tripped = Some(trip);
                match keep {
                    0 => Err(io::Error::other("refused")),
                    keep => Ok(keep),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body streamed from parts, `fill` bytes of `b` in the middle: nothing is allocated
    /// for it.
    fn streamed(head: String, b: u8, fill: u64, tail: &'static str) -> impl Read {
        io::Cursor::new(head.into_bytes())
            .chain(io::repeat(b).take(fill))
            .chain(tail.as_bytes())
    }

    fn row(id: &str) -> String {
        format!(r#"{{"id":"{id}","key":"{id}","value":{{"rev":"1-{id}"}}}}"#)
    }

    #[test]
    fn pages_decode_with_their_offset_and_odd_rows() {
        let body = r#"{"total_rows":3,"offset":7,"extra":{"a":[1,"x"]},"rows":[
            {"id":"a","key":"a","value":{"rev":"1-x","deleted":true},"doc":null},
            {"key":"b","value":null},{"id":"\u00e9t\u00e9"}]}"#;
        let page = parse(body.as_bytes(), 10).unwrap();
        assert_eq!(page.offset, Some(7));
        let names: Vec<_> = page.rows.iter().map(|r| r.name().unwrap()).collect();
        assert_eq!(names, ["a", "b", "été"]);
        assert_eq!(
            page.rows[0].value.as_ref().unwrap().rev.as_deref(),
            Some("1-x")
        );
        assert!(page.rows[1].value.is_none());
        let page = parse(r#"{"rows":[]}"#.as_bytes(), 10).unwrap();
        assert_eq!((page.offset, page.rows.len()), (None, 0));
    }

    #[test]
    fn ids_keys_and_revs_over_their_bounds_are_refused_naming_the_row_and_size() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let body = format!(r#"{{"rows":[{},{}]}}"#, row("a"), row(&long));
        let err = parse(body.as_bytes(), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 2 of the page: its `id` is over 214 bytes (215 bytes)"
        );
        let at_bound = "x".repeat(MAX_ID_BYTES);
        let body = format!(r#"{{"rows":[{}]}}"#, row(&at_bound));
        assert_eq!(parse(body.as_bytes(), 10).unwrap().rows.len(), 1);

        let rev = "1-".to_string() + &"f".repeat(MAX_REV_BYTES);
        let body = format!(
            r#"{{"rows":[{},{{"id":"b","value":{{"rev":"{rev}"}}}}]}}"#,
            row("a")
        );
        let err = parse(body.as_bytes(), 10).unwrap_err();
        assert_eq!(
            err,
            PageError::FieldTooLong {
                row: 2,
                field: "rev",
                limit: 256,
                bytes: "258".into()
            }
        );
        let body = format!(r#"{{"rows":[{{"key":"{}"}}]}}"#, "é".repeat(108));
        assert!(matches!(
            parse(body.as_bytes(), 10),
            Err(PageError::FieldTooLong { field: "key", .. })
        ));
    }

    #[test]
    fn a_300_mb_rev_or_id_is_refused_after_reading_a_few_kilobytes() {
        let head = format!(
            r#"{{"offset":0,"rows":[{},{{"id":"b","value":{{"rev":""#,
            row("a")
        );
        let mut body = streamed(head, b'f', 300 << 20, r#""}}]}"#);
        let err = parse(&mut body, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 2 of the page: its `rev` is over 256 bytes (more than 1538 bytes)"
        );
        // The parse stopped within a buffer or two of the string's start.
        let mut rest = Vec::new();
        body.read_to_end(&mut rest).unwrap();
        assert!(
            rest.len() as u64 > (300 << 20) - (64 << 10),
            "{}",
            rest.len()
        );

        let head = r#"{"rows":[{"id":""#.to_string();
        let err = parse(streamed(head, b'n', 300 << 20, r#""}]}"#), 10).unwrap_err();
        assert!(
            matches!(
                &err,
                PageError::FieldTooLong {
                    row: 1,
                    field: "id",
                    ..
                }
            ),
            "{err}"
        );
        // A long string elsewhere: in a field's name, outside the rows.
        let head = r#"{"rows":[{"id":"a",""#.to_string();
        let err = parse(streamed(head, b'k', 1 << 20, r#"":1}]}"#), 10).unwrap_err();
        assert!(
            matches!(
                &err,
                PageError::FieldTooLong {
                    row: 1,
                    field: "field name",
                    ..
                }
            ),
            "{err}"
        );
        let head = r#"{"rows":[],"padding":""#.to_string();
        let err = parse(streamed(head, b'p', 1 << 20, r#""}"#), 10).unwrap_err();
        assert_eq!(err, PageError::StringTooLong);
        // Escapes count as sent: `\"` does not end the string.
        let head = r#"{"rows":[{"id":"a\""#.to_string();
        let err = parse(streamed(head, b'q', 1 << 20, r#""}]}"#), 10).unwrap_err();
        assert!(
            matches!(err, PageError::FieldTooLong { field: "id", .. }),
            "{err}"
        );
    }

    #[test]
    fn a_body_over_the_cap_is_refused_at_the_cap() {
        let head = r#"{"rows":[]"#.to_string();
        let mut body = streamed(head, b' ', MAX_PAGE_BYTES + (8 << 20), "}");
        let err = parse(&mut body, 10).unwrap_err();
        assert_eq!(err, PageError::TooLarge);
        assert_eq!(
            err.to_string(),
            "the page's body is over 64 MiB; an `_all_docs` page is a few MB at most"
        );
        let mut rest = Vec::new();
        body.read_to_end(&mut rest).unwrap();
        assert!(
            rest.len() as u64 >= (8 << 20) - (64 << 10),
            "stopped at the cap"
        );
    }

    #[test]
    fn more_rows_than_asked_for_are_refused() {
        let body = format!(r#"{{"rows":[{},{},{}]}}"#, row("a"), row("b"), row("c"));
        assert_eq!(parse(body.as_bytes(), 3).unwrap().rows.len(), 3);
        let err = parse(body.as_bytes(), 2).unwrap_err();
        assert_eq!(err, PageError::TooManyRows { limit: 2 });
        assert_eq!(
            err.to_string(),
            "the page has more than the 2 rows asked for"
        );
    }

    #[test]
    fn broken_bodies_are_json_or_transport_errors() {
        assert!(matches!(
            parse(r#"{"rows":[{"id":5}]}"#.as_bytes(), 10),
            Err(PageError::Json(_))
        ));
        assert!(matches!(
            parse(r#"{"rows":["#.as_bytes(), 10),
            Err(PageError::Json(_))
        ));
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection reset"))
            }
        }
        let err = parse(r#"{"rows":["#.as_bytes().chain(Broken), 10).unwrap_err();
        assert!(
            matches!(&err, PageError::Transport(m) if m.contains("connection reset")),
            "{err}"
        );
    }
}
