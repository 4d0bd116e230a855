//! A fast, deterministic simulator of npm's replication endpoint (`_all_docs`) and registry.
//!
//! [`Registry`] holds the deterministic data derived from a [`SimConfig`]: a sorted set of
//! package names, their revisions and their documents ("packuments"). [`SimServer`] serves it
//! over HTTP with npm's semantics, optional fault injection and request counters.
//!
//! Served routes (all `GET`, under the optional [`SimConfig::prefix`]):
//!
//! * `{prefix}/` — database info (`db_name`, `doc_count`, `update_seq`).
//! * `{prefix}/_all_docs?startkey=…&endkey=…&limit=…&inclusive_end=…` — CouchDB-style
//!   listing in raw byte order.
//! * `{prefix}/<name>` — a packument, full or abbreviated (by `Accept`), optionally gzipped.
//! * `/-/sim/stats[?names=1]` — the request counters as JSON (always at the root).
//!
//! Packument requests are answered in this order: the optional latency, then 429 for every
//! `throttle_every`-th request, 404 for unknown and missing names, 503 while a name has had at
//! most `fail_first` requests (throttled ones included), 304 when `If-None-Match` matches the
//! `ETag`, else 200.
//!
//! Document bodies cost almost nothing to produce: a large filler text is rendered once per
//! registry and each full document is a small rendered head, a zero-copy slice of the filler
//! (its `readme`) and a static tail. For gzip the filler is also pre-compressed in independent
//! raw-deflate chunks, so only the head and at most 1 KiB of the readme are compressed per
//! request.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest `limit` accepted by `_all_docs`.
pub const MAX_LIMIT: usize = 10_000;
/// `limit` used by `_all_docs` when the query has none.
pub const DEFAULT_LIMIT: usize = 1_000;
/// Path of the counters endpoint (always at the root, outside the prefix).
pub const STATS_PATH: &str = "/-/sim/stats";
/// Content type of abbreviated ("corgi") packuments.
pub const ABBREVIATED_CONTENT_TYPE: &str = "application/vnd.npm.install-v1+json";

/// Hard cap on a document's size, whatever `mean_bytes` is.
const MAX_DOC_BYTES: usize = 100 * 1024 * 1024;
/// Spread (sigma of the underlying normal) of the log-normal document sizes.
const SIZE_SIGMA: f64 = 1.3;
/// Size of the independently pre-compressed filler chunks used for gzip.
const CHUNK: usize = 8 * 1024;
/// Size of the smaller pre-compressed filler chunks that lead up to a [`CHUNK`] boundary.
const SMALL_CHUNK: usize = 1024;
/// The closing bytes of every full document (ends the `readme` string).
const FULL_TAIL: &[u8] = b"\"}";
/// A gzip member header: deflate, no flags, no mtime, "fastest" extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];
/// Placeholder registry host used in tarball URLs.
const TARBALL_HOST: &str = "https://registry.example";

// Domain-separation tags for the deterministic hashes.
const TAG_BASE_REV: u64 = 1;
const TAG_GEN_STEP: u64 = 2;
const TAG_REV_HASH: u64 = 3;
const TAG_DOC: u64 = 4;
const TAG_ETAG: u64 = 5;
const TAG_FILLER: u64 = 6;
const TAG_NAMES: u64 = 7;

/// Configuration of a simulated registry and its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of packages listed by `_all_docs`.
    pub packages: usize,
    /// Mean size in bytes of full (uncompressed) packuments. Sizes are log-normal (sigma 1.3),
    /// capped at 64 × the mean and 100 MiB; a document is never smaller than its metadata.
    pub mean_bytes: usize,
    /// Seed of every deterministic choice (names, revisions, documents).
    pub seed: u64,
    /// Each step changes the revision of a deterministic ~5% of the packages.
    pub generation: u64,
    /// Path prefix everything except the stats is served under, e.g. `/registry` (empty: root).
    pub prefix: String,
    /// If k > 0, every k-th package (by sorted position) is listed but its packument is 404.
    pub missing_every: usize,
    /// The first k packument GETs of each package answer 503.
    pub fail_first: u32,
    /// If k > 0, every k-th packument request answers 429 with `Retry-After: 0`.
    pub throttle_every: usize,
    /// Delay in milliseconds before each packument response.
    pub latency_ms: u64,
    /// Whether to gzip packuments for clients sending `Accept-Encoding: gzip`.
    pub gzip: bool,
    /// If n > 0, `_all_docs` silently answers at most n rows whatever `limit` asks, as a
    /// proxy or a server with a lower cap would: a client that takes a short page for the
    /// end of the listing loses rows.
    pub page_cap: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            packages: 1_000,
            mean_bytes: 54_000,
            seed: 1,
            generation: 0,
            prefix: String::new(),
            missing_every: 0,
            fail_first: 0,
            throttle_every: 0,
            latency_ms: 0,
            gzip: true,
            page_cap: 0,
        }
    }
}

/// Normalizes a prefix to `""` or `/seg[/seg…]` (leading slash, no trailing slash).
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic hashing and randomness (independent of any crate's algorithm choices).

/// The splitmix64 finalizer: a strong 64-bit mixing function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic hash of a seed, a string and a few numbers.
fn hash(seed: u64, text: &str, nums: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ mix64(seed);
    for &b in text.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for &n in nums {
        h = mix64(h ^ mix64(n.wrapping_add(0x9e37_79b9_7f4a_7c15)));
    }
    mix64(h)
}

/// A small deterministic PRNG (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0..n` as a `usize`.
    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `(0, 1]`.
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.index(items.len())]
    }

    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

// ---------------------------------------------------------------------------------------------
// Package names.

/// Common words of npm package names (to get clusters like `eslint-plugin-*`).
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "react", "vue", "babel", "eslint", "plugin", "loader", "webpack", "utils", "cli", "core",
    "types", "config", "parser", "server", "client", "node", "js", "json", "stream", "async",
    "http", "test", "mock", "lint", "style", "css", "icon", "ui", "kit", "tool", "api", "sdk",
    "db", "cache", "router", "redux", "angular", "svelte", "gulp", "preset", "env", "data",
    "file", "fs", "path", "log", "color", "string", "array", "object", "date", "time", "math",
    "crypto", "hash", "auth", "token", "graph", "query", "event", "emitter", "promise", "queue",
    "worker", "cloud", "native", "mobile", "web", "component", "element", "form", "table",
];
const CONSONANTS: &[u8] = b"bcdfghjklmnprstvwxz";
const VOWELS: &[u8] = b"aeiouy";

/// A pronounceable lowercase word starting with a uniformly chosen letter.
fn synth_word(rng: &mut Rng) -> String {
    let len = 2 + rng.index(7);
    let mut word = String::with_capacity(len);
    word.push(char::from(b'a' + rng.below(26) as u8));
    let mut vowel = matches!(word.as_bytes()[0], b'a' | b'e' | b'i' | b'o' | b'u' | b'y');
    while word.len() < len {
        let set = if vowel { CONSONANTS } else { VOWELS };
        word.push(char::from(set[rng.index(set.len())]));
        vowel = !vowel;
    }
    word
}

/// A word: a common npm word or a synthetic one.
fn name_word(rng: &mut Rng) -> String {
    if rng.chance(350) {
        rng.pick(WORDS).to_owned()
    } else {
        synth_word(rng)
    }
}

/// An ordinary lowercase name like `foo-bar`, `foo.js` or `foo_bar2`.
fn lowercase_name(rng: &mut Rng) -> String {
    let parts = match rng.below(100) {
        0..45 => 1,
        45..85 => 2,
        _ => 3,
    };
    let mut name = synth_word(rng);
    for _ in 1..parts {
        name.push(match rng.below(100) {
            0..80 => '-',
            80..88 => '.',
            _ => '_',
        });
        name.push_str(&name_word(rng));
    }
    if rng.chance(80) {
        if rng.chance(500) {
            name.push('-');
        }
        let _ = write!(name, "{}", rng.below(100));
    }
    name
}

/// A name starting with a digit, like `3dmodel` or `42-cache`.
fn digit_name(rng: &mut Rng) -> String {
    let mut name = rng.below(10).to_string();
    if rng.chance(500) {
        name.push_str(&synth_word(rng));
    } else {
        let _ = write!(name, "{}-{}", rng.below(10), name_word(rng));
    }
    name
}

/// A legacy name with uppercase letters, like `JSONStream-12` or `BaseKit`.
fn uppercase_name(rng: &mut Rng) -> String {
    let mut name = String::new();
    for part in 0..1 + rng.below(2) {
        let word = name_word(rng);
        if part == 0 && rng.chance(300) {
            name.push_str(&word.to_ascii_uppercase());
        } else {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                name.push(first.to_ascii_uppercase());
                name.push_str(chars.as_str());
            }
        }
    }
    if rng.chance(500) {
        let _ = write!(name, "-{}", rng.below(100));
    }
    name
}

/// Generates `count` unique names, sorted in raw byte order.
fn generate_names(seed: u64, count: usize) -> Vec<String> {
    let mut rng = Rng(hash(seed, "names", &[TAG_NAMES]));
    // About 8 packages per scope on average, skewed so a few scopes are large.
    let scopes: Vec<String> = (0..(count * 15 / 100 / 8).max(1))
        .map(|i| match i {
            0 => "types".to_owned(),
            _ if rng.chance(200) => format!("{}-{}", synth_word(&mut rng), name_word(&mut rng)),
            _ => synth_word(&mut rng),
        })
        .collect();
    let mut seen = HashSet::with_capacity(count);
    while seen.len() < count {
        let name = match rng.below(1000) {
            0..20 => digit_name(&mut rng),
            20..170 => {
                let u = rng.unit();
                let scope = &scopes[((u * u * scopes.len() as f64) as usize).min(scopes.len() - 1)];
                format!("@{scope}/{}", lowercase_name(&mut rng))
            }
            170..180 => uppercase_name(&mut rng),
            _ => lowercase_name(&mut rng),
        };
        seen.insert(name);
    }
    let mut names: Vec<String> = seen.into_iter().collect();
    names.sort_unstable();
    names
}

/// Sorted names packed into one buffer (compact for millions of packages).
struct NameTable {
    buf: String,
    ends: Vec<usize>,
}

impl NameTable {
    fn new(names: &[String]) -> NameTable {
        let mut buf = String::with_capacity(names.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(names.len());
        for name in names {
            buf.push_str(name);
            ends.push(buf.len());
        }
        NameTable { buf, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, index: usize) -> &str {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.buf[start..self.ends[index]]
    }

    /// The number of leading names for which `pred` holds (`pred` must be monotone).
    fn partition_point(&self, pred: impl Fn(&str) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

// ---------------------------------------------------------------------------------------------
// Dates.

/// Converts days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Formats Unix milliseconds like npm: `2019-03-04T05:06:07.123Z`.
fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// Formats Unix milliseconds as an HTTP date: `Mon, 04 Mar 2019 05:06:07 GMT`.
fn http_date(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms / 1000;
    let days = secs / 86_400;
    let (y, mo, d) = civil_from_days(days as i64);
    let s = secs % 86_400;
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(mo - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

// ---------------------------------------------------------------------------------------------
// JSON helpers.

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A CouchDB-style error body.
fn error_body(error: &str, reason: &str) -> Vec<u8> {
    serde_json::json!({ "error": error, "reason": reason })
        .to_string()
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Documents.

/// One published version of a simulated package.
struct Version {
    number: String,
    time_ms: u64,
    digest: u64,
}

impl Version {
    /// Appends `"dist":{…}` (shasum, tarball, integrity) for this version of `name`.
    fn push_dist(&self, out: &mut String, name: &str) {
        let basename = name.rsplit('/').next().unwrap_or(name);
        out.push_str("\"dist\":{\"shasum\":\"");
        let _ = write!(
            out,
            "{:016x}{:016x}{:08x}",
            mix64(self.digest),
            mix64(self.digest ^ 1),
            mix64(self.digest ^ 2) as u32
        );
        let _ = write!(
            out,
            "\",\"tarball\":\"{TARBALL_HOST}/{name}/-/{basename}-{}.tgz\",\"integrity\":\"sha512-",
            self.number
        );
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for i in 0..86u64 {
            let word = mix64(self.digest.wrapping_add(16 + i / 10));
            out.push(char::from(B64[((word >> (6 * (i % 10))) & 63) as usize]));
        }
        out.push_str("==\"}");
    }
}

/// Everything a document is rendered from, derived from (seed, name, rev).
struct Plan<'r> {
    name: &'r str,
    rev: String,
    description: String,
    versions: Vec<Version>,
    created_ms: u64,
    modified_ms: u64,
    /// Target size of the full document.
    target: usize,
    /// Random draw choosing where in the filler the readme starts.
    readme_draw: u64,
}

impl Plan<'_> {
    fn latest(&self) -> &str {
        &self.versions[self.versions.len() - 1].number
    }

    /// The full document up to and including the opening quote of `readme`.
    fn full_head(&self) -> String {
        let name = self.name;
        let mut out = String::with_capacity(512 + self.versions.len() * 480);
        out.push_str("{\"_id\":");
        push_json_str(&mut out, name);
        out.push_str(",\"_rev\":");
        push_json_str(&mut out, &self.rev);
        out.push_str(",\"name\":");
        push_json_str(&mut out, name);
        out.push_str(",\"description\":");
        push_json_str(&mut out, &self.description);
        let _ = write!(
            out,
            ",\"dist-tags\":{{\"latest\":\"{}\"}},\"versions\":{{",
            self.latest()
        );
        for (i, v) in self.versions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{}\":{{\"name\":", v.number);
            push_json_str(&mut out, name);
            let _ = write!(out, ",\"version\":\"{}\",\"description\":", v.number);
            push_json_str(&mut out, &self.description);
            out.push_str(",\"main\":\"index.js\",\"license\":\"MIT\",\"_id\":");
            push_json_str(&mut out, &format!("{name}@{}", v.number));
            out.push(',');
            v.push_dist(&mut out, name);
            out.push('}');
        }
        let _ = write!(
            out,
            "}},\"time\":{{\"created\":\"{}\",\"modified\":\"{}\"",
            iso8601(self.created_ms),
            iso8601(self.modified_ms)
        );
        for v in &self.versions {
            let _ = write!(out, ",\"{}\":\"{}\"", v.number, iso8601(v.time_ms));
        }
        out.push_str(
            "},\"maintainers\":[{\"name\":\"sim\",\"email\":\"sim@registry.example\"}],\
             \"license\":\"MIT\",\"readmeFilename\":\"README.md\",\"readme\":\"",
        );
        out
    }

    /// The whole abbreviated document.
    fn abbreviated(&self) -> String {
        let name = self.name;
        let mut out = String::with_capacity(256 + self.versions.len() * 320);
        out.push_str("{\"name\":");
        push_json_str(&mut out, name);
        let _ = write!(
            out,
            ",\"modified\":\"{}\",\"dist-tags\":{{\"latest\":\"{}\"}},\"versions\":{{",
            iso8601(self.modified_ms),
            self.latest()
        );
        for (i, v) in self.versions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{}\":{{\"name\":", v.number);
            push_json_str(&mut out, name);
            let _ = write!(out, ",\"version\":\"{}\",", v.number);
            v.push_dist(&mut out, name);
            out.push('}');
        }
        out.push_str("}}");
        out
    }
}

/// The pieces of one document body: rendered head, a filler slice and a static tail.
struct DocParts {
    head: Bytes,
    /// A slice of the filler that ends on a [`CHUNK`] boundary (empty when abbreviated).
    readme: Bytes,
    /// Offset of `readme` in the filler.
    readme_offset: usize,
    tail: Bytes,
    modified_ms: u64,
}

impl DocParts {
    fn len(&self) -> usize {
        self.head.len() + self.readme.len() + self.tail.len()
    }

    fn to_vec(&self) -> Vec<u8> {
        [&self.head[..], &self.readme[..], &self.tail[..]].concat()
    }
}

/// Raw-deflates `input` with a fresh compressor (so the output can be concatenated with other
/// such pieces), ending with a sync flush or, if `finish`, with the final block.
fn deflate(input: &[u8], level: Compression, finish: bool) -> Vec<u8> {
    let flush = if finish {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut compress = Compress::new(level, false);
    let mut out = Vec::with_capacity(input.len() / 2 + 256);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&input[consumed..], &mut out, flush)
            .expect("deflating an in-memory buffer cannot fail");
        let done = if finish {
            status == Status::StreamEnd
        } else {
            compress.total_in() as usize == input.len() && out.len() < out.capacity()
        };
        if done {
            return out;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The registry data.

/// The deterministic data of a simulated registry: names, revisions and documents.
pub struct Registry {
    seed: u64,
    generation: u64,
    mean_bytes: usize,
    max_doc_bytes: usize,
    missing_every: usize,
    names: NameTable,
    rev_numbers: Vec<u32>,
    filler: Bytes,
    gzip_pieces: OnceLock<GzipPieces>,
}

/// Pre-compressed raw-deflate pieces shared by all gzip responses.
struct GzipPieces {
    chunks: Vec<Bytes>,
    small_chunks: Vec<Bytes>,
    tail: Bytes,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("seed", &self.seed)
            .field("generation", &self.generation)
            .field("packages", &self.len())
            .field("mean_bytes", &self.mean_bytes)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Builds the registry described by `cfg` (the server-only fields are ignored).
    pub fn new(cfg: &SimConfig) -> Registry {
        let seed = cfg.seed;
        let names = generate_names(seed, cfg.packages);
        let rev_numbers = names
            .iter()
            .map(|name| {
                let mut number = 1 + hash(seed, name, &[TAG_BASE_REV]) % 12;
                for step in 1..=cfg.generation {
                    let h = hash(seed, name, &[TAG_GEN_STEP, step]);
                    if h % 1000 < 50 {
                        number += 1 + (h >> 32) % 3;
                    }
                }
                u32::try_from(number).unwrap_or(u32::MAX)
            })
            .collect();
        let mean_bytes = cfg.mean_bytes.max(1);
        let max_doc_bytes = mean_bytes.saturating_mul(64).min(MAX_DOC_BYTES);
        let filler_len = max_doc_bytes.div_ceil(CHUNK) * CHUNK + CHUNK;
        Registry {
            seed,
            generation: cfg.generation,
            mean_bytes,
            max_doc_bytes,
            missing_every: cfg.missing_every,
            names: NameTable::new(&names),
            rev_numbers,
            filler: make_filler(seed, filler_len),
            gzip_pieces: OnceLock::new(),
        }
    }

    /// The number of packages.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no packages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The generation the revisions are computed for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All names in raw byte order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + Clone + '_ {
        (0..self.len()).map(move |i| self.names.get(i))
    }

    /// The name at `index` in byte order (panics if out of range).
    pub fn name(&self, index: usize) -> &str {
        self.names.get(index)
    }

    /// The position of `name` in byte order, if it is a package.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let i = self.names.partition_point(|n| n < name);
        (i < self.len() && self.names.get(i) == name).then_some(i)
    }

    /// The current revision of `name` (also for missing packages, which are listed).
    pub fn rev(&self, name: &str) -> Option<String> {
        self.index_of(name).map(|i| self.rev_at(i))
    }

    /// Whether `name` is listed in `_all_docs` but its packument answers 404.
    pub fn is_missing(&self, name: &str) -> bool {
        self.index_of(name).is_some_and(|i| self.missing_at(i))
    }

    /// The exact uncompressed body served for `name` (full or abbreviated), or `None` if the
    /// server answers 404 for it (unknown or missing).
    pub fn document(&self, name: &str, abbreviated: bool) -> Option<Vec<u8>> {
        self.served_index(name)
            .map(|i| self.parts(i, abbreviated).to_vec())
    }

    /// The length of [`Registry::document`] without building it.
    pub fn document_len(&self, name: &str, abbreviated: bool) -> Option<usize> {
        self.served_index(name)
            .map(|i| self.parts(i, abbreviated).len())
    }

    /// The quoted strong `ETag` served for `name` (full or abbreviated), `None` when 404.
    pub fn etag(&self, name: &str, abbreviated: bool) -> Option<String> {
        self.served_index(name)
            .map(|i| self.etag_at(i, abbreviated))
    }

    fn served_index(&self, name: &str) -> Option<usize> {
        self.index_of(name).filter(|&i| !self.missing_at(i))
    }

    fn missing_at(&self, index: usize) -> bool {
        self.missing_every > 0 && (index + 1).is_multiple_of(self.missing_every)
    }

    fn rev_hash(&self, index: usize) -> (u64, u64, u64) {
        let name = self.names.get(index);
        let number = u64::from(self.rev_numbers[index]);
        (
            number,
            hash(self.seed, name, &[TAG_REV_HASH, number, 0]),
            hash(self.seed, name, &[TAG_REV_HASH, number, 1]),
        )
    }

    fn rev_at(&self, index: usize) -> String {
        let mut out = String::with_capacity(40);
        self.push_rev(&mut out, index);
        out
    }

    fn push_rev(&self, out: &mut String, index: usize) {
        let (number, hi, lo) = self.rev_hash(index);
        let _ = write!(out, "{number}-{hi:016x}{lo:016x}");
    }

    fn etag_at(&self, index: usize, abbreviated: bool) -> String {
        let name = self.names.get(index);
        let number = u64::from(self.rev_numbers[index]);
        let h = hash(self.seed, name, &[TAG_ETAG, number, u64::from(abbreviated)]);
        format!("\"{h:016x}{}\"", if abbreviated { "-a" } else { "-f" })
    }

    /// Derives the rendering plan of the document at `index` for its current revision.
    fn plan(&self, index: usize) -> Plan<'_> {
        let name = self.names.get(index);
        let number = u64::from(self.rev_numbers[index]);
        let mut rng = Rng(hash(self.seed, name, &[TAG_DOC, number]));

        let mu = (self.mean_bytes as f64).ln() - SIZE_SIGMA * SIZE_SIGMA / 2.0;
        let size = (mu + SIZE_SIGMA * rng.normal()).exp();
        let target = (size as usize).min(self.max_doc_bytes);

        let words = 3 + rng.index(10);
        let description = (0..words)
            .map(|_| rng.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ");

        // Times between 2012 and mid-2025, versions spread evenly at random.
        const START_MS: u64 = 1_325_376_000_000; // 2012-01-01
        const END_MS: u64 = 1_748_736_000_000; // 2025-06-01
        let created_ms = START_MS + rng.below((END_MS - START_MS) * 4 / 5);
        let count = 1 + rng.below((target / 3000).clamp(1, 60) as u64);
        let step_ms = (END_MS - created_ms) / (count + 1);
        let (mut major, mut minor, mut patch) = (rng.below(2), rng.below(4), rng.below(5));
        let mut time_ms = created_ms;
        let versions = (0..count)
            .map(|_| {
                let version = Version {
                    number: format!("{major}.{minor}.{patch}"),
                    time_ms,
                    digest: rng.next(),
                };
                time_ms += 1 + rng.below(step_ms);
                match rng.below(100) {
                    0..60 => patch += 1,
                    60..90 => (minor, patch) = (minor + 1, 0),
                    _ => (major, minor, patch) = (major + 1, 0, 0),
                }
                version
            })
            .collect();
        Plan {
            name,
            rev: self.rev_at(index),
            description,
            versions,
            created_ms,
            modified_ms: time_ms,
            target,
            readme_draw: rng.next(),
        }
    }

    /// The pieces of the body served for the document at `index`.
    fn parts(&self, index: usize, abbreviated: bool) -> DocParts {
        let plan = self.plan(index);
        if abbreviated {
            return DocParts {
                head: Bytes::from(plan.abbreviated()),
                readme: Bytes::new(),
                readme_offset: 0,
                tail: Bytes::new(),
                modified_ms: plan.modified_ms,
            };
        }
        let head = plan.full_head();
        let readme_len = plan
            .target
            .saturating_sub(head.len() + FULL_TAIL.len())
            .min(self.filler.len() - CHUNK);
        // The readme ends on a chunk boundary, so gzip can use pre-compressed pieces for it.
        let whole = readme_len / CHUNK;
        let slots = (self.filler.len() / CHUNK - whole) as u64;
        let readme_offset = (1 + (plan.readme_draw % slots) as usize) * CHUNK - readme_len % CHUNK;
        DocParts {
            head: Bytes::from(head),
            readme: self.filler.slice(readme_offset..readme_offset + readme_len),
            readme_offset,
            tail: Bytes::from_static(FULL_TAIL),
            modified_ms: plan.modified_ms,
        }
    }

    /// The filler pre-compressed in independent raw-deflate pieces of both chunk sizes, and
    /// the final piece for [`FULL_TAIL`].
    fn gzip_pieces(&self) -> &GzipPieces {
        let compress = |size| {
            self.filler
                .chunks(size)
                .map(|c| Bytes::from(deflate(c, Compression::default(), false)))
                .collect()
        };
        self.gzip_pieces.get_or_init(|| GzipPieces {
            chunks: compress(CHUNK),
            small_chunks: compress(SMALL_CHUNK),
            tail: Bytes::from(deflate(FULL_TAIL, Compression::default(), true)),
        })
    }

    /// A gzip encoding of `parts`: the head and at most [`SMALL_CHUNK`] bytes of the readme
    /// are compressed live, the rest of the readme and the tail are pre-compressed pieces.
    fn gzip(&self, parts: &DocParts) -> Vec<Bytes> {
        let mut crc = Crc::new();
        for part in [&parts.head, &parts.readme, &parts.tail] {
            crc.update(part);
        }
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.sum().to_le_bytes());
        trailer.extend_from_slice(&crc.amount().to_le_bytes());

        let mut out = vec![Bytes::from_static(&GZIP_HEADER)];
        if parts.tail.is_empty() {
            // Abbreviated: no readme, compressed in one go.
            out.push(Bytes::from(deflate(&parts.head, Compression::fast(), true)));
        } else {
            // The readme ends on a chunk boundary: compress up to the next small-chunk
            // boundary, then use small chunks up to a chunk boundary, then whole chunks.
            let (start, end) = (
                parts.readme_offset,
                parts.readme_offset + parts.readme.len(),
            );
            debug_assert_eq!(end % CHUNK, 0);
            let live_end = start.next_multiple_of(SMALL_CHUNK).min(end);
            let small_end = live_end.next_multiple_of(CHUNK).min(end);
            let live = [&parts.head[..], &self.filler[start..live_end]].concat();
            out.push(Bytes::from(deflate(&live, Compression::fast(), false)));
            let pieces = self.gzip_pieces();
            out.extend_from_slice(
                &pieces.small_chunks[live_end / SMALL_CHUNK..small_end / SMALL_CHUNK],
            );
            out.extend_from_slice(&pieces.chunks[small_end / CHUNK..end / CHUNK]);
            out.push(pieces.tail.clone());
        }
        out.push(Bytes::from(trailer));
        out
    }

    /// Renders an `_all_docs` page: rows `start..end` of at most `limit` rows.
    fn all_docs_page(&self, query: &AllDocsQuery) -> String {
        let start = query
            .start
            .as_deref()
            .map_or(0, |key| self.names.partition_point(|n| n < key));
        let end = query.end.as_deref().map_or(self.len(), |key| {
            if query.inclusive_end {
                self.names.partition_point(|n| n <= key)
            } else {
                self.names.partition_point(|n| n < key)
            }
        });
        let rows = start..end.max(start).min(start.saturating_add(query.limit));
        let mut out = String::with_capacity(64 + rows.len() * 128);
        let _ = writeln!(
            out,
            "{{\"total_rows\":{},\"offset\":{start},\"rows\":[",
            self.len()
        );
        for i in rows {
            if i > start {
                out.push_str(",\n");
            }
            let name = self.names.get(i);
            out.push_str("{\"id\":");
            push_json_str(&mut out, name);
            out.push_str(",\"key\":");
            push_json_str(&mut out, name);
            out.push_str(",\"value\":{\"rev\":\"");
            self.push_rev(&mut out, i);
            out.push_str("\"}}");
        }
        out.push_str("\n]}\n");
        out
    }
}

/// Renders `len` bytes of ASCII prose that needs no JSON escaping (so any slice is valid).
fn make_filler(seed: u64, len: usize) -> Bytes {
    let mut rng = Rng(hash(seed, "filler", &[TAG_FILLER]));
    let mut text = String::with_capacity(len + 64);
    let mut sentence = 0;
    while text.len() < len {
        if sentence == 0 && rng.chance(100) {
            text.push_str("## ");
        }
        if rng.chance(100) {
            text.push_str(&synth_word(&mut rng));
        } else {
            text.push_str(rng.pick(WORDS));
        }
        sentence += 1;
        if sentence > 5 + rng.below(12) {
            text.push_str(". ");
            sentence = 0;
        } else {
            text.push(' ');
        }
    }
    text.truncate(len);
    Bytes::from(text)
}

/// Parsed `_all_docs` query parameters.
struct AllDocsQuery {
    start: Option<String>,
    end: Option<String>,
    inclusive_end: bool,
    limit: usize,
}

impl AllDocsQuery {
    /// Parses a query string; the error is the reason for a 400.
    fn parse(query: &str) -> Result<AllDocsQuery, String> {
        let mut parsed = AllDocsQuery {
            start: None,
            end: None,
            inclusive_end: true,
            limit: DEFAULT_LIMIT,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "startkey" | "start_key" => parsed.start = Some(parse_key(&key, &value)?),
                "endkey" | "end_key" => parsed.end = Some(parse_key(&key, &value)?),
                "limit" => {
                    parsed.limit = value.parse().map_err(|_| {
                        format!("limit must be a non-negative integer, got {value:?}")
                    })?;
                    if parsed.limit > MAX_LIMIT {
                        return Err(format!("limit must be at most {MAX_LIMIT}"));
                    }
                }
                "inclusive_end" => parsed.inclusive_end = parse_bool(&key, &value)?,
                "skip" => return Err("skip is not supported; page with startkey".to_owned()),
                "descending" | "include_docs" if parse_bool(&key, &value)? => {
                    return Err(format!("{key}=true is not supported"));
                }
                "key" | "keys" | "startkey_docid" | "endkey_docid" => {
                    return Err(format!("{key} is not supported"));
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

fn parse_key(param: &str, value: &str) -> Result<String, String> {
    serde_json::from_str(value).map_err(|_| format!("{param} must be a JSON string, got {value:?}"))
}

fn parse_bool(param: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{param} must be true or false, got {value:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Counters.

/// A copy of the server's counters, as served at `/-/sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// `_all_docs` requests (including rejected ones).
    pub all_docs_requests: u64,
    /// Packument GETs, whatever their answer (200, 304, 404, 429, 503).
    pub packument_requests: u64,
    /// Packuments answered 200.
    pub packuments_served: u64,
    /// Packuments answered 304.
    pub not_modified: u64,
    /// Packuments answered 404 (unknown or missing).
    pub not_found: u64,
    /// Packuments answered 429.
    pub throttled: u64,
    /// Packuments answered 503 by `fail_first`.
    pub failed_injected: u64,
    /// Uncompressed body bytes of the packuments answered 200.
    pub bytes_sent: u64,
    /// The most requests (of any kind but the stats) that arrived within one second: the
    /// maximum over every sliding one-second window since the server started.
    #[serde(default)]
    pub max_requests_per_second: u64,
    /// Per-package request counts (non-zero only), present only with `?names=1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<BTreeMap<String, u64>>,
}

#[derive(Default)]
struct Counters {
    all_docs_requests: AtomicU64,
    packument_requests: AtomicU64,
    packuments_served: AtomicU64,
    not_modified: AtomicU64,
    not_found: AtomicU64,
    throttled: AtomicU64,
    failed_injected: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Adds `n` to a counter and returns the new value.
fn bump(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, Ordering::Relaxed) + n
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// A response body made of a few ready `Bytes` pieces with an exact length.
struct PartsBody {
    parts: VecDeque<Bytes>,
    remaining: u64,
}

impl PartsBody {
    fn new(parts: impl IntoIterator<Item = Bytes>) -> PartsBody {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        PartsBody { parts, remaining }
    }

    fn empty() -> PartsBody {
        PartsBody::new([])
    }
}

impl Body for PartsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.parts.pop_front().map(|part| {
            this.remaining -= part.len() as u64;
            Ok(Frame::data(part))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<PartsBody> {
    let mut response = Response::new(PartsBody::new([body.into()]));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: StatusCode, error: &str, reason: &str) -> Response<PartsBody> {
    json_response(status, error_body(error, reason))
}

fn not_found() -> Response<PartsBody> {
    error_response(StatusCode::NOT_FOUND, "not_found", "missing")
}

/// Whether the client asked for the abbreviated (install) representation.
fn wants_abbreviated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(ABBREVIATED_CONTENT_TYPE))
}

/// Whether `Accept-Encoding` allows gzip (a `gzip`, `x-gzip` or `*` coding with q > 0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut params = item.split(';').map(str::trim);
            let coding = params.next().unwrap_or_default();
            let q_zero = params.any(|p| {
                p.strip_prefix("q=")
                    .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            ["gzip", "x-gzip", "*"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c))
                && !q_zero
        })
}

/// Whether `If-None-Match` matches `etag` (weak comparison, `*` matches anything).
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// State shared by all connections of a server.
struct Shared {
    cfg: SimConfig,
    registry: Arc<Registry>,
    counters: Counters,
    per_name: Vec<AtomicU64>,
    /// When each request (but the stats) arrived, in order.
    arrivals: std::sync::Mutex<Vec<std::time::Instant>>,
    /// `throttle_every`, changeable while serving.
    throttle_every: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn snapshot(&self, with_names: bool) -> StatsSnapshot {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            all_docs_requests: get(&c.all_docs_requests),
            packument_requests: get(&c.packument_requests),
            packuments_served: get(&c.packuments_served),
            not_modified: get(&c.not_modified),
            not_found: get(&c.not_found),
            throttled: get(&c.throttled),
            failed_injected: get(&c.failed_injected),
            bytes_sent: get(&c.bytes_sent),
            max_requests_per_second: self.max_in_any_second(),
            names: with_names.then(|| {
                self.per_name
                    .iter()
                    .enumerate()
                    .filter_map(|(i, count)| {
                        let count = get(count);
                        (count > 0).then(|| (self.registry.name(i).to_owned(), count))
                    })
                    .collect()
            }),
        }
    }

    /// The most arrivals in any window `[t, t + 1 s)`.
    fn max_in_any_second(&self) -> u64 {
        let arrivals = self.arrivals.lock().expect("arrivals");
        let mut start = 0;
        let mut most = 0;
        for (end, at) in arrivals.iter().enumerate() {
            while at.duration_since(arrivals[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            most = most.max(end + 1 - start);
        }
        most as u64
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<PartsBody> {
        if req.uri().path() != STATS_PATH {
            let now = std::time::Instant::now();
            self.arrivals.lock().expect("arrivals").push(now);
        }
        if req.method() != Method::GET {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Only GET allowed",
            );
        }
        let path = req.uri().path();
        if path == STATS_PATH {
            let with_names =
                url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .any(|(k, v)| k == "names" && (v == "1" || v == "true"));
            let body = serde_json::to_vec(&self.snapshot(with_names)).unwrap_or_default();
            return json_response(StatusCode::OK, body);
        }
        let rest = match path.strip_prefix(self.cfg.prefix.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return not_found(),
        };
        match rest {
            "" | "/" => self.db_info(),
            "/_all_docs" => self.all_docs(req.uri().query().unwrap_or("")),
            _ => self.packument(&rest[1..], req.headers()).await,
        }
    }

    fn db_info(&self) -> Response<PartsBody> {
        let n = self.registry.len() as u64;
        let body = serde_json::json!({
            "db_name": "registry",
            "doc_count": n,
            "doc_del_count": 0,
            "update_seq": n * (self.registry.generation() + 1),
        });
        json_response(StatusCode::OK, body.to_string())
    }

    fn all_docs(&self, query: &str) -> Response<PartsBody> {
        bump(&self.counters.all_docs_requests, 1);
        match AllDocsQuery::parse(query) {
            Ok(mut query) => {
                if self.cfg.page_cap > 0 {
                    query.limit = query.limit.min(self.cfg.page_cap);
                }
                json_response(StatusCode::OK, self.registry.all_docs_page(&query))
            }
            Err(reason) => error_response(StatusCode::BAD_REQUEST, "bad_request", &reason),
        }
    }

    async fn packument(&self, raw_name: &str, headers: &HeaderMap) -> Response<PartsBody> {
        let c = &self.counters;
        let request_number = bump(&c.packument_requests, 1);
        let registry = &self.registry;
        let index = percent_decode_str(raw_name)
            .decode_utf8()
            .ok()
            .and_then(|name| registry.index_of(&name));
        let name_requests = index.map_or(0, |i| bump(&self.per_name[i], 1));

        if self.cfg.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.cfg.latency_ms)).await;
        }
        let throttle_every = self.throttle_every.load(Ordering::Relaxed) as u64;
        if throttle_every > 0 && request_number.is_multiple_of(throttle_every) {
            bump(&c.throttled, 1);
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "throttled",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
            return response;
        }
        let Some(index) = index.filter(|&i| !registry.missing_at(i)) else {
            bump(&c.not_found, 1);
            return not_found();
        };
        if name_requests <= u64::from(self.cfg.fail_first) {
            bump(&c.failed_injected, 1);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "injected failure",
            );
        }

        let abbreviated = wants_abbreviated(headers);
        let etag = registry.etag_at(index, abbreviated);
        let parts = registry.parts(index, abbreviated);
        let last_modified = http_date(parts.modified_ms);
        let not_modified = etag_matches(headers, &etag);
        let gzip = !not_modified && self.cfg.gzip && accepts_gzip(headers);
        let mut response = if not_modified {
            bump(&c.not_modified, 1);
            let mut response = Response::new(PartsBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            bump(&c.packuments_served, 1);
            bump(&c.bytes_sent, parts.len() as u64);
            Response::new(if gzip {
                PartsBody::new(registry.gzip(&parts))
            } else {
                PartsBody::new([parts.head, parts.readme, parts.tail])
            })
        };
        let h = response.headers_mut();
        let content_type = if abbreviated {
            ABBREVIATED_CONTENT_TYPE
        } else {
            "application/json"
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Ok(value) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, value);
        }
        if let Ok(value) = HeaderValue::from_str(&last_modified) {
            h.insert(header::LAST_MODIFIED, value);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        );
        h.insert(
            header::VARY,
            HeaderValue::from_static("Accept, Accept-Encoding"),
        );
        response
    }
}

/// A running simulator server. Dropping it also stops it (without waiting).
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// A simulator of `packages` documents of mean `mean_bytes` (otherwise the defaults)
    /// on a free loopback port.
    pub async fn loopback(packages: usize, mean_bytes: usize) -> anyhow::Result<SimServer> {
        let cfg = SimConfig {
            packages,
            mean_bytes,
            ..Default::default()
        };
        Self::start("127.0.0.1:0".parse()?, cfg).await
    }

    /// Builds the registry for `cfg`, binds `listen` (port 0 picks a free port) and serves it
    /// on a spawned task.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> anyhow::Result<SimServer> {
        let cfg = SimConfig {
            prefix: normalize_prefix(&cfg.prefix),
            ..cfg
        };
        let registry = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || {
                let registry = Registry::new(&cfg);
                if cfg.gzip {
                    registry.gzip_pieces();
                }
                Arc::new(registry)
            })
            .await
            .context("building the simulated registry")?
        };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            per_name: (0..registry.len()).map(|_| AtomicU64::new(0)).collect(),
            throttle_every: cfg.throttle_every.into(),
            cfg,
            registry,
            counters: Counters::default(),
            arrivals: Default::default(),
        });
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(serve(listener, shared.clone(), stopped));
        tracing::info!(%addr, packages = shared.registry.len(), "registry-sim listening");
        Ok(SimServer {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL including the prefix, e.g. `http://127.0.0.1:5984/registry`.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}{}", self.shared.cfg.prefix)
    }

    /// The configuration being served (with the prefix normalized).
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// The data being served.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// A copy of the counters (without per-name counts).
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.snapshot(false)
    }

    /// From now on, answers every `every`-th packument request 429 (0: none), as
    /// [`SimConfig::throttle_every`] does from the start.
    pub fn set_throttle_every(&self, every: usize) {
        self.shared.throttle_every.store(every, Ordering::Relaxed);
    }

    /// The most requests that arrived within any one second (sliding windows).
    pub fn max_requests_per_second(&self) -> u64 {
        self.shared.max_in_any_second()
    }

    /// How many packument requests named `name` (0 for names that are not packages).
    pub fn requests_for(&self, name: &str) -> u64 {
        self.shared
            .registry
            .index_of(name)
            .map_or(0, |i| self.shared.per_name[i].load(Ordering::Relaxed))
    }

    /// Stops accepting, closes all connections and waits for the server task to end.
    pub async fn shutdown(self) {
        let SimServer { stop, task, .. } = self;
        drop(stop);
        if let Err(e) = task.await {
            tracing::warn!("registry-sim task ended abnormally: {e}");
        }
    }
}

/// Accepts connections until `stopped` closes, then aborts the open ones.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let builder = builder.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(shared.handle(req).await) }
                        });
                        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_npm_and_http() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_551_675_967_123), "2019-03-04T05:06:07.123Z");
        assert_eq!(
            http_date(1_551_675_967_123),
            "Mon, 04 Mar 2019 05:06:07 GMT"
        );
        assert_eq!(http_date(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("registry/"), "/registry");
        assert_eq!(normalize_prefix("/a/b"), "/a/b");
    }
}
