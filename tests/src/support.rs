//! Running fetchers over real loopback sockets, building leases, and reading results back.

use std::net::SocketAddr;

use alldocs_fetcher::{serve::grpc, source::npmrc::Credentials, FetchService};
use alldocs_proto::v1::{
    fetch_event::Event, fetcher_client::FetcherClient, lease::Work, Accept, IndexWork, Lease,
    PackumentRequest, PackumentWork,
};
use anyhow::Result;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A `fetcher` gRPC server on `127.0.0.1:<free port>`, stopped when dropped.
pub struct FetcherServer {
    pub addr: SocketAddr,
    pub service: FetchService,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl FetcherServer {
    pub async fn start(credentials: Credentials) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = FetchService::new(credentials);
        let task = tokio::spawn(grpc::serve_fetcher(listener, service.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            service,
            stop: Some(stop),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Result<FetcherClient<Channel>> {
        Ok(FetcherClient::connect(self.url()).await?)
    }

    /// Stops the server and waits for it to finish its streams.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

impl Drop for FetcherServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A lease with fast retries, suitable for loopback tests.
pub fn lease(id: &str, store_url: &str, work: Work) -> Lease {
    Lease {
        lease_id: id.to_string(),
        fencing_token: 1,
        deadline_unix_ms: 0,
        replicate_origin: String::new(),
        registry: String::new(),
        store_url: store_url.to_string(),
        accept: Accept::Full as i32,
        rate_limit: 0.0,
        concurrency: 8,
        max_retries: 4,
        retry_base_ms: 5,
        max_document_bytes: 0,
        work: Some(work),
        ..Lease::default()
    }
}

/// An index lease over `[start, end)`.
pub fn index_lease(
    origin: &str,
    store_url: &str,
    start: Option<&str>,
    end: Option<&str>,
    page_size: u32,
) -> Lease {
    let mut l = lease(
        "index",
        store_url,
        Work::Index(IndexWork {
            partition: String::new(),
            start: start.map(str::to_string),
            end: end.map(str::to_string),
            page_size,
        }),
    );
    l.replicate_origin = origin.to_string();
    l
}

/// A packument lease for `(name, rev)` pairs.
pub fn packument_lease(registry: &str, store_url: &str, items: &[(String, String)]) -> Lease {
    let mut l = lease(
        "packuments",
        store_url,
        Work::Packuments(PackumentWork {
            items: items
                .iter()
                .map(|(name, rev)| PackumentRequest {
                    name: name.clone(),
                    rev: rev.clone(),
                })
                .collect(),
        }),
    );
    l.registry = registry.to_string();
    l
}

/// Runs a lease over gRPC and collects every event until the stream ends.
pub async fn fetch_all(client: &mut FetcherClient<Channel>, lease: Lease) -> Result<Vec<Event>> {
    let mut stream = client.fetch(lease).await?.into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await? {
        events.extend(ev.event);
    }
    Ok(events)
}

/// The `(id, rev)` rows of all `IndexRows` events, in order.
pub fn rows_of(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IndexRows(r) => Some(r.rows.iter().map(|r| (r.id.clone(), r.rev.clone()))),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Parses an `index/<partition>.jsonl` object's bytes.
pub fn parse_index(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(bytes)?;
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            Ok((
                v["id"].as_str().unwrap_or_default().to_string(),
                v["rev"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// Every `(id, rev)` of a CouchDB database in one unpaged `_all_docs` request (pouchdb
/// has no page cap): the independent truth to compare the fetcher's paging against.
pub async fn all_docs_unpaged(db_url: &str) -> Result<Vec<(String, String)>> {
    let v: serde_json::Value = reqwest::get(format!("{db_url}/_all_docs"))
        .await?
        .json()
        .await?;
    Ok(v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["value"]["rev"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}
