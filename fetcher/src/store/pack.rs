//! The pack format: many packuments in one object, each its exact bytes as an
//! independent zstd frame, then a trailer that lists them, so a pack describes itself
//! without the checkpoint and one packument is read with one ranged read.
//!
//! ```text
//! frame 0 | frame 1 | … | frame n-1 | trailer frame
//! ```
//!
//! - Each packument is one zstd frame (level [`LEVEL`], its content size and checksum in
//!   the frame header), at the offset and of the length its entry gives.
//! - The trailer is a zstd *skippable* frame (magic `0x184D2A5A`), so the whole pack is a
//!   valid zstd stream: `zstd -dc pack` prints the packuments one after another. Its
//!   content is the trailer JSON, zstd-compressed, then 8 bytes of that compressed
//!   length (little-endian) and the 8 bytes `ALLDPACK`: a reader takes the last 16 bytes
//!   of the object, then the compressed trailer just before them.
//! - The trailer JSON: `{"format":"alldocs-pack","version":1,"entries":[{"name",
//!   "offset","length","raw_length","sha256"}, …]}`, `sha256` in lowercase hex, of the
//!   raw bytes.
//!
//! A pack is written whole and only then named (see `store::object`), so none is ever
//! seen half-written; a truncated or altered one is refused with the name and the pack.

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// zstd level of every frame. Measured (`bench --compression`): on the 45 real fixture
/// packuments level 1 stores 0.060 of the raw bytes at 1.2 GB/s, level 6 0.059 at
/// 0.25 GB/s; on 4 kB simulated ones 0.43 at 180 MB/s against 0.41 at 52 MB/s. The
/// packuments are already this repetitive: a higher level buys little and costs the CPU
/// the fetch needs.
pub const LEVEL: i32 = 1;

/// The last 8 bytes of every pack.
pub const MAGIC: &[u8; 8] = b"ALLDPACK";
/// zstd's skippable-frame magic the trailer frame carries (any of `0x184D2A5?` is one).
pub const TRAILER_FRAME_MAGIC: u32 = 0x184D_2A5A;
/// The bytes after the compressed trailer: its length, then [`MAGIC`].
pub const FOOTER_BYTES: u64 = 16;
/// The most a trailer may hold, decompressed: 10,000,000 entries at npm's longest names.
pub const MAX_TRAILER_BYTES: usize = 4 << 30;

/// What the trailer says of one packument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// Where its frame starts in the pack.
    pub offset: u64,
    /// The frame's length.
    pub length: u64,
    /// The packument's own length.
    pub raw_length: u64,
    /// SHA-256 of the packument, lowercase hex.
    pub sha256: String,
}

/// A pack's own description of what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub format: String,
    pub version: u32,
    pub entries: Vec<Entry>,
}

impl Trailer {
    pub fn new(entries: Vec<Entry>) -> Self {
        Self {
            format: "alldocs-pack".into(),
            version: 1,
            entries,
        }
    }
}

/// Why a pack, or a packument in it, cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(
        "the pack {uri} is truncated or not a pack (its last bytes are not an alldocs pack footer)"
    )]
    NoFooter { uri: String },
    #[error("the pack {uri} has a damaged trailer: {reason}")]
    BadTrailer { uri: String, reason: String },
    #[error("`{name}` in the pack {uri} is damaged: {reason}")]
    BadFrame {
        name: String,
        uri: String,
        reason: String,
    },
    #[error("`{name}` in the pack {uri} is not what was stored: its SHA-256 is {found}, the checkpoint recorded {expected}")]
    Digest {
        name: String,
        uri: String,
        found: String,
        expected: String,
    },
    #[error("reading the pack {uri}: {source}")]
    Read {
        uri: String,
        #[source]
        source: object_store::Error,
    },
}

/// `packs/<snapshot>/<fencing token, 12 digits>-<n, 4 digits>.pack`: a lease's packs sort
/// in the order they were sealed, and no two leases of a checkpoint share a name.
pub fn pack_path(snapshot: &str, token: u64, n: u32) -> Path {
    Path::from(format!("packs/{snapshot}/{token:012}-{n:04}.pack"))
}

/// Whether `id` can name a snapshot's pack folder: 1 to 32 lowercase hex digits.
pub fn valid_snapshot_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One packument as a frame of its own (with its content size and a checksum). Each
/// thread keeps one compression context: making one costs more than compressing a small
/// packument.
pub fn compress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            let mut c = zstd::bulk::Compressor::new(LEVEL)?;
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            *cell = Some(c);
        }
        cell.as_mut().expect("a compressor").compress(raw)
    })
}

/// A streaming encoder writing one frame into `out` (for a packument too large to hold):
/// the frame carries a checksum; its size is in the trailer.
pub fn encoder<W: std::io::Write>(
    out: W,
) -> std::io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut e = zstd::stream::write::Encoder::new(out, LEVEL)?;
    e.include_checksum(true)?;
    Ok(e)
}

/// The trailer frame that ends a pack of `entries`.
pub fn trailer_frame(entries: Vec<Entry>) -> std::io::Result<Vec<u8>> {
    let json = serde_json::to_vec(&Trailer::new(entries)).expect("a trailer serializes");
    let compressed = zstd::bulk::compress(&json, 3)?;
    let content = compressed.len() + FOOTER_BYTES as usize;
    let mut frame = Vec::with_capacity(8 + content);
    frame.extend_from_slice(&TRAILER_FRAME_MAGIC.to_le_bytes());
    frame.extend_from_slice(&(content as u32).to_le_bytes());
    frame.extend_from_slice(&compressed);
    frame.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    frame.extend_from_slice(MAGIC);
    Ok(frame)
}

/// The compressed trailer's length, from a pack's last [`FOOTER_BYTES`].
pub fn footer_len(footer: &[u8], uri: &str) -> Result<u64, PackError> {
    let no_footer = || PackError::NoFooter { uri: uri.into() };
    if footer.len() != FOOTER_BYTES as usize || &footer[8..] != MAGIC {
        return Err(no_footer());
    }
    Ok(u64::from_le_bytes(footer[..8].try_into().expect("8 bytes")))
}

/// Decodes a compressed trailer.
pub fn parse_trailer(compressed: &[u8], uri: &str) -> Result<Trailer, PackError> {
    let bad = |reason: String| PackError::BadTrailer {
        uri: uri.into(),
        reason,
    };
    let mut json = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(compressed).map_err(|e| bad(e.to_string()))?;
    std::io::copy(
        &mut std::io::Read::take(decoder, MAX_TRAILER_BYTES as u64 + 1),
        &mut json,
    )
    .map_err(|e| bad(e.to_string()))?;
    if json.len() > MAX_TRAILER_BYTES {
        return Err(bad("it is larger than any pack's trailer can be".into()));
    }
    let trailer: Trailer = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    if trailer.format != "alldocs-pack" || trailer.version != 1 {
        return Err(bad(format!(
            "format {} version {}, not alldocs-pack version 1 (written by a newer alldocs?)",
            trailer.format, trailer.version
        )));
    }
    Ok(trailer)
}

/// Reads a pack's trailer with two ranged reads (its footer, then the trailer).
pub async fn read_trailer(store: &super::Store, path: &Path) -> Result<(Trailer, u64), PackError> {
    let uri = store.uri(path);
    let read = |source| PackError::Read {
        uri: uri.clone(),
        source,
    };
    let size = store.object_store().head(path).await.map_err(read)?.size;
    if size < FOOTER_BYTES {
        return Err(PackError::NoFooter { uri });
    }
    let footer = store
        .object_store()
        .get_range(path, size - FOOTER_BYTES..size)
        .await
        .map_err(read)?;
    let len = footer_len(&footer, &uri)?;
    let end = size - FOOTER_BYTES;
    let start = end
        .checked_sub(len)
        .filter(|s| *s >= 8)
        .ok_or_else(|| PackError::BadTrailer {
            uri: uri.clone(),
            reason: format!("its trailer would be {len} bytes, more than the pack holds"),
        })?;
    let compressed = store
        .object_store()
        .get_range(path, start..end)
        .await
        .map_err(read)?;
    Ok((parse_trailer(&compressed, &uri)?, size))
}

/// A packument from its frame: decompressed, its length and SHA-256 checked against what
/// was recorded (`sha256`, 32 bytes; empty: not checked). Never returns bytes that fail
/// either.
pub fn decode(
    frame: &[u8],
    name: &str,
    uri: &str,
    raw_length: u64,
    sha256: &[u8],
) -> Result<Bytes, PackError> {
    let bad = |reason: String| PackError::BadFrame {
        name: name.into(),
        uri: uri.into(),
        reason,
    };
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let raw = DECOMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Decompressor::new()?);
            }
            cell.as_mut()
                .expect("a decompressor")
                .decompress(frame, raw_length as usize)
        })
        .map_err(|e| bad(format!("its zstd frame does not decode ({e})")))?;
    if raw.len() as u64 != raw_length {
        return Err(bad(format!(
            "it decodes to {} bytes, not the {raw_length} recorded",
            raw.len()
        )));
    }
    check_digest(&raw, name, uri, sha256)?;
    Ok(Bytes::from(raw))
}

/// Checks `raw` against a recorded SHA-256 (empty: nothing recorded, nothing checked).
pub fn check_digest(raw: &[u8], name: &str, uri: &str, sha256: &[u8]) -> Result<(), PackError> {
    if sha256.is_empty() {
        return Ok(());
    }
    let found = Sha256::digest(raw);
    if found[..] != *sha256 {
        return Err(PackError::Digest {
            name: name.into(),
            uri: uri.into(),
            found: hex::encode(found),
            expected: hex::encode(sha256),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack_of(docs: &[(&str, &[u8])]) -> (Vec<u8>, Vec<Entry>) {
        let mut pack = Vec::new();
        let mut entries = Vec::new();
        for (name, raw) in docs {
            let frame = compress(raw).unwrap();
            entries.push(Entry {
                name: name.to_string(),
                offset: pack.len() as u64,
                length: frame.len() as u64,
                raw_length: raw.len() as u64,
                sha256: sha256_hex(raw),
            });
            pack.extend_from_slice(&frame);
        }
        pack.extend_from_slice(&trailer_frame(entries.clone()).unwrap());
        (pack, entries)
    }

    #[test]
    fn a_pack_describes_itself_and_each_frame_decodes_alone() {
        let docs: [(&str, &[u8]); 3] = [
            ("a", br#"{"name":"a"}"#),
            ("@s/b", br#"{"name":"@s/b","versions":{}}"#),
            ("empty-ish", b"{}"),
        ];
        let (pack, entries) = pack_of(&docs);
        let footer = &pack[pack.len() - 16..];
        let len = footer_len(footer, "p").unwrap() as usize;
        let end = pack.len() - 16;
        let trailer = parse_trailer(&pack[end - len..end], "p").unwrap();
        assert_eq!(trailer.entries, entries);
        for (e, (_, raw)) in entries.iter().zip(docs) {
            let frame = &pack[e.offset as usize..(e.offset + e.length) as usize];
            let sha = hex::decode(&e.sha256).unwrap();
            let got = decode(frame, &e.name, "p", e.raw_length, &sha).unwrap();
            assert_eq!(&got[..], raw);
        }
        // The whole pack is one zstd stream: the packuments, one after another.
        let all = zstd::stream::decode_all(&pack[..]).unwrap();
        assert_eq!(
            all,
            docs.iter()
                .flat_map(|(_, r)| r.to_vec())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_flipped_byte_or_a_cut_is_refused_with_the_name_and_the_pack() {
        let raw = br#"{"name":"left-pad","readme":"pads a string on the left"}"#;
        let (mut pack, entries) = pack_of(&[("left-pad", raw)]);
        let e = &entries[0];
        let frame_end = (e.offset + e.length) as usize;
        pack[frame_end - 6] ^= 0x40;
        let err = decode(
            &pack[..frame_end],
            "left-pad",
            "file:///p.pack",
            e.raw_length,
            &hex::decode(&e.sha256).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("left-pad") && err.contains("file:///p.pack"),
            "{err}"
        );
        let err = decode(
            raw,
            "left-pad",
            "p",
            e.raw_length,
            &hex::decode(&e.sha256).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, PackError::BadFrame { .. }), "{err}");
        let cut = &pack[..pack.len() - 3];
        assert!(matches!(
            footer_len(&cut[cut.len() - 16..], "p"),
            Err(PackError::NoFooter { .. })
        ));
    }

    #[test]
    fn a_digest_that_differs_is_refused() {
        let frame = compress(b"{}").unwrap();
        let other = sha256_hex(b"[]");
        let err = decode(&frame, "x", "p", 2, &hex::decode(&other).unwrap()).unwrap_err();
        assert!(matches!(err, PackError::Digest { .. }), "{err}");
        assert!(
            decode(&frame, "x", "p", 2, &[]).is_ok(),
            "no digest recorded"
        );
    }

    #[test]
    fn pack_names_sort_by_token_then_sequence_and_snapshot_ids_are_hex() {
        assert_eq!(
            pack_path("0a1b", 42, 3).as_ref(),
            "packs/0a1b/000000000042-0003.pack"
        );
        assert!(pack_path("s", 9, 0).as_ref() < pack_path("s", 10, 0).as_ref());
        assert!(valid_snapshot_id("0123456789abcdef"));
        for bad in ["", "../x", "ABC", &"a".repeat(33)] {
            assert!(!valid_snapshot_id(bad), "{bad}");
        }
    }
}
