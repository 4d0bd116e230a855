//! Fetching packuments from the registry and storing the exact bytes served, after
//! checking they are one JSON object; large bodies stream to the store, never held whole.

use std::sync::atomic::{AtomicU64, Ordering};

mod body;
mod json;

use crate::source::{
    http::{redact, status_error, FetchError, Http},
    packs::Sealed,
};
use alldocs_proto::v1::{Accept, PackumentMissing, PackumentStored};
pub use body::Place;
use body::{keep_body, Kept};

/// Bodies up to this size are checked in memory and written in one request; larger ones
/// are validated on a blocking thread while they stream to the store in parts.
pub const SPILL_BYTES: usize = 8 << 20;

/// What became of one name.
#[derive(Debug)]
pub enum Outcome {
    /// Stored as a file of its own.
    Stored(PackumentStored),
    Missing(PackumentMissing),
    /// In the lease's open pack: reported when the pack is sealed.
    Held,
    /// It sealed a pack (its own, or the one it filled): report the pack, then its
    /// packuments.
    Sealed(Sealed),
}

/// `<registry>/<name>`, the registry's path prefix kept; a scoped name is `@scope%2fname`.
pub fn packument_url(registry: &str, name: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'@');
    let encoded = percent_encoding::utf8_percent_encode(name, KEEP)
        .to_string()
        .replace("%2F", "%2f");
    format!("{}/{}", registry.trim_end_matches('/'), encoded)
}

/// The `Accept` header for a representation.
pub fn accept_header(accept: Accept) -> &'static str {
    match accept {
        Accept::Abbreviated => "application/vnd.npm.install-v1+json",
        Accept::Full | Accept::Unspecified => "application/json",
    }
}

/// Decoded bytes a packument may have when the lease says nothing (`max_document_bytes`
/// 0): 256 MiB, well above the largest document npm serves (its registry refuses
/// documents over 100 MB), while a body that decodes without end is cut off.
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 256 << 20;

/// Where and how one lease's packuments are fetched and stored.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub registry: &'a str,
    /// A file per packument, or the lease's packs.
    pub place: Place<'a>,
    pub accept: Accept,
    /// Decoded bytes a document may have (0 = [`DEFAULT_MAX_DOCUMENT_BYTES`]).
    pub max_document_bytes: u64,
}

impl Target<'_> {
    fn limit(&self) -> u64 {
        match self.max_document_bytes {
            0 => DEFAULT_MAX_DOCUMENT_BYTES,
            n => n,
        }
    }
}

/// Fetches one packument (with retries) and stores it. A name npm could never have
/// published is refused before any request.
pub async fn fetch(
    http: &Http,
    target: Target<'_>,
    name: &str,
    index_rev: &str,
    bytes_total: &AtomicU64,
) -> Result<Outcome, FetchError> {
    crate::store::names::check_name(name)?;
    let url = packument_url(target.registry, name);
    http.retry(name, || async {
        let resp = http.send(&url, accept_header(target.accept)).await?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(Outcome::Missing(PackumentMissing {
                name: name.to_string(),
                http_status: u32::from(status.as_u16()),
            }));
        }
        if !status.is_success() {
            return Err(status_error(&url, &resp));
        }
        check_representation(target.accept, &url, &resp)?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let meta = PackumentStored {
            name: name.to_string(),
            rev: index_rev.to_string(),
            etag,
            ..Default::default()
        };
        let kept = keep_body(resp, &url, target.place, meta.clone(), target.limit()).await?;
        Ok(match kept {
            Kept::File(body) => {
                bytes_total.fetch_add(body.bytes, Ordering::Relaxed);
                Outcome::Stored(PackumentStored {
                    uri: body.uri,
                    bytes: body.bytes,
                    doc_rev: body.doc_rev.unwrap_or_default(),
                    sha256: body.sha256,
                    ..meta
                })
            }
            Kept::Held => Outcome::Held,
            Kept::Sealed(sealed) => Outcome::Sealed(sealed),
        })
    })
    .await
}

/// Refuses a full document served for an abbreviated request: stored as abbreviated it
/// would be mislabelled (the registry ignored the Accept header).
fn check_representation(
    accept: Accept,
    url: &str,
    resp: &reqwest::Response,
) -> Result<(), FetchError> {
    if accept != Accept::Abbreviated {
        return Ok(());
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(accept_header(Accept::Abbreviated)) {
        Ok(())
    } else {
        Err(FetchError::NotAbbreviated {
            url: redact(url),
            content_type: content_type.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::body::*;
    use super::json::{doc_rev, ChannelReader};
    use super::*;
    use crate::store::{packument_path, Store};
    use bytes::Bytes;
    use tokio::sync::mpsc;

    #[test]
    fn urls_escape_scoped_names_and_keep_the_registry_path() {
        assert_eq!(
            packument_url("http://127.0.0.1:1/registry/", "@types/node"),
            "http://127.0.0.1:1/registry/@types%2fnode"
        );
        assert_eq!(
            packument_url("https://registry.example", "JSONStream"),
            "https://registry.example/JSONStream"
        );
        assert_eq!(
            packument_url("https://registry.example", "a b"),
            "https://registry.example/a%20b"
        );
    }

    #[test]
    fn documents_must_be_one_json_object() {
        assert_eq!(
            doc_rev(&br#"{"a":[1,{"_rev":"x"}],"_rev":"3-abc"}"#[..]).unwrap(),
            Some("3-abc".into())
        );
        assert_eq!(doc_rev(&b"{}"[..]).unwrap(), None);
        let huge = format!(r#"{{"_rev":"1-{}","name":"x"}}"#, "a".repeat(300));
        let err = doc_rev(huge.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("`_rev` is 302 bytes, over 256"), "{err}");
        assert!(doc_rev(&b"[1,2]"[..]).is_err());
        assert!(doc_rev(&br#"{"a":1"#[..]).is_err(), "truncated");
        assert!(doc_rev(&br#"{"a":1} trailing"#[..]).is_err());
    }

    #[test]
    fn channel_reader_validates_a_document_split_anywhere() {
        let doc = br#"{"name":"x","_rev":"1-a","versions":{"1.0.0":{}}}"#;
        let (tx, rx) = mpsc::channel(64);
        for chunk in doc.chunks(3) {
            tx.try_send(Bytes::copy_from_slice(chunk)).unwrap();
        }
        drop(tx);
        assert_eq!(doc_rev(ChannelReader::new(rx)).unwrap(), Some("1-a".into()));
    }

    const LIMIT: u64 = DEFAULT_MAX_DOCUMENT_BYTES;

    /// A response whose length is announced (a whole body) or not (a stream of chunks).
    fn response(body: impl Into<reqwest::Body>) -> reqwest::Response {
        http::Response::new(body).into()
    }

    fn chunked(chunks: Vec<std::io::Result<Bytes>>) -> reqwest::Body {
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    }

    fn in_chunks(doc: &[u8], size: usize) -> reqwest::Body {
        chunked(
            doc.chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect(),
        )
    }

    /// A packument of at least `len` bytes with a `_rev` after a long value.
    fn doc(len: usize) -> Vec<u8> {
        let pad = "x".repeat(len.saturating_sub(30));
        format!(r#"{{"pad":"{pad}","_rev":"7-big"}}"#).into_bytes()
    }

    fn fresh_store(tag: &str) -> Store {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Store::open(&format!("memory://packument-{tag}-{n}")).unwrap()
    }

    async fn stored_object(store: &Store, name: &str) -> Option<Bytes> {
        store.get(&packument_path(name)).await.ok()
    }

    #[tokio::test]
    async fn bodies_small_or_large_announced_or_not_are_stored_byte_for_byte() {
        let small = doc(1_000);
        let large = doc(SPILL_BYTES + 3_000_000);
        let cases: Vec<(&str, &[u8], reqwest::Body)> = vec![
            ("small", &small, small.clone().into()),
            ("small-chunked", &small, in_chunks(&small, 100)),
            ("large", &large, large.clone().into()),
            ("large-chunked", &large, in_chunks(&large, 1 << 20)),
        ];
        for (what, doc, body) in cases {
            let store = fresh_store(what);
            let got = store_body(response(body), "http://h/x", &store, "@s/x", LIMIT)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got.doc_rev.as_deref(), Some("7-big"), "{what}");
            assert_eq!(got.bytes, doc.len() as u64, "{what}");
            assert_eq!(got.uri, store.uri(&packument_path("@s/x")), "{what}");
            let object = stored_object(&store, "@s/x").await.expect("stored");
            assert!(object[..] == doc[..], "{what}: stored byte for byte");
        }
    }

    #[tokio::test]
    async fn a_body_at_the_spill_boundary_is_stored_byte_for_byte() {
        let body = doc(SPILL_BYTES);
        let body = [
            &body[..body.len() - 1],
            &vec![b' '; SPILL_BYTES - body.len()],
            b"}",
        ]
        .concat();
        assert_eq!(body.len(), SPILL_BYTES);
        let store = fresh_store("spill");
        let got = store_body(
            response(in_chunks(&body, 1 << 16)),
            "http://h/x",
            &store,
            "x",
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(
            (got.bytes, got.doc_rev.as_deref()),
            (SPILL_BYTES as u64, Some("7-big"))
        );
        assert!(stored_object(&store, "x").await.expect("stored")[..] == body[..]);
    }

    #[tokio::test]
    async fn bodies_that_are_not_one_json_object_leave_no_object() {
        let mut large = doc(SPILL_BYTES + 1_000_000);
        large.extend_from_slice(b" trailing");
        let cases: Vec<(&str, reqwest::Body)> = vec![
            ("small", br#"[1,2]"#.to_vec().into()),
            ("large", large.clone().into()),
            ("large-chunked", in_chunks(&large, 1 << 20)),
        ];
        for (what, body) in cases {
            let store = fresh_store(what);
            let err = store_body(response(body), "http://u:p@h/x", &store, "x", LIMIT)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            match err {
                FetchError::InvalidJson { url, .. } => assert_eq!(url, "http://h/x", "{what}"),
                other => panic!("{what}: {other}"),
            }
            assert!(stored_object(&store, "x").await.is_none(), "{what}");
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_leaves_no_object() {
        let large = doc(SPILL_BYTES + 1_000_000);
        for (what, cut) in [("small", 500), ("large", SPILL_BYTES + 500_000)] {
            let body = chunked(vec![
                Ok(Bytes::copy_from_slice(&large[..cut])),
                Err(std::io::Error::other("reset")),
            ]);
            let store = fresh_store(what);
            let err = store_body(response(body), "http://h/x", &store, "x", LIMIT)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            assert!(matches!(err, FetchError::Transport { .. }), "{what}: {err}");
            assert!(stored_object(&store, "x").await.is_none(), "{what}");
        }
    }

    /// A body past the limit is refused, whether announced, small or streamed, and
    /// leaves no object; one at the limit is stored.
    #[tokio::test]
    async fn bodies_past_the_decoded_limit_are_refused_and_leave_no_object() {
        let small = doc(10_000);
        let large = doc(SPILL_BYTES + 2_000_000);
        let under = small.len() as u64 - 1;
        let cases: Vec<(&str, u64, reqwest::Body)> = vec![
            ("announced", under, small.clone().into()),
            ("small-chunked", under, in_chunks(&small, 1_000)),
            (
                "large-announced",
                SPILL_BYTES as u64 + 1,
                large.clone().into(),
            ),
            (
                "large-chunked",
                SPILL_BYTES as u64 + 1,
                in_chunks(&large, 1 << 20),
            ),
        ];
        for (what, limit, body) in cases {
            let store = fresh_store(what);
            let err = store_body(response(body), "http://u:p@h/x", &store, "x", limit)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} was accepted"));
            let msg = err.to_string();
            assert!(matches!(err, FetchError::TooLarge { .. }), "{what}: {msg}");
            assert!(!err.retryable(), "{what}");
            assert!(msg.contains("--max-document-bytes") && msg.contains(&limit.to_string()));
            assert!(!msg.contains("u:p"), "{msg}");
            assert!(stored_object(&store, "x").await.is_none(), "{what}");
        }
        let store = fresh_store("at-limit");
        let len = small.len() as u64;
        let got = store_body(
            response(in_chunks(&small, 999)),
            "http://h/x",
            &store,
            "x",
            len,
        )
        .await
        .unwrap();
        assert_eq!(got.bytes, len);
    }

    #[test]
    fn an_abbreviated_request_needs_an_abbreviated_answer() {
        let answer = |content_type: &str| -> reqwest::Response {
            http::Response::builder()
                .header("content-type", content_type)
                .body("{}")
                .unwrap()
                .into()
        };
        let ok = "application/vnd.npm.install-v1+json; charset=utf-8";
        assert!(check_representation(Accept::Abbreviated, "http://h/x", &answer(ok)).is_ok());
        assert!(
            check_representation(Accept::Full, "http://h/x", &answer("application/json")).is_ok()
        );
        let err = check_representation(
            Accept::Abbreviated,
            "http://h/x",
            &answer("application/json"),
        )
        .unwrap_err();
        assert!(!err.retryable());
        let msg = err.to_string();
        assert!(
            msg.contains("ignored the abbreviated Accept header") && msg.contains("--accept full"),
            "{msg}"
        );
    }
}
