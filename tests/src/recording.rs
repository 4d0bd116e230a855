//! A registry on loopback that records every request it receives (path, `authorization`
//! header) and how many were in flight at once; routes can redirect anywhere or delay.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, service::service_fn, Request, Response, StatusCode};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use percent_encoding::percent_decode_str;
use tokio::{net::TcpListener, task::JoinHandle};

/// One request as the origin received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    /// The raw path (and query) asked for.
    pub path: String,
    /// The `authorization` header, if any.
    pub authorization: Option<String>,
}

/// What the origin does for a path.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with `{"name":<last segment, decoded>,"_rev":"1-a"}`.
    Document,
    /// 302 to this `Location`.
    Redirect(String),
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running origin; stopped when dropped.
pub struct RecordingOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl RecordingOrigin {
    /// Serves every path with a document on a free port of `ip`.
    pub async fn start(ip: &str) -> anyhow::Result<Self> {
        Self::with_routes(&format!("{ip}:0"), Vec::new(), Duration::ZERO).await
    }

    /// Serves on `addr`: the first route whose prefix starts the path answers (else a
    /// document), each answer held back `delay` (to see how many requests overlap).
    pub async fn with_routes(
        addr: &str,
        routes: Vec<(String, Answer)>,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let shared = (state.clone(), Arc::new(routes));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (state, routes) = shared.clone();
                        async move { Ok::<_, Infallible>(answer(req, &state, &routes, delay).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// The most requests that were being answered at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    state: &State,
    routes: &[(String, Answer)],
    delay: Duration,
) -> Response<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    state.seen.lock().expect("seen").push(Seen {
        path: path.clone(),
        authorization,
    });
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(delay).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let route = routes
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, a)| a.clone());
    match route.unwrap_or(Answer::Document) {
        Answer::Redirect(location) => Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location)
            .body(Full::new(Bytes::new()))
            .expect("a valid response"),
        Answer::Document => {
            let last = path.rsplit('/').next().unwrap_or_default();
            let name = percent_decode_str(last).decode_utf8_lossy();
            let doc = serde_json::json!({"name": name, "_rev": "1-a"}).to_string();
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(doc)))
                .expect("a valid response")
        }
    }
}
