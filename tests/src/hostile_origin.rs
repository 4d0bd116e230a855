//! A purpose-built hostile `_all_docs` origin: 30 names paged as CouchDB would, but for one
//! chosen misbehaviour; huge bodies are generated as they stream, never held.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::{body::Frame, service::service_fn, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};

/// The names served: `n00` … `n29`.
pub fn names() -> Vec<String> {
    (0..30).map(|i| format!("n{i:02}")).collect()
}

/// How the origin misbehaves. Every page carries CouchDB's `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Pages correctly (the control case).
    None,
    /// Ignores `startkey`: every page starts at the first name in range, `limit` rows.
    IgnoresStartkey,
    /// Asked from the last id of page 2 (the 3rd page, with the origin's page size 10),
    /// serves page 2 again: the `limit` rows ending at `startkey`.
    RepeatsPage,
    /// After the first page, skips 5 rows past `startkey`; its `offset` tells the truth.
    SkipsRows,
    /// The 3rd row of the first page has a `_rev` of this many bytes.
    HugeRev(u64),
    /// The 3rd row of the first page has an id (and key) of this many bytes.
    HugeId(u64),
    /// The first page is this many bytes: each row's value carries padding.
    HugePage(u64),
}

/// A running hostile origin.
pub struct HostileOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    hostile: Hostile,
    names: Vec<String>,
    /// The query of every `_all_docs` request, in order.
    queries: Mutex<Vec<String>>,
    /// Body bytes handed to hyper for sending.
    sent: AtomicU64,
}

impl HostileOrigin {
    /// Serves on a free loopback port.
    pub async fn start(hostile: Hostile) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            hostile,
            names: names(),
            queries: Mutex::default(),
            sent: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The query strings of the `_all_docs` requests so far.
    pub fn queries(&self) -> Vec<String> {
        self.shared.queries.lock().unwrap().clone()
    }

    /// Body bytes the origin has sent (or had buffered for sending) so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }
}

impl Drop for HostileOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let shared = shared.clone();
        let builder = builder.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(&req)) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A part of a body: bytes, or a chunk sent `times` over.
enum Piece {
    Once(String),
    Repeat(Bytes, u64),
}

/// The parameters of one `_all_docs` request.
struct Query {
    startkey: Option<String>,
    endkey: Option<String>,
    limit: usize,
}

impl Query {
    fn parse(query: &str) -> Self {
        let mut q = Query {
            startkey: None,
            endkey: None,
            limit: 1000,
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let key = || serde_json::from_str::<String>(&v).ok();
            match k.as_ref() {
                "startkey" => q.startkey = key(),
                "endkey" => q.endkey = key(),
                "limit" => q.limit = v.parse().unwrap_or(1000),
                _ => {}
            }
        }
        q
    }
}

impl Shared {
    fn handle(self: &Arc<Self>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        if req.uri().path() != "/_all_docs" {
            return respond(StatusCode::NOT_FOUND, vec![Piece::Once("{}".into())], None);
        }
        let query = req.uri().query().unwrap_or("").to_string();
        self.queries.lock().unwrap().push(query.clone());
        let pieces = self.page(&Query::parse(&query));
        respond(StatusCode::OK, pieces, Some(self.clone()))
    }

    /// The rows a well-behaved origin would serve: (index of the first, count).
    fn window(&self, q: &Query) -> (usize, usize) {
        let from = q
            .startkey
            .as_deref()
            .map_or(0, |s| self.names.partition_point(|n| n.as_str() < s));
        let to = q.endkey.as_deref().map_or(self.names.len(), |e| {
            self.names.partition_point(|n| n.as_str() < e)
        });
        (from, to.saturating_sub(from).min(q.limit))
    }

    fn page(&self, q: &Query) -> Vec<Piece> {
        let (mut from, count) = self.window(q);
        let end = from + count;
        let first_page = from == 0;
        match self.hostile {
            Hostile::IgnoresStartkey if count > 0 => from = 0,
            Hostile::RepeatsPage if q.startkey.as_deref() >= Some("n19") => {
                from = (from + 1).saturating_sub(q.limit);
            }
            Hostile::SkipsRows if !first_page => from = (from + 6).min(self.names.len()),
            _ => {}
        }
        let end = match self.hostile {
            Hostile::IgnoresStartkey | Hostile::RepeatsPage => from + q.limit.min(count.max(1)),
            _ => end.max(from),
        }
        .min(self.names.len());
        let rows = if count == 0 { from..from } else { from..end };
        let mut out = vec![Piece::Once(format!(
            "{{\"total_rows\":{},\"offset\":{from},\"rows\":[\n",
            self.names.len()
        ))];
        for (n, i) in rows.enumerate() {
            if n > 0 {
                out.push(Piece::Once(",\n".into()));
            }
            let huge = first_page && n == 2;
            out.extend(self.row(&self.names[i], huge, count));
        }
        out.push(Piece::Once("\n]}\n".into()));
        out
    }

    fn row(&self, name: &str, huge: bool, rows: usize) -> Vec<Piece> {
        let filled = |open: String, byte: u8, len: u64, close: &str| {
            vec![
                Piece::Once(open),
                Piece::Repeat(Bytes::from(vec![byte; 64 << 10]), len >> 16),
                Piece::Once(close.to_string()),
            ]
        };
        match self.hostile {
            Hostile::HugeRev(len) if huge => filled(
                format!("{{\"id\":\"{name}\",\"key\":\"{name}\",\"value\":{{\"rev\":\"1-"),
                b'f',
                len,
                "\"}}",
            ),
            Hostile::HugeId(len) => {
                if huge {
                    filled(
                        "{\"id\":\"n".into(),
                        b'n',
                        len,
                        "\",\"value\":{\"rev\":\"1-a\"}}",
                    )
                } else {
                    vec![Piece::Once(row_json(name))]
                }
            }
            Hostile::HugePage(len) => {
                let per_row = len / rows.max(1) as u64;
                let pad = Bytes::from(format!("\"{}\",", "p".repeat(1022)));
                vec![
                    Piece::Once(format!(
                        "{{\"id\":\"{name}\",\"key\":\"{name}\",\"value\":{{\"rev\":\"1-a\",\"pad\":["
                    )),
                    Piece::Repeat(pad, per_row / 1024),
                    Piece::Once("0]}}".into()),
                ]
            }
            _ => vec![Piece::Once(row_json(name))],
        }
    }
}

fn row_json(name: &str) -> String {
    format!("{{\"id\":\"{name}\",\"key\":\"{name}\",\"value\":{{\"rev\":\"1-{name}\"}}}}")
}

/// A response whose body streams `pieces`, counting what goes out.
fn respond(status: StatusCode, pieces: Vec<Piece>, count: Option<Arc<Shared>>) -> Response<Body> {
    let chunks = futures::stream::iter(pieces).flat_map(|piece| match piece {
        Piece::Once(s) => futures::stream::repeat(Bytes::from(s)).take(1).boxed(),
        Piece::Repeat(chunk, times) => futures::stream::repeat(chunk).take(times as usize).boxed(),
    });
    let frames = chunks.map(move |chunk| {
        if let Some(shared) = &count {
            shared.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok::<_, Infallible>(Frame::data(chunk))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
