//! A hostile registry on 127.0.0.1 for tests: it ignores `Accept`, answers every name with
//! a document holding that name, and has names that misbehave (a gzip bomb, a body that
//! stalls half-way); it records every request and serves `_all_docs` over a fixed list.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context as _;
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};
use futures::StreamExt as _;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, header, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use percent_encoding::percent_decode_str;
use tokio::{net::TcpListener, task::JoinHandle};

/// The name whose body is a gzip bomb: about 10 MB on the wire that decode to
/// [`BOMB_DECODED_BYTES`], one JSON string of `0`s that never closes before the end.
pub const BOMB: &str = "bomb";
/// The name whose body sends [`STALL_BYTES`] of an unfinished document, then nothing more.
pub const STALL: &str = "stall";
/// How much of the stalled document is sent: past the fetcher's in-memory threshold and
/// its first multipart part, so an upload is in progress when the body stalls.
pub const STALL_BYTES: usize = 24 << 20;
/// One MiB of `0`s, the bomb's repeated unit.
const UNIT: usize = 1 << 20;
/// Units in the bomb: about 10.3 GB decoded.
const BOMB_UNITS: u64 = 9_823;
/// The bomb's decoded size.
pub const BOMB_DECODED_BYTES: u64 = BOMB_UNITS * UNIT as u64 + 10;

type Body = BoxBody<Bytes, Infallible>;

/// What the registry saw and sent.
#[derive(Default)]
struct Seen {
    /// Every request's path and query, raw, in order.
    requests: Mutex<Vec<String>>,
    /// Decoded bytes of bomb handed to the connection so far.
    bomb_decoded_sent: AtomicU64,
}

/// The running registry; stopped when dropped.
pub struct HostileRegistry {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl HostileRegistry {
    /// Serves on a free port; `_all_docs` lists `names` (each with revision `1-hostile`).
    pub async fn start(names: &[&str]) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut listing: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        listing.sort();
        let listing = Arc::new(listing);
        let bomb = Arc::new(Bomb::new().context("building the gzip bomb")?);
        let seen = Arc::new(Seen::default());
        let state = (listing, bomb, seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (listing, bomb, seen) = state.clone();
                        async move { Ok::<_, Infallible>(answer(req, &listing, &bomb, &seen)) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request's raw path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        self.seen.requests.lock().expect("requests").clone()
    }

    /// Requests for one packument (its path decoded equals `/<name>`).
    pub fn requests_for(&self, name: &str) -> usize {
        self.requests()
            .iter()
            .filter(|p| decoded_name(p).as_deref() == Some(name))
            .count()
    }

    /// Decoded bytes of the bomb handed to connections so far.
    pub fn bomb_decoded_sent(&self) -> u64 {
        self.seen.bomb_decoded_sent.load(Ordering::Relaxed)
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The document a well-behaved name gets: its own name, so each stored object says
/// whose it is. A name `padded-N` also gets a `pad` of N bytes.
pub fn document_for(name: &str) -> Vec<u8> {
    let mut doc = serde_json::json!({ "name": name, "_rev": "1-hostile" });
    if let Some(n) = name.strip_prefix("padded-").and_then(|n| n.parse().ok()) {
        doc["pad"] = "0".repeat(n).into();
    }
    serde_json::to_vec(&doc).expect("a JSON value serializes")
}

/// The name a packument request asks for: its path without the leading `/`, decoded.
fn decoded_name(path_and_query: &str) -> Option<String> {
    let path = path_and_query.split('?').next()?;
    let raw = path.strip_prefix('/')?;
    Some(percent_decode_str(raw).decode_utf8_lossy().into_owned())
}

fn answer(
    req: Request<hyper::body::Incoming>,
    listing: &[String],
    bomb: &Bomb,
    seen: &Arc<Seen>,
) -> Response<Body> {
    let raw = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    seen.requests.lock().expect("requests").push(raw.clone());
    if req.uri().path() == "/_all_docs" {
        return json(all_docs(listing, req.uri().query().unwrap_or("")));
    }
    match decoded_name(&raw).as_deref() {
        Some(BOMB) => bomb.response(seen.clone()),
        Some(STALL) => stalled(),
        // Always application/json, whatever the Accept header asked for.
        Some(name) => json(document_for(name)),
        None => json(b"{}".to_vec()),
    }
}

fn json(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a valid response")
}

/// `_all_docs` over the listing: rows from `startkey` (inclusive) to `endkey`
/// (exclusive), at most `limit`.
fn all_docs(listing: &[String], query: &str) -> Vec<u8> {
    let mut start = None;
    let mut end = None;
    let mut limit = usize::MAX;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let key = || serde_json::from_str::<String>(&v).ok();
        match &*k {
            "startkey" => start = key(),
            "endkey" => end = key(),
            "limit" => limit = v.parse().unwrap_or(usize::MAX),
            _ => {}
        }
    }
    let rows: Vec<_> = listing
        .iter()
        .filter(|n| start.as_ref().is_none_or(|s| n.as_bytes() >= s.as_bytes()))
        .filter(|n| end.as_ref().is_none_or(|e| n.as_bytes() < e.as_bytes()))
        .take(limit)
        .map(|n| serde_json::json!({"id": n, "key": n, "value": {"rev": "1-hostile"}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"total_rows": listing.len(), "offset": 0, "rows": rows}))
        .expect("a JSON value serializes")
}

/// [`STALL_BYTES`] of `{"pad":"…` (pseudo-random letters and digits, so that even
/// compressed into a pack it is past the first multipart part), then a body that never
/// ends.
fn stalled() -> Response<Body> {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut head = b"{\"pad\":\"".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while head.len() < STALL_BYTES {
        // xorshift64: deterministic, and as good as random to a compressor.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        head.push(LETTERS[(x & 63) as usize]);
    }
    let chunks = futures::stream::iter(
        head.chunks(1 << 20)
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(c))))
            .collect::<Vec<_>>(),
    )
    .chain(futures::stream::pending());
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .expect("a valid response")
}

/// A gzip member decoding to `{"pad":"` + [`BOMB_UNITS`] MiB of `0` + `"}`, built without
/// ever holding more than a few MiB: the deflate segment for one MiB of `0`s that follows
/// a window of `0`s is computed once and repeated (it only refers back to `0`s), and the
/// CRC is combined per unit.
struct Bomb {
    /// gzip header and the deflate stream of the prefix and the first two units.
    head: Bytes,
    /// The deflate segment of one unit, byte-aligned (sync flush).
    unit: Bytes,
    /// The final deflate block (the closing `"}`) and the gzip trailer.
    tail: Bytes,
}

impl Bomb {
    fn new() -> anyhow::Result<Self> {
        let zeros = vec![b'0'; UNIT];
        let mut deflate = Compress::new(Compression::default(), false);
        let mut head = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let prefix = b"{\"pad\":\"";
        head.extend(segment(&mut deflate, prefix, FlushCompress::Sync)?);
        head.extend(segment(&mut deflate, &zeros, FlushCompress::Sync)?);
        head.extend(segment(&mut deflate, &zeros, FlushCompress::Sync)?);
        let unit = segment(&mut deflate, &zeros, FlushCompress::Sync)?;
        let suffix = b"\"}";
        let mut last = Compress::new(Compression::default(), false);
        let mut tail = segment(&mut last, suffix, FlushCompress::Finish)?;
        let mut crc = Crc::new();
        crc.update(prefix);
        let mut unit_crc = Crc::new();
        unit_crc.update(&zeros);
        for _ in 0..BOMB_UNITS {
            crc.combine(&unit_crc);
        }
        let mut suffix_crc = Crc::new();
        suffix_crc.update(suffix);
        crc.combine(&suffix_crc);
        tail.extend(crc.sum().to_le_bytes());
        tail.extend((BOMB_DECODED_BYTES as u32).to_le_bytes());
        Ok(Self {
            head: head.into(),
            unit: unit.into(),
            tail: tail.into(),
        })
    }

    /// The bomb as a response, produced lazily: 64 units per frame.
    fn response(&self, seen: Arc<Seen>) -> Response<Body> {
        const BATCH: u64 = 64;
        let batch: Bytes = self.unit.repeat(BATCH as usize).into();
        let head = (self.head.clone(), 8 + 2 * UNIT as u64);
        let full = (BOMB_UNITS - 2) / BATCH;
        let rest = (BOMB_UNITS - 2) % BATCH;
        let units = (0..full)
            .map(move |_| (batch.clone(), BATCH * UNIT as u64))
            .chain((0..rest).map({
                let unit = self.unit.clone();
                move |_| (unit.clone(), UNIT as u64)
            }));
        let frames = futures::stream::iter(
            std::iter::once(head)
                .chain(units)
                .chain(std::iter::once((self.tail.clone(), 2))),
        )
        .map(move |(bytes, decoded)| {
            seen.bomb_decoded_sent.fetch_add(decoded, Ordering::Relaxed);
            Ok::<_, Infallible>(Frame::data(bytes))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .expect("a valid response")
    }
}

/// Compresses `input` with `flush`, returning everything the compressor wrote.
fn segment(deflate: &mut Compress, input: &[u8], flush: FlushCompress) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 100 + 1024);
    let start_in = deflate.total_in();
    loop {
        let consumed = (deflate.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 256 {
            out.reserve(4096);
        }
        let status = deflate.compress_vec(&input[consumed..], &mut out, flush)?;
        let done_input = (deflate.total_in() - start_in) as usize == input.len();
        let room_left = out.capacity() > out.len();
        if status == flate2::Status::StreamEnd || (done_input && room_left) {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// A bomb of a few units decodes to exactly the document it claims, CRC included,
    /// so the real one is a valid gzip body too (only longer).
    #[test]
    fn the_bomb_is_a_valid_gzip_of_a_json_document() {
        let bomb = Bomb::new().unwrap();
        assert!(
            bomb.unit.len() < 4096,
            "one MiB in {} bytes",
            bomb.unit.len()
        );
        // A short bomb with the same parts: head (2 units), 3 more units, tail with its own
        // CRC and length.
        let zeros = vec![b'0'; UNIT];
        let mut crc = Crc::new();
        crc.update(b"{\"pad\":\"");
        for _ in 0..5 {
            crc.update(&zeros);
        }
        crc.update(b"\"}");
        let mut body = bomb.head.to_vec();
        for _ in 0..3 {
            body.extend_from_slice(&bomb.unit);
        }
        let tail = &bomb.tail[..bomb.tail.len() - 8];
        body.extend_from_slice(tail);
        body.extend(crc.sum().to_le_bytes());
        body.extend(((5 * UNIT + 10) as u32).to_le_bytes());
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded.len(), 5 * UNIT + 10);
        let v: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(v["pad"].as_str().unwrap().len(), 5 * UNIT);
        const { assert!(BOMB_DECODED_BYTES > 10_000_000_000) };
        let wire = bomb.head.len() as u64 + (BOMB_UNITS - 2) * bomb.unit.len() as u64;
        assert!(wire < 20_000_000, "{wire} bytes on the wire");
    }
}
