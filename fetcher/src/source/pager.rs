//! Paging `_all_docs` over one half-open partition `[start, end)`, exactly: no row lost at
//! a page boundary, none duplicated at a partition edge. [`Pager`] is pure (no I/O): it
//! says which page to ask for next, and checks each page before anything of it is kept.

pub use crate::source::all_docs::{Page, Row, RowValue};
use crate::store::keys::in_range;
use alldocs_proto::v1::IndexRow;

/// The largest `limit` npm's replication endpoint accepts.
pub const MAX_PAGE: u32 = 10_000;

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

/// Why a page cannot be paged past. Each names the problem without the URL (the caller
/// adds it); keys in it are bounded (see [`crate::source::all_docs::MAX_ID_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    #[error(
        "rows are not in raw byte order (`{key}` after `{previous}`); \
         this endpoint cannot be paged exactly"
    )]
    OutOfOrder { key: String, previous: String },
    /// A row before the `startkey` asked for (the partition's start on the first page).
    #[error("the origin ignored startkey: page {page} began at `{first}`, before `{startkey}`")]
    IgnoredStartkey {
        page: u32,
        first: String,
        startkey: String,
    },
    /// The previous page again, instead of the one from its last id.
    #[error(
        "the origin served page {previous} again as page {page}, ignoring startkey `{startkey}`"
    )]
    RepeatedPage {
        page: u32,
        previous: u32,
        startkey: String,
    },
    /// The page did not begin at `startkey` and its `offset` says rows lie between.
    #[error(
        "the origin's offset does not continue from the previous page: page {page} is at \
         offset {offset}, expected {expected} (rows between the pages were skipped)"
    )]
    OffsetJump {
        page: u32,
        offset: u64,
        expected: u64,
    },
}

impl PagingError {
    /// Whether another attempt could go better. Rows out of order mean the endpoint sorts
    /// differently (for good); an origin that ignores `startkey` or skips rows may be a
    /// cache or proxy having a bad moment, so the partition is tried again by a new lease,
    /// up to `--max-attempts`, and then failed with this reason: never marked done short.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::OutOfOrder { .. })
    }
}

/// What the pager remembers of the page before: enough to tell a repeat and to check the
/// next page's `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PrevPage {
    first: String,
    last: String,
    named: usize,
    /// The origin's `offset` of the page's last row (`offset` + its index), when it sent one.
    last_offset: Option<u64>,
}

/// The named rows of a page at a glance, checked to be in strictly increasing order.
struct Shape {
    first: Option<String>,
    last: Option<String>,
    /// Index among all the page's rows of the last named one.
    last_index: usize,
    named: usize,
}

impl Shape {
    fn of(page: &Page) -> Result<Self, PagingError> {
        let (mut first, mut last, mut last_index, mut named) = (None, None::<&str>, 0, 0);
        for (i, row) in page.rows.iter().enumerate() {
            let Some(id) = row.name() else { continue };
            if let Some(prev) = last {
                if id.as_bytes() <= prev.as_bytes() {
                    return Err(PagingError::OutOfOrder {
                        key: id.to_owned(),
                        previous: prev.to_owned(),
                    });
                }
            }
            first = first.or(Some(id));
            last = Some(id);
            last_index = i;
            named += 1;
        }
        Ok(Shape {
            first: first.map(str::to_owned),
            last: last.map(str::to_owned),
            last_index,
            named,
        })
    }
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
    /// Pages taken so far.
    pages: u32,
    prev: Option<PrevPage>,
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
            pages: 0,
            prev: None,
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
    /// neither; a missing `rev` is empty), and moves on.
    ///
    /// The page is refused, and nothing of it kept, when its rows are not in strictly
    /// increasing raw byte order, when any row lies before the `startkey` asked for (the
    /// origin ignored it, or served the previous page again), or when it does not begin
    /// at `startkey` and its `offset` says rows were skipped (see [`Pager::check_offset`]).
    pub fn step(&mut self, page: Page) -> Result<Paged, PagingError> {
        let shape = Shape::of(&page)?;
        self.pages += 1;
        self.check_startkey(&shape)?;
        self.check_offset(page.offset, &shape)?;
        let (start, end) = (self.start.as_deref(), self.end.as_deref());
        let mut rows = Vec::new();
        let mut past_end = false;
        for row in page.rows {
            let Some(id) = row.id.or(row.key) else {
                continue;
            };
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
            self.advance(page.offset, shape)
        };
        Ok(Paged { rows, step })
    }

    /// Refuses a page with a row before the `startkey` it was asked for: CouchDB's
    /// `startkey` is inclusive, so no such row is ever right.
    fn check_startkey(&self, shape: &Shape) -> Result<(), PagingError> {
        let asked = self.last.as_deref().or(self.start.as_deref());
        let (Some(first), Some(startkey)) = (shape.first.as_deref(), asked) else {
            return Ok(());
        };
        if first.as_bytes() >= startkey.as_bytes() {
            return Ok(());
        }
        let repeat = self.prev.as_ref().is_some_and(|p| {
            p.named == shape.named
                && Some(&p.first) == shape.first.as_ref()
                && Some(&p.last) == shape.last.as_ref()
        });
        Err(if repeat {
            PagingError::RepeatedPage {
                page: self.pages,
                previous: self.pages - 1,
                startkey: startkey.to_owned(),
            }
        } else {
            PagingError::IgnoredStartkey {
                page: self.pages,
                first: first.to_owned(),
                startkey: startkey.to_owned(),
            }
        })
    }

    /// CouchDB's `offset` is the number of rows before a page's first one, so a page that
    /// asks from the previous page's last id should sit where that row sat.
    ///
    /// It is consulted only where the rows cannot speak for themselves: when the page
    /// holds rows but does not begin with the `startkey` row (legitimately, because that
    /// row was deleted between the pages). A page that begins with it is contiguous with
    /// the previous one whatever its `offset` says: on a live registry every name
    /// published or removed before the page's key moves the offset between two requests.
    /// An offset of 0 is not checked either: PouchDB puts `skip` there (always 0 for us),
    /// and a missing offset says nothing.
    fn check_offset(&self, offset: Option<u64>, shape: &Shape) -> Result<(), PagingError> {
        let expected = self.prev.as_ref().and_then(|p| p.last_offset);
        let (Some(expected), Some(offset), Some(first)) = (expected, offset, &shape.first) else {
            return Ok(());
        };
        if offset == 0 || offset == expected || self.last.as_ref() == Some(first) {
            return Ok(());
        }
        Err(PagingError::OffsetJump {
            page: self.pages,
            offset,
            expected,
        })
    }

    /// Whether `id` is at or before the last id seen.
    fn seen(&self, id: &str) -> bool {
        self.last
            .as_deref()
            .is_some_and(|l| id.as_bytes() <= l.as_bytes())
    }

    /// Moves to the page's last id, or finishes when the page brought nothing new.
    fn advance(&mut self, offset: Option<u64>, shape: Shape) -> Step {
        match (shape.first, shape.last) {
            (Some(first), Some(last)) if !self.seen(&last) => {
                self.last = Some(last.clone());
                self.prev = Some(PrevPage {
                    first,
                    last: last.clone(),
                    named: shape.named,
                    last_offset: offset.map(|o| o.saturating_add(shape.last_index as u64)),
                });
                Step::Next { startkey: last }
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
            offset: None,
            rows: ids.iter().map(|id| row(id)).collect(),
        }
    }

    /// A page as CouchDB sends it, with the `offset` of its first row.
    fn at(offset: u64, ids: &[&str]) -> Page {
        Page {
            offset: Some(offset),
            ..page(ids)
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
    fn a_first_page_with_rows_before_the_start_is_refused() {
        let mut pager = Pager::new(Some("b"), None, 3);
        let err = pager.step(page(&["a", "b", "c"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the origin ignored startkey: page 1 began at `a`, before `b`"
        );
        assert!(err.retryable(), "{err}");
        assert_eq!(
            pager.request(),
            request(Some("b"), None, 3),
            "nothing taken"
        );
    }

    #[test]
    fn a_page_from_before_the_startkey_is_refused_as_an_ignored_startkey() {
        // The origin ignores startkey and answers from the partition start again, with
        // the one-larger limit of a follow-up request: 30 names would end after 6 rows.
        let mut pager = Pager::new(Some("m"), None, 3);
        assert_eq!(
            ids(&pager.step(page(&["m", "ma", "mb"])).unwrap()),
            ["m", "ma", "mb"]
        );
        let err = pager.step(page(&["m", "ma", "mb", "mc"])).unwrap_err();
        assert_eq!(
            err,
            PagingError::IgnoredStartkey {
                page: 2,
                first: "m".into(),
                startkey: "mb".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "the origin ignored startkey: page 2 began at `m`, before `mb`"
        );
        assert!(err.retryable());
    }

    #[test]
    fn the_previous_page_served_again_is_refused_as_a_repeat() {
        let mut pager = Pager::new(None, None, 3);
        pager.step(page(&["a", "b", "c"])).unwrap();
        pager.step(page(&["c", "d", "e", "f"])).unwrap();
        let err = pager.step(page(&["c", "d", "e", "f"])).unwrap_err();
        assert_eq!(
            err,
            PagingError::RepeatedPage {
                page: 3,
                previous: 2,
                startkey: "f".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "the origin served page 2 again as page 3, ignoring startkey `f`"
        );
        assert!(err.retryable());
        assert_eq!(
            pager.request(),
            request(Some("f"), None, 4),
            "nothing taken"
        );
    }

    #[test]
    fn a_one_row_page_answered_by_its_own_row_is_the_end_not_a_repeat() {
        let mut pager = Pager::new(None, None, 1);
        pager.step(page(&["a"])).unwrap();
        let paged = pager.step(page(&["a"])).unwrap();
        assert_eq!(paged.step, Step::Done);
    }

    #[test]
    fn a_deleted_startkey_row_is_paged_past_when_the_offset_agrees() {
        // CouchDB offsets: page 1 holds rows 10..=12; `c` (row 12) is deleted before page
        // 2, whose first row `d` then sits at 12.
        let mut pager = Pager::new(None, None, 3);
        pager.step(at(10, &["a", "b", "c"])).unwrap();
        let paged = pager.step(at(12, &["d", "e", "f", "g"])).unwrap();
        assert_eq!(ids(&paged), ["d", "e", "f", "g"]);
        assert_eq!(paged.step, next("g"));
        // And with no offset at all, or PouchDB's (it puts `skip` there: always 0).
        for offset in [None, Some(0)] {
            let mut pager = Pager::new(None, None, 3);
            pager
                .step(Page {
                    offset,
                    ..page(&["a", "b", "c"])
                })
                .unwrap();
            let paged = pager
                .step(Page {
                    offset,
                    ..page(&["d", "e"])
                })
                .unwrap();
            assert_eq!(ids(&paged), ["d", "e"], "{offset:?}");
        }
    }

    #[test]
    fn a_page_past_the_startkey_whose_offset_jumps_is_refused() {
        let mut pager = Pager::new(None, None, 3);
        pager.step(at(10, &["a", "b", "c"])).unwrap();
        // `d`..`k` skipped: the page begins 8 rows later than `c` sat.
        let err = pager.step(at(20, &["l", "m", "n"])).unwrap_err();
        assert_eq!(
            err,
            PagingError::OffsetJump {
                page: 2,
                offset: 20,
                expected: 12
            }
        );
        assert_eq!(
            err.to_string(),
            "the origin's offset does not continue from the previous page: page 2 is at \
             offset 20, expected 12 (rows between the pages were skipped)"
        );
        assert!(err.retryable());
        // The expected offset follows the pages: 12 + 4 rows - 1.
        let mut pager = Pager::new(None, None, 3);
        pager.step(at(10, &["a", "b", "c"])).unwrap();
        pager.step(at(12, &["c", "d", "e", "f"])).unwrap();
        assert!(pager.step(at(15, &["g"])).is_ok());
        let mut pager = Pager::new(None, None, 3);
        pager.step(at(10, &["a", "b", "c"])).unwrap();
        pager.step(at(12, &["c", "d", "e", "f"])).unwrap();
        assert!(pager.step(at(16, &["g"])).is_err());
    }

    #[test]
    fn an_offset_that_moves_is_accepted_when_the_page_begins_at_its_startkey() {
        // On a live registry names published or removed before the page move the offset
        // between two requests; the rows themselves prove nothing was skipped.
        let mut pager = Pager::new(None, None, 3);
        pager.step(at(10, &["a", "b", "c"])).unwrap();
        let paged = pager.step(at(14, &["c", "d"])).unwrap();
        assert_eq!(ids(&paged), ["d"]);
        // An empty page ends the partition whatever its offset.
        let paged = pager.step(at(99, &[])).unwrap();
        assert_eq!(paged.step, Step::Done);
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
        assert!(
            !err.retryable(),
            "an endpoint that sorts otherwise does so for good"
        );
        let mut pager = Pager::new(Some("@"), None, 10);
        assert_eq!(
            ids(&pager.step(page(&["@x", "B", "b"])).unwrap()),
            ["@x", "B", "b"]
        );
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
        let paged = pager.step(Page { offset: None, rows }).unwrap();
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
                offset: None,
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
        let page = crate::source::all_docs::parse(&body[..], 10).unwrap();
        assert_eq!(page.offset, Some(0));
        let paged = Pager::new(None, None, 10).step(page).unwrap();
        assert_eq!(ids(&paged), ["a", "b"]);
        assert_eq!(paged.rows[0].rev, "1-x");
        assert_eq!(paged.rows[1].rev, "");
    }

    /// `_all_docs` as CouchDB answers it, `endkey` inclusive, `offset` counting the rows
    /// before the page, each page capped at `cap` rows whatever the `limit`.
    fn serve(listing: &[String], req: PageRequest<'_>, cap: usize) -> Page {
        let ids = listing
            .iter()
            .filter(|id| req.startkey.is_none_or(|s| id.as_str() >= s))
            .filter(|id| req.endkey.is_none_or(|e| id.as_str() <= e))
            .take((req.limit as usize).min(cap));
        let before = listing
            .iter()
            .filter(|id| req.startkey.is_some_and(|s| id.as_str() < s))
            .count();
        Page {
            offset: Some(before as u64),
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
