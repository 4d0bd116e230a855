//! The fetcher over a real gRPC socket against the registry simulator (and, for tokens, a
//! tiny raw HTTP server), all on 127.0.0.1: exact index paging, byte-exact packuments,
//! retries, the rate limit, disconnects, deadlines, refused leases and credentials.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use alldocs_fetcher::{
    source::npmrc::{Credentials, Secret},
    store::keys::{in_range, partition_name},
    store::{index_path, packument_path, Store},
};
use alldocs_proto::v1::{
    fetch_event::Event, Accept, IndexDone, ItemFailed, Lease, LeaseSummary, PackumentStored,
};
use alldocs_tests::{
    sim::{SimConfig, SimServer},
    support::{fetch_all, index_lease, packument_lease, parse_index, rows_of, FetcherServer},
};
use futures::TryStreamExt as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    task::JoinHandle,
};

/// A safety net for awaits that should finish in milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers.

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A simulator with small documents (fast in debug builds).
fn small(packages: usize) -> SimConfig {
    SimConfig {
        packages,
        mean_bytes: 2_000,
        ..SimConfig::default()
    }
}

async fn sim(cfg: SimConfig) -> anyhow::Result<SimServer> {
    SimServer::start(any_port(), cfg).await
}

/// A simulator answering each packument after 50 ms, a fetcher, and a lease for all 300
/// of its names: slow enough to act on mid-lease.
async fn slow_lease(
    tag: &str,
) -> anyhow::Result<(SimServer, FetcherServer, Vec<(String, String)>, Lease)> {
    let sim = sim(SimConfig {
        latency_ms: 50,
        ..small(300)
    })
    .await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let items = listing(&sim);
    let lease = packument_lease(&sim.url(), &memory_store(tag), &items);
    Ok((sim, fetcher, items, lease))
}

/// A fresh `memory://` store URL, unique within this test process.
fn memory_store(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "memory://fetcher-sim-{tag}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every `(name, rev)` the simulator lists, in `_all_docs` order.
fn listing(sim: &SimServer) -> Vec<(String, String)> {
    let registry = sim.registry();
    registry
        .names()
        .map(|n| {
            (
                n.to_string(),
                registry.rev(n).expect("a listed name has a rev"),
            )
        })
        .collect()
}

/// The summary that must end every stream.
fn summary(events: &[Event]) -> LeaseSummary {
    match events.last() {
        Some(Event::Summary(s)) => s.clone(),
        other => panic!("the stream ends with a summary, not {other:?}"),
    }
}

fn stored(events: &[Event]) -> Vec<PackumentStored> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Stored(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn failures(events: &[Event]) -> Vec<ItemFailed> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Failed(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn index_done(events: &[Event]) -> Option<IndexDone> {
    events.iter().find_map(|e| match e {
        Event::IndexDone(d) => Some(d.clone()),
        _ => None,
    })
}

/// Every object path in a store.
async fn object_paths(store: &Store) -> anyhow::Result<Vec<String>> {
    let metas: Vec<_> = store.object_store().list(None).try_collect().await?;
    Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
}

/// Pivots that sit exactly on existing ids (a scoped one, an uppercase one, lowercase
/// ones), plus a pair that bounds an empty partition: `[id + "!", next id)` holds nothing,
/// as `!` sorts before every character of an npm name.
fn pivots_for(names: &[String]) -> Vec<String> {
    let scoped: Vec<&String> = names.iter().filter(|n| n.starts_with('@')).collect();
    let upper = names
        .iter()
        .find(|n| n.as_bytes()[0].is_ascii_uppercase())
        .expect("the simulator lists legacy uppercase names");
    let lower: Vec<&String> = names
        .iter()
        .filter(|n| n.as_bytes()[0].is_ascii_lowercase())
        .collect();
    assert!(scoped.len() > 4 && lower.len() > 10);
    let (a, b) = (lower[lower.len() / 2], lower[lower.len() / 2 + 1]);
    let mut pivots = vec![
        scoped[scoped.len() / 2].clone(),
        upper.clone(),
        lower[lower.len() / 4].clone(),
        format!("{a}!"),
        b.clone(),
        lower[lower.len() * 3 / 4].clone(),
    ];
    pivots.sort_unstable();
    pivots.dedup();
    pivots
}

/// Runs every partition of `pivots` at `page_size` and checks the stream, the stored index
/// objects and `IndexDone`; returns the concatenated rows and how many partitions were empty.
async fn index_all_partitions(
    fetcher: &FetcherServer,
    sim: &SimServer,
    pivots: &[String],
    page_size: u32,
) -> anyhow::Result<(Vec<(String, String)>, usize)> {
    let mut client = fetcher.client().await?;
    let store_url = memory_store(&format!("index-p{page_size}"));
    let store = Store::open(&store_url)?;
    let mut union = Vec::new();
    let mut empty = 0;
    for p in alldocs_fetcher::store::keys::partitions(pivots) {
        let (start, end) = (p.start.as_deref(), p.end.as_deref());
        let lease = index_lease(&sim.url(), &store_url, start, end, page_size);
        let events = fetch_all(&mut client, lease).await?;
        let rows = rows_of(&events);
        let what = format!("page size {page_size}, partition {start:?}..{end:?}");
        let done = index_done(&events).unwrap_or_else(|| panic!("{what} finished: {events:?}"));
        let expected = sim
            .registry()
            .names()
            .filter(|n| in_range(n, start, end))
            .count();
        assert_eq!(rows.len(), expected, "{what}: every row of the range");
        assert_eq!(done.rows as usize, rows.len(), "{what}: IndexDone.rows");
        assert_eq!(summary(&events).rows, done.rows, "{what}: Summary.rows");
        let name = partition_name(start, end);
        assert_eq!(done.partition, name);
        assert_eq!(done.uri, store.uri(&index_path(&name)), "{what}");
        let object = store.get(&index_path(&name)).await?;
        assert_eq!(done.bytes as usize, object.len(), "{what}: IndexDone.bytes");
        assert_eq!(
            parse_index(&object)?,
            rows,
            "{what}: index object = streamed rows"
        );
        if rows.is_empty() {
            empty += 1;
        }
        union.extend(rows);
    }
    Ok((union, empty))
}

/// A raw HTTP/1.1 server on 127.0.0.1 that answers every request with one fixed response
/// and records each request's head (request line and lowercased header names).
struct RawServer {
    url: String,
    requests: Arc<Mutex<Vec<RawRequest>>>,
    task: JoinHandle<()>,
}

#[derive(Clone, Debug)]
struct RawRequest {
    path: String,
    headers: Vec<(String, String)>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const TINY_DOC: &str = r#"{"name":"x","_rev":"1-a"}"#;

impl RawServer {
    /// Serves `head` (a status, then any extra header lines) with [`TINY_DOC`] as the
    /// body; `prefix` is the registry's path.
    async fn start(head: impl Into<String>, prefix: &str) -> anyhow::Result<Self> {
        Self::routes(vec![(String::new(), head.into())], prefix).await
    }

    /// Serves, for each request, the `head` of the first route whose path prefix matches
    /// (404 if none does).
    async fn routes(routes: Vec<(String, String)>, prefix: &str) -> anyhow::Result<Self> {
        let head: Arc<Vec<(String, String)>> = Arc::new(routes);
        let listener = TcpListener::bind(any_port()).await?;
        let url = format!("http://{}{prefix}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (log, head) = (log.clone(), head.clone());
                conns.spawn(async move {
                    let _ = serve_raw(stream, &head, log).await;
                });
            }
        });
        Ok(Self {
            url,
            requests,
            task,
        })
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        // Dropping the accept loop's JoinSet aborts its connections too.
        self.task.abort();
    }
}

/// Answers requests on one (keep-alive) connection until the client closes it.
async fn serve_raw(
    stream: tokio::net::TcpStream,
    routes: &[(String, String)],
    log: Arc<Mutex<Vec<RawRequest>>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let head = routes
            .iter()
            .find(|(route, _)| path.starts_with(route.as_str()))
            .map_or("404 Not Found", |(_, head)| head.as_str());
        log.lock().unwrap().push(RawRequest { path, headers });
        let response = format!(
            "HTTP/1.1 {head}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TINY_DOC}",
            TINY_DOC.len()
        );
        write.write_all(response.as_bytes()).await?;
    }
}

// ---------------------------------------------------------------------------------------
// 1. Index.

/// Users get every package exactly once: the partitions of a plan (pivots on existing ids,
/// an empty partition, open ends), paged at 1, 7 or 10,000 rows under an origin with a path
/// prefix, concatenate to the registry's full listing with its revisions, in order; each
/// `index/<partition>.jsonl` holds exactly the rows streamed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_partitions_concatenate_to_the_full_listing() -> anyhow::Result<()> {
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let big = sim(SimConfig {
        prefix: "/registry".into(),
        ..small(3_000)
    })
    .await?;
    let little = sim(SimConfig {
        prefix: "/registry".into(),
        seed: 7,
        ..small(300)
    })
    .await?;
    assert!(big.url().ends_with("/registry"));

    for (sim, page_size) in [(&little, 1u32), (&big, 7), (&big, 10_000)] {
        let truth = listing(sim);
        let names: Vec<String> = truth.iter().map(|(n, _)| n.clone()).collect();
        let pivots = pivots_for(&names);
        assert!(
            pivots.iter().filter(|p| names.contains(p)).count() >= 5,
            "most pivots are existing ids: {pivots:?}"
        );
        let requests_before = sim.stats().all_docs_requests;
        let (union, empty) = index_all_partitions(&fetcher, sim, &pivots, page_size).await?;
        assert_eq!(union.len(), truth.len(), "page size {page_size}: row count");
        assert!(
            union == truth,
            "page size {page_size}: the partitions concatenate to the listing, in order"
        );
        let ids: HashSet<&String> = union.iter().map(|(id, _)| id).collect();
        assert_eq!(
            ids.len(),
            union.len(),
            "page size {page_size}: each id once"
        );
        assert_eq!(
            empty, 1,
            "page size {page_size}: the empty partition completes"
        );
        let requests = sim.stats().all_docs_requests - requests_before;
        if page_size == 1 {
            assert!(requests as usize >= truth.len(), "one row per page");
        }
    }
    fetcher.shutdown().await
}

/// Users lose no rows when the endpoint (or a proxy in front of it) silently answers
/// fewer rows than `limit` asks for: a short page is not taken for the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_capping_pages_below_the_limit_loses_no_rows() -> anyhow::Result<()> {
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let sim = sim(SimConfig {
        page_cap: 97,
        ..small(1_000)
    })
    .await?;
    let truth = listing(&sim);
    let names: Vec<String> = truth.iter().map(|(n, _)| n.clone()).collect();
    let (union, _) = index_all_partitions(&fetcher, &sim, &pivots_for(&names), 10_000).await?;
    assert_eq!(
        union.len(),
        truth.len(),
        "every row, though each page held at most 97"
    );
    assert!(
        union == truth,
        "the partitions concatenate to the listing, in order"
    );
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 2. Packuments.

/// Users get each packument exactly as the registry serves it (gzip decoded), scoped names
/// nested under their scope, unpublished names reported as missing (404) rather than
/// failed, and a summary whose counts add up; abbreviated leases store the corgi documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packuments_are_stored_byte_for_byte_and_missing_ones_reported() -> anyhow::Result<()> {
    let sim = sim(SimConfig {
        missing_every: 9,
        prefix: "/npm".into(),
        ..small(400)
    })
    .await?;
    assert!(sim.config().gzip, "the simulator gzips by default");
    let registry = sim.registry().clone();
    let mut items = listing(&sim);
    items.push(("never-published-xyz".into(), "1-0".into()));
    let scoped = items.iter().filter(|(n, _)| n.starts_with('@')).count();
    let absent: HashSet<&str> = items
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| registry.document(n, false).is_none())
        .collect();
    assert!(scoped > 20, "{scoped} scoped names");
    assert!(absent.len() > 40, "{} missing names", absent.len());
    assert!(items
        .iter()
        .any(|(n, _)| n.starts_with('@') && registry.is_missing(n)));

    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let mut client = fetcher.client().await?;
    for accept in [Accept::Full, Accept::Abbreviated] {
        let abbreviated = accept == Accept::Abbreviated;
        let store_url = memory_store("packuments");
        let store = Store::open(&store_url)?;
        let mut lease = packument_lease(&sim.url(), &store_url, &items);
        lease.accept = accept as i32;
        let events = fetch_all(&mut client, lease).await?;

        assert!(failures(&events).is_empty(), "{:?}", failures(&events));
        let stored = stored(&events);
        let mut bytes = 0;
        for s in &stored {
            let served = registry
                .document(&s.name, abbreviated)
                .unwrap_or_else(|| panic!("{} was stored but is not served", s.name));
            let object = store.get(&packument_path(&s.name)).await?;
            assert!(
                object[..] == served[..],
                "{} ({accept:?}) stored byte-for-byte: {} bytes stored, {} served",
                s.name,
                object.len(),
                served.len()
            );
            assert_eq!(s.bytes as usize, served.len(), "{}", s.name);
            assert_eq!(s.uri, store.uri(&packument_path(&s.name)));
            assert_eq!(
                Some(&s.rev),
                items.iter().find(|(n, _)| *n == s.name).map(|i| &i.1)
            );
            assert_eq!(Some(s.etag.clone()), registry.etag(&s.name, abbreviated));
            if !abbreviated {
                assert_eq!(Some(s.doc_rev.clone()), registry.rev(&s.name));
            }
            bytes += s.bytes;
        }
        let stored_names: HashSet<&str> = stored.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(stored_names.len(), items.len() - absent.len(), "{accept:?}");

        let missing: Vec<(String, u32)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Missing(m) => Some((m.name.clone(), m.http_status)),
                _ => None,
            })
            .collect();
        let missing_names: HashSet<&str> = missing.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            missing_names, absent,
            "{accept:?}: exactly the 404s are missing"
        );
        assert!(missing.iter().all(|(_, status)| *status == 404));
        for name in &absent {
            assert!(store.get(&packument_path(name)).await.is_err(), "{name}");
        }
        let scoped_object = stored.iter().find(|s| s.name.starts_with('@')).unwrap();
        assert!(
            scoped_object
                .uri
                .ends_with(&format!("/packuments/{}.json", scoped_object.name)),
            "a scoped name is packuments/@scope/name.json: {}",
            scoped_object.uri
        );

        let summary = summary(&events);
        assert_eq!(
            (
                summary.stored,
                summary.missing,
                summary.failed,
                summary.unfinished
            ),
            (stored.len() as u64, missing.len() as u64, 0, 0),
            "{accept:?}"
        );
        assert_eq!(summary.bytes, bytes);
        assert_eq!(summary.requests, items.len() as u64);
        assert_eq!(summary.retries, 0);
        assert!(!summary.deadline_exceeded);
    }
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 3. Retries.

/// Users get every packument despite transient 503s: each name is tried until it works
/// (here the third time), and the summary counts the retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_stored() -> anyhow::Result<()> {
    let sim = sim(SimConfig {
        fail_first: 2,
        ..small(60)
    })
    .await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let items = listing(&sim);
    let store_url = memory_store("retries");
    let events = fetch_all(
        &mut fetcher.client().await?,
        packument_lease(&sim.url(), &store_url, &items),
    )
    .await?;
    assert!(failures(&events).is_empty(), "{:?}", failures(&events));
    assert_eq!(stored(&events).len(), items.len());
    let store = Store::open(&store_url)?;
    for (name, _) in &items {
        let object = store.get(&packument_path(name)).await?;
        assert!(object[..] == sim.registry().document(name, false).unwrap()[..]);
        assert_eq!(
            sim.requests_for(name),
            3,
            "{name}: two 503s, then the document"
        );
    }
    let summary = summary(&events);
    assert_eq!(summary.stored, items.len() as u64);
    assert!(summary.retries > 0);
    assert_eq!(summary.retries, 2 * items.len() as u64);
    assert_eq!(summary.requests, 3 * items.len() as u64);
    assert_eq!(sim.stats().failed_injected, 2 * items.len() as u64);
    fetcher.shutdown().await
}

/// Users get every packument from a registry that throttles (429, `Retry-After: 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_requests_are_retried_until_stored() -> anyhow::Result<()> {
    let sim = sim(SimConfig {
        throttle_every: 3,
        ..small(90)
    })
    .await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let items = listing(&sim);
    let store_url = memory_store("throttled");
    let mut lease = packument_lease(&sim.url(), &store_url, &items);
    lease.max_retries = 8;
    let events = fetch_all(&mut fetcher.client().await?, lease).await?;
    assert!(failures(&events).is_empty(), "{:?}", failures(&events));
    let store = Store::open(&store_url)?;
    for (name, _) in &items {
        let object = store.get(&packument_path(name)).await?;
        assert!(object[..] == sim.registry().document(name, false).unwrap()[..]);
    }
    let throttled = sim.stats().throttled;
    assert!(throttled > 0, "the simulator throttled");
    let summary = summary(&events);
    assert_eq!(summary.stored, items.len() as u64);
    assert_eq!(summary.retries, throttled, "each 429 was retried once");
    fetcher.shutdown().await
}

/// Users see a retryable failure naming the 503 when the registry keeps failing past the
/// lease's retry budget, and no partial or stray object is left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failures_are_reported_as_retryable_and_store_nothing() -> anyhow::Result<()> {
    let sim = sim(SimConfig {
        fail_first: 5,
        ..small(20)
    })
    .await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let items = listing(&sim);
    let store_url = memory_store("failing");
    let mut lease = packument_lease(&sim.url(), &store_url, &items);
    lease.max_retries = 2;
    let events = fetch_all(&mut fetcher.client().await?, lease).await?;

    let failed = failures(&events);
    assert_eq!(failed.len(), items.len(), "{events:?}");
    for f in &failed {
        assert!(f.retryable, "{f:?}");
        assert_eq!(f.http_status, 503, "{f:?}");
        assert!(
            f.reason.contains("503"),
            "the reason names the status: {f:?}"
        );
        assert_eq!(
            sim.requests_for(&f.name),
            3,
            "{}: one try and two retries",
            f.name
        );
    }
    let names: HashSet<&str> = failed.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names.len(), items.len());
    assert!(stored(&events).is_empty());
    let store = Store::open(&store_url)?;
    assert_eq!(
        object_paths(&store).await?,
        Vec::<String>::new(),
        "no object left behind"
    );
    let summary = summary(&events);
    assert_eq!(
        (summary.stored, summary.failed, summary.unfinished),
        (0, items.len() as u64, 0)
    );
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 4. Rate limit.

/// Users can rely on a lease's rate limit (a lease without a grid, as an older coordinator
/// sends): 40 requests at 50/s, no burst, cannot finish faster than the budget allows (a
/// lower bound only; this is not a speed target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_spaces_requests() -> anyhow::Result<()> {
    let sim = sim(small(40)).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let mut client = fetcher.client().await?;
    let items = listing(&sim);
    let mut lease = packument_lease(&sim.url(), &memory_store("rate"), &items);
    lease.rate_limit = 50.0;
    lease.concurrency = 4;
    let started = Instant::now();
    let events = fetch_all(&mut client, lease).await?;
    let elapsed = started.elapsed();
    assert_eq!(summary(&events).stored, 40);
    assert_eq!(sim.stats().packument_requests, 40);
    // 39 intervals of 20 ms = 0.78 s at the least.
    assert!(
        elapsed >= Duration::from_millis(500),
        "40 requests at 50/s took only {elapsed:?}"
    );
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 5. Client disconnect.

/// Users (the coordinator) can walk away from a lease: when its stream is dropped the
/// fetcher stops sending requests to the registry at once instead of finishing the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_stops_the_lease() -> anyhow::Result<()> {
    let (sim, fetcher, items, mut lease) = slow_lease("dropped").await?;
    lease.concurrency = 2;

    let mut active = fetcher.service.active_leases();
    let mut client = fetcher.client().await?;
    let mut stream = client.fetch(lease).await?.into_inner();
    let mut seen = 0;
    while seen < 3 {
        match stream.message().await?.and_then(|e| e.event) {
            Some(Event::Stored(_)) => seen += 1,
            other => panic!("expected a stored packument, got {other:?}"),
        }
    }
    assert_eq!(*active.borrow(), 1, "the lease is running");
    drop(stream);
    drop(client);

    tokio::time::timeout(PATIENCE, active.wait_for(|n| *n == 0))
        .await
        .expect("the lease stops when its client goes away")?;
    let after_stop = sim.stats().packument_requests;
    assert!(
        after_stop < 100,
        "{after_stop} of 300 packuments were requested after the client left early"
    );

    // Let time pass on events, not a sleep: one-name leases against the same (slow)
    // simulator. Requests the dropped lease had already written when it stopped (at most
    // its concurrency) may still arrive during the first; after that, only each probe's
    // own request may be added.
    let probe = |store: &str| packument_lease(&sim.url(), &memory_store(store), &items[..1]);
    let events = fetch_all(&mut fetcher.client().await?, probe("probe-1")).await?;
    assert_eq!(summary(&events).stored, 1);
    let settled = sim.stats().packument_requests;
    assert!(
        settled <= after_stop + 1 + 2,
        "{} requests arrived after the lease stopped, more than its 2 in flight and the probe",
        settled - after_stop
    );
    let events = fetch_all(&mut fetcher.client().await?, probe("probe-2")).await?;
    assert_eq!(summary(&events).stored, 1);
    tokio::time::timeout(PATIENCE, active.wait_for(|n| *n == 0))
        .await
        .expect("the probe leases end")?;
    assert_eq!(
        sim.stats().packument_requests,
        settled + 1,
        "no request of the dropped lease was sent after it stopped"
    );
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 6. Deadline.

/// Users get a lease back on time: when its deadline passes the stream ends with a summary
/// that says so and counts the work not done, so it can be leased again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_at_its_deadline_with_its_unfinished_work_counted() -> anyhow::Result<()> {
    let (_sim, fetcher, _, mut lease) = slow_lease("deadline").await?;
    lease.concurrency = 1;
    lease.deadline_unix_ms = alldocs_proto::now_unix_ms() + 300;
    let started = Instant::now();
    let events = tokio::time::timeout(PATIENCE, fetch_all(&mut fetcher.client().await?, lease))
        .await
        .expect("the stream ends near the deadline")?;
    let elapsed = started.elapsed();
    let summary = summary(&events);
    assert!(summary.deadline_exceeded, "{summary:?}");
    assert!(summary.unfinished > 0, "{summary:?}");
    assert_eq!(summary.stored, stored(&events).len() as u64);
    assert_eq!((summary.missing, summary.failed), (0, 0));
    assert_eq!(summary.stored + summary.unfinished, 300, "{summary:?}");
    // 300 names at 50 ms each, one at a time, would take 15 s.
    assert!(elapsed < Duration::from_secs(10), "ended after {elapsed:?}");
    fetcher.shutdown().await
}

/// On Cloud Run a stopping fetcher gets SIGTERM and 10 s: told to stop, it ends every
/// running lease's stream at once with a summary counting the work not done (not as a
/// deadline), so the coordinator hands that work out again right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_fetcher_ends_its_leases_cleanly() -> anyhow::Result<()> {
    let (_sim, fetcher, _, mut lease) = slow_lease("stop").await?;
    lease.concurrency = 2;
    let mut client = fetcher.client().await?;
    let mut stream = client.fetch(lease).await?.into_inner();
    // Wait until the lease is under way, then stop the fetcher.
    let first = stream.message().await?.and_then(|e| e.event);
    assert!(matches!(first, Some(Event::Stored(_))), "{first:?}");
    fetcher.service.stop();
    let mut events = vec![first.unwrap()];
    let rest = tokio::time::timeout(PATIENCE, async {
        let mut rest = Vec::new();
        while let Some(ev) = stream.message().await? {
            rest.extend(ev.event);
        }
        anyhow::Ok(rest)
    })
    .await
    .expect("the stream ends soon after stop")?;
    events.extend(rest);
    let summary = summary(&events);
    assert!(!summary.deadline_exceeded, "{summary:?}");
    assert!(summary.unfinished > 0, "{summary:?}");
    assert_eq!(summary.stored, stored(&events).len() as u64);
    assert_eq!(summary.stored + summary.unfinished, 300, "{summary:?}");
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 7. Invalid leases.

/// Users (operators) get an immediate InvalidArgument saying what is wrong with a lease that
/// cannot be worked, and nothing is sent to the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_leases_are_refused_with_a_reason() -> anyhow::Result<()> {
    let sim = sim(small(10)).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let mut client = fetcher.client().await?;
    let items = listing(&sim);
    let store_url = memory_store("invalid");

    let mut no_work = packument_lease(&sim.url(), &store_url, &items);
    no_work.work = None;
    let mut bad_registry = packument_lease("registry.example/npm", &store_url, &items);
    bad_registry.lease_id = "bad-registry".into();
    let ftp_registry = packument_lease("ftp://registry.example", &store_url, &items);
    let bad_origin = index_lease("file:///etc", &store_url, None, None, 0);
    let bad_store = packument_lease(&sim.url(), "ftp://x", &items);
    let backwards = index_lease(&sim.url(), &store_url, Some("b"), Some("a"), 0);
    let empty_range = index_lease(&sim.url(), &store_url, Some("a"), Some("a"), 0);

    let cases: [(Lease, &[&str]); 7] = [
        (no_work, &["no work"]),
        (
            bad_registry,
            &["registry", "not an http(s) URL", "bad-registry"],
        ),
        (ftp_registry, &["registry", "not an http(s) URL"]),
        (bad_origin, &["replicate_origin", "not an http(s) URL"]),
        (bad_store, &["unknown store scheme", "ftp://"]),
        (backwards, &["start `b` is not before its end `a`"]),
        (empty_range, &["start `a` is not before its end `a`"]),
    ];
    for (lease, expected) in cases {
        let status = client
            .fetch(lease.clone())
            .await
            .map(|_| ())
            .expect_err(&format!("{lease:?} is refused"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        for text in expected {
            assert!(
                status.message().contains(text),
                "`{}` says `{text}`",
                status.message()
            );
        }
    }
    assert_eq!(*fetcher.service.active_leases().borrow(), 0);
    let stats = sim.stats();
    assert_eq!((stats.packument_requests, stats.all_docs_requests), (0, 0));
    assert!(object_paths(&Store::open(&store_url)?).await?.is_empty());
    fetcher.shutdown().await
}

// ---------------------------------------------------------------------------------------
// 8. Tokens.

/// Users of private registries are authenticated with their token, which goes only to its
/// own registry (not to another one, nor across a redirect) and never shows up in a
/// failure's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_go_only_to_their_registry_and_never_into_reasons() -> anyhow::Result<()> {
    const TOKEN: &str = "s3cret-token";
    let private = RawServer::start("200 OK", "/npm").await?;
    let public = RawServer::start("200 OK", "").await?;
    let refusing = RawServer::start("401 Unauthorized", "").await?;
    let elsewhere = RawServer::start("200 OK", "").await?;
    let redirecting =
        RawServer::start(format!("302 Found\r\nlocation: {}/x", elsewhere.url), "").await?;
    let mut credentials = Credentials::new();
    for server in [&private, &refusing, &redirecting] {
        credentials.insert(&server.url, Secret::new(TOKEN));
    }
    let fetcher = FetcherServer::start(credentials).await?;
    let mut client = fetcher.client().await?;
    let items = vec![("x".to_string(), "1-a".to_string())];

    // The private registry receives the token, under its own path prefix.
    let store_url = memory_store("tokens");
    let events = fetch_all(
        &mut client,
        packument_lease(&private.url, &store_url, &items),
    )
    .await?;
    let stored = stored(&events);
    assert_eq!(stored.len(), 1, "{events:?}");
    assert_eq!(stored[0].doc_rev, "1-a");
    let object = Store::open(&store_url)?.get(&packument_path("x")).await?;
    assert_eq!(&object[..], TINY_DOC.as_bytes());
    let seen = private.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/npm/x");
    assert_eq!(seen[0].header("authorization"), Some("Bearer s3cret-token"));

    // Another registry gets no authorization at all.
    let events = fetch_all(
        &mut client,
        packument_lease(&public.url, &memory_store("tokens"), &items),
    )
    .await?;
    assert_eq!(summary(&events).stored, 1, "{events:?}");
    let seen = public.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), None, "{seen:?}");
    assert!(!format!("{seen:?}").contains(TOKEN));

    // A 401 is final and its reason does not leak the token.
    let events = fetch_all(
        &mut client,
        packument_lease(&refusing.url, &memory_store("tokens"), &items),
    )
    .await?;
    let failed = failures(&events);
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0].http_status, 401);
    assert!(!failed[0].retryable, "{:?}", failed[0]);
    assert!(failed[0].reason.contains("401"), "{:?}", failed[0]);
    assert!(!format!("{events:?}").contains(TOKEN), "{events:?}");
    let seen = refusing.requests();
    assert_eq!(seen.len(), 1, "a 401 is not retried");
    assert_eq!(seen[0].header("authorization"), Some("Bearer s3cret-token"));

    // A registry that redirects to another host does not pass the token on.
    let events = fetch_all(
        &mut client,
        packument_lease(&redirecting.url, &memory_store("tokens"), &items),
    )
    .await?;
    assert_eq!(summary(&events).stored, 1, "{events:?}");
    let seen = redirecting.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("authorization"), Some("Bearer s3cret-token"));
    let seen = elsewhere.requests();
    assert_eq!(seen.len(), 1, "the redirect was followed");
    assert_eq!(seen[0].header("authorization"), None, "{seen:?}");
    fetcher.shutdown().await
}

/// Users whose token is scoped to a registry path (`//host/npm/:_authToken`) can rely on
/// it staying there: a redirect within the path carries it, a redirect to another path on
/// the same host or to another host does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_carries_the_token_only_within_its_path() -> anyhow::Result<()> {
    const TOKEN: &str = "path-scoped-token";
    let elsewhere = RawServer::start("200 OK", "").await?;
    let route = |path: &str, head: String| (path.to_string(), head);
    let registry = RawServer::routes(
        vec![
            route("/npm/moved/", "200 OK".into()),
            route("/npm/a", "302 Found\r\nlocation: /npm/moved/a".into()),
            route(
                "/npm/b",
                "301 Moved Permanently\r\nlocation: /other/b".into(),
            ),
            route(
                "/npm/c",
                format!("307 Temporary Redirect\r\nlocation: {}/c", elsewhere.url),
            ),
            route("/other/", "200 OK".into()),
        ],
        "/npm",
    )
    .await?;
    let mut credentials = Credentials::new();
    credentials.insert(&registry.url, Secret::new(TOKEN));
    let fetcher = FetcherServer::start(credentials).await?;
    let mut client = fetcher.client().await?;
    let items: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| (n.to_string(), "1-a".to_string()))
        .collect();
    let mut lease = packument_lease(&registry.url, &memory_store("redirects"), &items);
    lease.concurrency = 1;
    let events = fetch_all(&mut client, lease).await?;
    assert_eq!(
        summary(&events).stored,
        3,
        "every redirect was followed: {events:?}"
    );

    let mut seen: Vec<(String, Option<String>)> = registry
        .requests()
        .iter()
        .chain(elsewhere.requests().iter())
        .map(|r| (r.path.clone(), r.header("authorization").map(str::to_owned)))
        .collect();
    seen.sort();
    let bearer = Some(format!("Bearer {TOKEN}"));
    assert_eq!(
        seen,
        vec![
            ("/c".to_string(), None),
            ("/npm/a".to_string(), bearer.clone()),
            ("/npm/b".to_string(), bearer.clone()),
            ("/npm/c".to_string(), bearer.clone()),
            ("/npm/moved/a".to_string(), bearer.clone()),
            ("/other/b".to_string(), None),
        ],
        "the token goes to its own path only"
    );
    fetcher.shutdown().await
}
