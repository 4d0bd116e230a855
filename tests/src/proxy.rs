//! A counting HTTP proxy on loopback: forwards every GET to an upstream (which a test may
//! switch, say to a database whose feed was reset) and counts the requests for each path,
//! so a test can tell how often each packument was fetched.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

/// A running proxy.
pub struct CountingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<String>,
    client: reqwest::Client,
    /// Requests per decoded path (without the query).
    counts: Mutex<BTreeMap<String, u64>>,
}

impl CountingProxy {
    /// Forwards to `upstream` (`http://host:port/prefix`), on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream.trim_end_matches('/').to_string()),
            client: reqwest::Client::new(),
            counts: Mutex::default(),
        });
        let forwarding = shared.clone();
        let task = crate::loopback::serve_http(listener, move |req| {
            let shared = forwarding.clone();
            async move { shared.forward(req).await }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`: the upstream's URL with this proxy's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Forwards to another upstream from now on.
    pub fn switch_to(&self, upstream: &str) {
        *self.shared.upstream.lock().unwrap() = upstream.trim_end_matches('/').to_string();
    }

    /// Requests so far for each path (percent-decoded, without the query).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.shared.counts.lock().unwrap().clone()
    }

    /// Requests so far for the packument of `name` (`/<name>`, scoped names encoded).
    pub fn fetches_of(&self, name: &str) -> u64 {
        self.counts().get(&format!("/{name}")).copied().unwrap_or(0)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    async fn forward(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = percent_encoding::percent_decode_str(req.uri().path())
            .decode_utf8_lossy()
            .into_owned();
        *self.counts.lock().unwrap().entry(path).or_default() += 1;
        let target = format!(
            "{}{}",
            self.upstream.lock().unwrap(),
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        let mut upstream = self.client.get(target);
        if let Some(accept) = req.headers().get(hyper::header::ACCEPT) {
            upstream = upstream.header(hyper::header::ACCEPT, accept);
        }
        let answer = async {
            let resp = upstream.send().await?;
            let status = resp.status().as_u16();
            let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
            Ok::<_, reqwest::Error>((status, content_type, resp.bytes().await?))
        };
        match answer.await {
            Ok((status, content_type, body)) => {
                let mut out = Response::builder().status(status);
                if let Some(ct) = content_type {
                    out = out.header(hyper::header::CONTENT_TYPE, ct.as_bytes());
                }
                out.body(Full::new(body)).expect("valid response")
            }
            Err(e) => Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Full::new(Bytes::from(e.to_string())))
                .expect("valid response"),
        }
    }
}
