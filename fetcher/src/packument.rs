//! Fetching packuments from the registry and storing the exact bytes served, after
//! checking they are one JSON object; large bodies stream to the store, never held whole.

use std::{
    fmt,
    io::Read,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use crate::{
    http::{redact, status_error, FetchError, Http},
    store::{packument_path, Store},
};
use alldocs_proto::v1::{Accept, PackumentMissing, PackumentStored};

/// Bodies up to this size are checked in memory and written in one request; larger ones
/// are validated on a blocking thread while they stream to the store in parts.
pub const SPILL_BYTES: usize = 8 << 20;

/// What became of one name.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Stored(PackumentStored),
    Missing(PackumentMissing),
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

/// Fetches one packument (with retries) and stores it.
pub async fn fetch(
    http: &Http,
    registry: &str,
    store: &Store,
    accept: Accept,
    name: &str,
    index_rev: &str,
    bytes_total: &AtomicU64,
) -> Result<Outcome, FetchError> {
    let url = packument_url(registry, name);
    http.retry(name, || async {
        http.admit().await;
        let resp = http
            .get(&url)
            .header(reqwest::header::ACCEPT, accept_header(accept))
            .send()
            .await
            .map_err(|e| FetchError::transport(&url, &e))?;
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
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (doc_rev, bytes, uri) = store_body(resp, &url, store, name).await?;
        bytes_total.fetch_add(bytes, Ordering::Relaxed);
        Ok(Outcome::Stored(PackumentStored {
            name: name.to_string(),
            rev: index_rev.to_string(),
            uri,
            bytes,
            doc_rev: doc_rev.unwrap_or_default(),
            etag,
        }))
    })
    .await
}

async fn store_body(
    resp: reqwest::Response,
    url: &str,
    store: &Store,
    name: &str,
) -> Result<(Option<String>, u64, String), FetchError> {
    let path = packument_path(name);
    let uri = store.uri(&path);
    let transport = |e: reqwest::Error| FetchError::transport(url, &e);
    let invalid = |e: serde_json::Error| FetchError::InvalidJson {
        url: redact(url),
        message: e.to_string(),
    };
    let store_err = |message: String| FetchError::Store {
        uri: uri.clone(),
        message,
    };
    let large = resp
        .content_length()
        .is_some_and(|len| len > SPILL_BYTES as u64);
    let mut body = resp.bytes_stream();
    let mut buf = BytesMut::new();
    if !large {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(transport)?;
            buf.extend_from_slice(&chunk);
            if buf.len() > SPILL_BYTES {
                break;
            }
        }
        if buf.len() <= SPILL_BYTES {
            let bytes = buf.freeze();
            let rev = doc_rev(&bytes[..]).map_err(invalid)?;
            let len = bytes.len() as u64;
            store
                .put(&path, bytes)
                .await
                .map_err(|e| store_err(e.to_string()))?;
            return Ok((rev, len, uri));
        }
    }

    // Large: stream to the store in parts while a blocking thread validates the same bytes.
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let validator = tokio::task::spawn_blocking(move || doc_rev(ChannelReader::new(rx)));
    let mut writer = store.writer(&path, SPILL_BYTES);
    let mut len = 0u64;
    let streamed: Result<(), FetchError> = async {
        let mut pending = Some(buf.freeze());
        loop {
            let chunk = match pending.take() {
                Some(first) => first,
                None => match body.next().await {
                    Some(chunk) => chunk.map_err(transport)?,
                    None => return Ok(()),
                },
            };
            len += chunk.len() as u64;
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| store_err(e.to_string()))?;
            if tx.send(chunk).await.is_err() {
                return Ok(()); // the validator stopped early: it has the error
            }
        }
    }
    .await;
    drop(tx);
    let validated = validator.await.expect("the validator does not panic");
    match (streamed, validated) {
        (Ok(()), Ok(rev)) => {
            writer
                .shutdown()
                .await
                .map_err(|e| store_err(e.to_string()))?;
            Ok((rev, len, uri))
        }
        (Err(e), _) => {
            let _ = writer.abort().await;
            Err(e)
        }
        (Ok(()), Err(e)) => {
            let _ = writer.abort().await;
            Err(invalid(e))
        }
    }
}

/// Checks that `reader` holds exactly one JSON object and returns its top-level `_rev`,
/// without keeping anything else of it.
pub fn doc_rev<R: JsonSource>(reader: R) -> Result<Option<String>, serde_json::Error> {
    reader.parse_head().map(|h| h.0)
}

/// Something a whole JSON document can be read from.
pub trait JsonSource {
    fn parse_head(self) -> Result<Head, serde_json::Error>;
}

impl JsonSource for &[u8] {
    fn parse_head(self) -> Result<Head, serde_json::Error> {
        serde_json::from_slice(self)
    }
}

impl JsonSource for ChannelReader {
    fn parse_head(self) -> Result<Head, serde_json::Error> {
        serde_json::from_reader(self)
    }
}

/// The top-level `_rev` of a document; every other value is checked and dropped.
pub struct Head(Option<String>);

impl<'de> serde::Deserialize<'de> for Head {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeadVisitor;
        impl<'de> Visitor<'de> for HeadVisitor {
            type Value = Head;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (a packument)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
                let mut rev = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "_rev" {
                        rev = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Head(rev))
            }
        }
        d.deserialize_map(HeadVisitor)
    }
}

/// A blocking `Read` over chunks sent from async code.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
