//! Keeping one packument's body, after checking it is one JSON object: as a file of its
//! own, or as a frame in the lease's packs. A body of up to [`SPILL_BYTES`] (and, for
//! packs, the pack size) is read whole and kept in one write; a larger one streams to the
//! store in parts — compressed into a pack of its own with packs — while a blocking thread
//! validates the same bytes, and an object that does not finish is never seen: no file,
//! temp file or pending upload is left behind.

use std::fmt;

use alldocs_proto::v1::PackumentStored;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::path::Path;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    json::{doc_rev, ChannelReader},
    SPILL_BYTES,
};
use crate::{
    source::{
        http::{redact, FetchError},
        packs::{seal_pack, Packer, Sealed},
    },
    store::{object::ObjectWriter, pack, packument_path, Store},
};

/// Bodies above this are compressed on a blocking thread rather than in the task.
const COMPRESS_INLINE_BYTES: usize = 256 << 10;

/// Where a body goes.
#[derive(Clone, Copy)]
pub enum Place<'a> {
    /// `packuments/<key>.json` in this store.
    File(&'a Store),
    /// The lease's packs.
    Pack(&'a Packer),
}

/// Where one packument's body goes, and how its failures are named.
pub(super) struct Destination<'a> {
    place: Place<'a>,
    path: Path,
    /// The file's URI, or what names a pack in an error before it has one.
    uri: String,
    url: &'a str,
    /// Decoded bytes the body may have.
    limit: u64,
}

/// A body written as a file of its own: its top-level `_rev`, its length, its SHA-256
/// and where it is.
pub(super) struct StoredBody {
    pub(super) doc_rev: Option<String>,
    pub(super) bytes: u64,
    pub(super) sha256: Vec<u8>,
    pub(super) uri: String,
}

/// What became of a body.
pub(super) enum Kept {
    File(StoredBody),
    /// In the lease's open pack: reported once the pack is sealed.
    Held,
    /// It sealed a pack (its own, or the one it filled).
    Sealed(Sealed),
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

    /// The most a body is read into memory before it streams.
    fn spill(&self) -> usize {
        match self.place {
            Place::File(_) => SPILL_BYTES,
            Place::Pack(packer) => SPILL_BYTES.min(packer.max_bytes() as usize),
        }
    }
}

/// Stores a packument's body as a file once it is known to be one JSON object: a body of
/// up to [`SPILL_BYTES`] is read whole, a larger one (announced, or found while reading)
/// streams. Past `limit` decoded bytes (announced, or counted while reading: a gzip bomb)
/// the body is refused and nothing is stored.
#[cfg(test)]
pub(super) async fn store_body(
    resp: reqwest::Response,
    url: &str,
    store: &Store,
    name: &str,
    limit: u64,
) -> Result<StoredBody, FetchError> {
    let meta = PackumentStored {
        name: name.to_string(),
        ..Default::default()
    };
    match keep_body(resp, url, Place::File(store), meta, limit).await? {
        Kept::File(body) => Ok(body),
        Kept::Held | Kept::Sealed(_) => unreachable!("a file is kept as a file"),
    }
}

/// Keeps a packument's body at `place` (see [`store_body`]); `meta` is its `stored` event
/// so far (name, revision asked for, ETag), which a pack holds until it is sealed.
pub(super) async fn keep_body(
    resp: reqwest::Response,
    url: &str,
    place: Place<'_>,
    meta: PackumentStored,
    limit: u64,
) -> Result<Kept, FetchError> {
    let path = packument_path(&meta.name);
    let uri = match place {
        Place::File(store) => store.uri(&path),
        Place::Pack(_) => format!("a pack of the lease (for `{}`)", meta.name),
    };
    let dest = Destination {
        place,
        path,
        uri,
        url,
        limit,
    };
    dest.check_size(resp.content_length().unwrap_or(0))?;
    let spill = dest.spill();
    let large = resp.content_length().is_some_and(|len| len > spill as u64);
    let mut body = resp.bytes_stream();
    let head = if large {
        Bytes::new()
    } else {
        let head = read_until_spill(&mut body, &dest, spill).await?;
        if head.len() <= spill {
            return keep_small(head, dest, meta).await;
        }
        head
    };
    stream_large(head, body, dest, meta).await
}

/// Reads `body` until it ends or holds more than `spill` bytes. A body that arrives as
/// one chunk (most do) is returned as it is, not copied.
pub(super) async fn read_until_spill(
    body: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
    dest: &Destination<'_>,
    spill: usize,
) -> Result<Bytes, FetchError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| dest.transport(e))?;
        len += chunk.len();
        dest.check_size(len as u64)?;
        chunks.push(chunk);
        if len > spill {
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

/// A whole body in memory: checked, then written as a file in one request, or added to
/// the lease's open pack as one frame.
pub(super) async fn keep_small(
    bytes: Bytes,
    dest: Destination<'_>,
    meta: PackumentStored,
) -> Result<Kept, FetchError> {
    let rev = doc_rev(&bytes[..]).map_err(|e| dest.invalid(e))?;
    let len = bytes.len() as u64;
    let sha256 = Sha256::digest(&bytes).to_vec();
    match dest.place {
        Place::File(store) => {
            store
                .put_durable(&dest.path, bytes)
                .await
                .map_err(|e| dest.store_err(e))?;
            Ok(Kept::File(StoredBody {
                doc_rev: rev,
                bytes: len,
                sha256,
                uri: dest.uri,
            }))
        }
        Place::Pack(packer) => {
            let frame = if bytes.len() > COMPRESS_INLINE_BYTES {
                tokio::task::spawn_blocking(move || pack::compress(&bytes))
                    .await
                    .map_err(|e| dest.store_err(e))?
            } else {
                pack::compress(&bytes)
            }
            .map_err(|e| dest.store_err(e))?;
            let stored = PackumentStored {
                doc_rev: rev.unwrap_or_default(),
                bytes: len,
                sha256,
                ..meta
            };
            Ok(match packer.add(&frame, stored).await? {
                None => Kept::Held,
                Some(sealed) => Kept::Sealed(sealed),
            })
        }
    }
}

/// A large body (`head`, then the rest of `body`): streamed to the store in parts while a
/// blocking thread validates the same bytes — as a file, or compressed into a pack of its
/// own — and the object appears only if both succeed.
pub(super) async fn stream_large(
    head: Bytes,
    body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    dest: Destination<'_>,
    meta: PackumentStored,
) -> Result<Kept, FetchError> {
    let (writer, compress) = match dest.place {
        Place::File(store) => (store.create(&dest.path), false),
        Place::Pack(packer) => (packer.create(), true),
    };
    let mut writer = writer.map_err(|e| dest.store_err(e))?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let validator = tokio::task::spawn_blocking(move || doc_rev(ChannelReader::new(rx)));
    // `tx` goes with the copy and is dropped when it ends, so the validator sees the end.
    let streamed = copy_to_both(head, body, &mut writer, compress, tx, &dest).await;
    let validated = validator.await.expect("the validator does not panic");
    match (streamed, validated) {
        (Ok((len, sha256)), Ok(rev)) => match dest.place {
            Place::File(_) => {
                writer.commit().await.map_err(|e| dest.store_err(e))?;
                Ok(Kept::File(StoredBody {
                    doc_rev: rev,
                    bytes: len,
                    sha256,
                    uri: dest.uri,
                }))
            }
            Place::Pack(_) => seal_alone(writer, meta, rev, len, sha256, &dest).await,
        },
        // The writer is dropped unfinished: nothing is left behind.
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(dest.invalid(e)),
    }
}

/// Seals a pack holding one packument's frame, all of what `writer` holds.
async fn seal_alone(
    writer: ObjectWriter,
    meta: PackumentStored,
    rev: Option<String>,
    len: u64,
    sha256: Vec<u8>,
    dest: &Destination<'_>,
) -> Result<Kept, FetchError> {
    let mut stored = vec![PackumentStored {
        bytes: len,
        doc_rev: rev.unwrap_or_default(),
        sha256,
        pack_offset: 0,
        pack_length: writer.len(),
        ..meta
    }];
    let pack = seal_pack(writer, &mut stored)
        .await
        .map_err(|e| dest.store_err(e))?;
    Ok(Kept::Sealed(Sealed {
        pack: Some(pack),
        stored,
        failed: Vec::new(),
    }))
}

/// Writes `head` and then each chunk of `body` to the object (compressed as one zstd
/// frame if `compress`) and to the validator; returns the raw bytes written and their
/// SHA-256. Stops early, without error, when the validator has stopped: it holds the
/// error.
pub(super) async fn copy_to_both(
    head: Bytes,
    mut body: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
    writer: &mut ObjectWriter,
    compress: bool,
    tx: mpsc::Sender<Bytes>,
    dest: &Destination<'_>,
) -> Result<(u64, Vec<u8>), FetchError> {
    let mut encoder = compress
        .then(|| pack::encoder(Vec::new()))
        .transpose()
        .map_err(|e| dest.store_err(e))?;
    let mut hash = Sha256::new();
    let mut len = 0u64;
    let mut pending = Some(head);
    loop {
        let chunk = match pending.take() {
            Some(first) => first,
            None => match body.next().await {
                Some(chunk) => chunk.map_err(|e| dest.transport(e))?,
                None => break,
            },
        };
        len += chunk.len() as u64;
        dest.check_size(len)?;
        hash.update(&chunk);
        let written = match encoder.as_mut() {
            Some(encoder) => {
                std::io::Write::write_all(encoder, &chunk).map_err(|e| dest.store_err(e))?;
                let out = std::mem::take(encoder.get_mut());
                writer.write(&out).await
            }
            None => writer.write(&chunk).await,
        };
        written.map_err(|e| dest.store_err(e))?;
        if tx.send(chunk).await.is_err() {
            return Ok((len, hash.finalize().to_vec()));
        }
    }
    if let Some(encoder) = encoder {
        let out = encoder.finish().map_err(|e| dest.store_err(e))?;
        writer.write(&out).await.map_err(|e| dest.store_err(e))?;
    }
    Ok((len, hash.finalize().to_vec()))
}
