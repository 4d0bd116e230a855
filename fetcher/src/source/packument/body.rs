//! Storing one packument's body, after checking it is one JSON object: a body of up to
//! [`SPILL_BYTES`] is read whole and written in one request; a larger one streams to the
//! store in parts while a blocking thread validates the same bytes, and an upload that
//! does not finish is aborted, so no object is ever half-written.

use std::{fmt, io::Read};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::{buffered::BufWriter, path::Path};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::SPILL_BYTES;
use crate::{
    source::http::{redact, FetchError},
    store::{packument_path, Store},
};

/// Where one packument's body goes, and how its failures are named.
pub(super) struct Destination<'a> {
    store: &'a Store,
    path: Path,
    uri: String,
    url: &'a str,
    /// Decoded bytes the body may have.
    limit: u64,
}

/// A body written to the store: its top-level `_rev`, its length, and where it is.
pub(super) struct StoredBody {
    pub(super) doc_rev: Option<String>,
    pub(super) bytes: u64,
    pub(super) uri: String,
}

impl Destination<'_> {
    fn transport(&self, e: reqwest::Error) -> FetchError {
        FetchError::transport(self.url, &e)
    }

    fn invalid(&self, e: serde_json::Error) -> FetchError {
        FetchError::InvalidJson {
            url: redact(self.url),
            message: e.to_string(),
        }
    }

    /// Fails once `len` decoded bytes are past the limit.
    fn check_size(&self, len: u64) -> Result<(), FetchError> {
        if len > self.limit {
            return Err(FetchError::TooLarge {
                url: redact(self.url),
                limit: self.limit,
            });
        }
        Ok(())
    }

    fn store_err(&self, e: impl fmt::Display) -> FetchError {
        FetchError::Store {
            uri: self.uri.clone(),
            message: e.to_string(),
        }
    }

    fn stored(self, doc_rev: Option<String>, bytes: u64) -> StoredBody {
        StoredBody {
            doc_rev,
            bytes,
            uri: self.uri,
        }
    }
}

/// Stores a packument's body once it is known to be one JSON object: a body of up to
/// [`SPILL_BYTES`] is read whole, a larger one (announced, or found while reading) streams.
/// Past `limit` decoded bytes (announced, or counted while reading: a gzip bomb) the body
/// is refused and nothing is stored.
pub(super) async fn store_body(
    resp: reqwest::Response,
    url: &str,
    store: &Store,
    name: &str,
    limit: u64,
) -> Result<StoredBody, FetchError> {
    let path = packument_path(name);
    let dest = Destination {
        store,
        uri: store.uri(&path),
        path,
        url,
        limit,
    };
    dest.check_size(resp.content_length().unwrap_or(0))?;
    let large = resp
        .content_length()
        .is_some_and(|len| len > SPILL_BYTES as u64);
    let mut body = resp.bytes_stream();
    let head = if large {
        Bytes::new()
    } else {
        let head = read_until_spill(&mut body, &dest).await?;
        if head.len() <= SPILL_BYTES {
            return store_small(head, dest).await;
        }
        head
    };
    stream_large(head, body, dest).await
}

/// Reads `body` until it ends or holds more than [`SPILL_BYTES`]. A body that arrives as
/// one chunk (most do) is returned as it is, not copied.
pub(super) async fn read_until_spill(
    body: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
    dest: &Destination<'_>,
) -> Result<Bytes, FetchError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| dest.transport(e))?;
        len += chunk.len();
        dest.check_size(len as u64)?;
        chunks.push(chunk);
        if len > SPILL_BYTES {
            break;
        }
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop().expect("one chunk"));
    }
    let mut buf = BytesMut::with_capacity(len);
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A whole body in memory: checked, then written in one request.
pub(super) async fn store_small(
    bytes: Bytes,
    dest: Destination<'_>,
) -> Result<StoredBody, FetchError> {
    let rev = doc_rev(&bytes[..]).map_err(|e| dest.invalid(e))?;
    let len = bytes.len() as u64;
    dest.store
        .put_durable(&dest.path, bytes)
        .await
        .map_err(|e| dest.store_err(e))?;
    Ok(dest.stored(rev, len))
}

/// A large body (`head`, then the rest of `body`): streamed to the store in parts while a
/// blocking thread validates the same bytes; the object appears only if both succeed.
pub(super) async fn stream_large(
    head: Bytes,
    body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    dest: Destination<'_>,
) -> Result<StoredBody, FetchError> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let validator = tokio::task::spawn_blocking(move || doc_rev(ChannelReader::new(rx)));
    let mut upload = Upload::new(dest.store.writer(&dest.path, SPILL_BYTES));
    // `tx` goes with the copy and is dropped when it ends, so the validator sees the end.
    let streamed = copy_to_both(head, body, upload.writer(), tx, &dest).await;
    let validated = validator.await.expect("the validator does not panic");
    match (streamed, validated) {
        (Ok(len), Ok(rev)) => {
            upload.complete().await.map_err(|e| dest.store_err(e))?;
            dest.store
                .make_durable(&dest.path)
                .await
                .map_err(|e| dest.store_err(e))?;
            Ok(dest.stored(rev, len))
        }
        (Err(e), _) => {
            upload.abort().await;
            Err(e)
        }
        (Ok(_), Err(e)) => {
            upload.abort().await;
            Err(dest.invalid(e))
        }
    }
}

/// A multipart upload that is aborted unless it completes: when the lease is cancelled
/// (client gone, deadline, stop) its future is dropped mid-body, and the drop starts the
/// abort, so no half-written object, temp file or pending multipart upload remains.
pub(super) struct Upload(Option<BufWriter>);

impl Upload {
    fn new(writer: BufWriter) -> Self {
        Self(Some(writer))
    }

    fn writer(&mut self) -> &mut BufWriter {
        self.0.as_mut().expect("the upload is open")
    }

    async fn complete(&mut self) -> std::io::Result<()> {
        self.writer().shutdown().await?;
        self.0 = None;
        Ok(())
    }

    async fn abort(&mut self) {
        if let Some(mut writer) = self.0.take() {
            let _ = writer.abort().await;
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(mut writer) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = writer.abort().await;
                });
            }
        }
    }
}

/// Writes `head` and then each chunk of `body` to the store writer and to the validator;
/// returns the bytes written. Stops early, without error, when the validator has stopped:
/// it holds the error.
pub(super) async fn copy_to_both(
    head: Bytes,
    mut body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    writer: &mut BufWriter,
    tx: mpsc::Sender<Bytes>,
    dest: &Destination<'_>,
) -> Result<u64, FetchError> {
    let mut len = 0u64;
    let mut pending = Some(head);
    loop {
        let chunk = match pending.take() {
            Some(first) => first,
            None => match body.next().await {
                Some(chunk) => chunk.map_err(|e| dest.transport(e))?,
                None => return Ok(len),
            },
        };
        len += chunk.len() as u64;
        dest.check_size(len)?;
        writer
            .write_all(&chunk)
            .await
            .map_err(|e| dest.store_err(e))?;
        if tx.send(chunk).await.is_err() {
            return Ok(len);
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
                        let len = rev.as_ref().map_or(0, String::len);
                        if len > crate::source::all_docs::MAX_REV_BYTES {
                            // Nothing this size is a CouchDB revision; it must not reach
                            // the checkpoint.
                            return Err(serde::de::Error::custom(format_args!(
                                "the document's `_rev` is {len} bytes, over {}",
                                crate::source::all_docs::MAX_REV_BYTES
                            )));
                        }
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
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
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
