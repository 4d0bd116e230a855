//! The scheduler against a scripted fake `alldocs.v1.Fetcher` on `127.0.0.1:0` (real gRPC
//! over a real socket, a real SQLite checkpoint), in the style of linkerd2-proxy's control
//! plane tests: each lease gets a script — answer honestly, in any order, break the stream
//! after N events, refuse, never answer, or replay events for work another lease holds —
//! and every test ends with exact checkpoint totals.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use alldocs_coordinator::{
    checkpoint::{Checkpoint, Counts, RunIdentity},
    fleet::fetchers::FetcherHandle,
    fleet::lease::Settings,
    fleet::rates::Stats,
    plan,
    run::scheduler::Scheduler,
};
use alldocs_proto::v1::{
    fetch_event::Event,
    fetcher_server::{Fetcher, FetcherServer},
    lease::Work,
    Accept, FetchEvent, IndexDone, IndexRow, IndexRows, Lease, LeaseSummary, PackumentStored,
    RunState,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// What the fake does with one lease.
#[derive(Clone, Debug)]
enum Script {
    /// Every event, in order, then the summary.
    Honest,
    /// Every event in reverse order, the summary first.
    Reversed,
    /// The first N events, then the stream breaks.
    BreakAfter(usize),
    /// `INVALID_ARGUMENT`: the fetcher looked at the lease and will not do it.
    Refuse,
    /// Accepts the call and never sends anything.
    Silent,
    /// First claims the previous packument lease's items (and rows for a partition it does
    /// not hold) as its own, then answers honestly — once that lease has answered.
    ReplayOther,
    /// Reports that the origin throttled (429), then answers honestly.
    Throttled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Packuments,
}

/// A lease as the fake received it.
#[derive(Clone, Debug)]
struct Seen {
    token: u64,
    kind: Kind,
    items: Vec<String>,
    /// The lease's pace: its share of the rate, its grid, and its slot on it.
    rate: f64,
    grid: (u64, u64),
    slot: u32,
    /// Whether a lease still in flight held the same slot when this one arrived.
    slot_clash: bool,
}

type Scripts = dyn Fn(Kind, usize) -> Script + Send + Sync;

/// The fake fetcher: a fixed registry, a script per lease, and a record of every lease.
#[derive(Clone)]
struct Fake {
    registry: Arc<BTreeMap<String, String>>,
    scripts: Arc<Scripts>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// How many packument leases have sent everything (for ReplayOther's ordering).
    answered: Arc<watch::Sender<usize>>,
    /// Grid slots of the leases being answered now.
    slots_in_flight: Arc<Mutex<Vec<u32>>>,
}

impl Fake {
    /// Records the lease; returns its kind and how many of that kind came before it.
    fn record(&self, lease: &Lease) -> (Kind, usize) {
        let (kind, items) = match &lease.work {
            Some(Work::Index(w)) => (Kind::Index, vec![w.partition.clone()]),
            Some(Work::Packuments(p)) => (
                Kind::Packuments,
                p.items.iter().map(|i| i.name.clone()).collect(),
            ),
            None => panic!("a lease without work"),
        };
        let slot = lease.rate_grid_slot;
        let slot_clash = {
            let mut in_flight = self.slots_in_flight.lock().unwrap();
            let clash = lease.rate_grid_period_us > 0 && in_flight.contains(&slot);
            in_flight.push(slot);
            clash
        };
        let mut seen = self.seen.lock().unwrap();
        let n = seen.iter().filter(|s| s.kind == kind).count();
        seen.push(Seen {
            token: lease.fencing_token,
            kind,
            items,
            rate: lease.rate_limit,
            grid: (lease.rate_grid_period_us, lease.rate_grid_phase_us),
            slot,
            slot_clash,
        });
        (kind, n)
    }

    /// What an honest fetcher would send for this lease (summary excluded).
    fn events(&self, lease: &Lease) -> Vec<Event> {
        match lease.work.as_ref().expect("work") {
            Work::Index(w) => {
                let rows: Vec<IndexRow> = self
                    .registry
                    .iter()
                    .filter(|(id, _)| {
                        alldocs_fetcher::store::keys::in_range(
                            id,
                            w.start.as_deref(),
                            w.end.as_deref(),
                        )
                    })
                    .map(|(id, rev)| IndexRow {
                        id: id.clone(),
                        rev: rev.clone(),
                    })
                    .collect();
                let n = rows.len() as u64;
                // Two events of rows, so a break can fall between them.
                let half = rows.len() / 2;
                vec![
                    index_rows(&w.partition, rows[..half].to_vec()),
                    index_rows(&w.partition, rows[half..].to_vec()),
                    Event::IndexDone(IndexDone {
                        partition: w.partition.clone(),
                        rows: n,
                        uri: format!("fake://index/{}", w.partition),
                        ..Default::default()
                    }),
                ]
            }
            Work::Packuments(p) => p
                .items
                .iter()
                .map(|i| stored(&i.name, &i.rev, lease.fencing_token))
                .collect(),
        }
    }

    /// Events claiming the previous packument lease's items, and rows for the first
    /// partition, as if this lease held them.
    fn replay_of_other(&self, token: u64) -> Vec<Event> {
        let seen = self.seen.lock().unwrap();
        let other = seen
            .iter()
            .rev()
            .find(|s| s.kind == Kind::Packuments && s.token != token)
            .expect("an earlier packument lease");
        let mut events: Vec<Event> = other
            .items
            .iter()
            .map(|name| stored(name, "9-stale", token))
            .collect();
        let first_partition = seen.iter().find(|s| s.kind == Kind::Index).unwrap();
        events.push(index_rows(
            &first_partition.items[0],
            vec![IndexRow {
                id: "ghost".into(),
                rev: "1-ghost".into(),
            }],
        ));
        events
    }
}

fn index_rows(partition: &str, rows: Vec<IndexRow>) -> Event {
    Event::IndexRows(IndexRows {
        partition: partition.to_string(),
        rows,
    })
}

fn stored(name: &str, rev: &str, token: u64) -> Event {
    Event::Stored(PackumentStored {
        name: name.to_string(),
        rev: rev.to_string(),
        uri: uri(token, name),
        bytes: 100,
        doc_rev: rev.to_string(),
        etag: String::new(),
        ..Default::default()
    })
}

/// Where the fake says lease `token` stored `name`.
fn uri(token: u64, name: &str) -> String {
    format!("fake://{token}/{name}")
}

fn summary(lease: &Lease, unfinished: u64) -> Event {
    Event::Summary(LeaseSummary {
        lease_id: lease.lease_id.clone(),
        fencing_token: lease.fencing_token,
        unfinished,
        ..Default::default()
    })
}

type Tx = mpsc::Sender<Result<FetchEvent, Status>>;

async fn send_all(tx: &Tx, events: Vec<Event>) {
    for e in events {
        let _ = tx.send(Ok(FetchEvent { event: Some(e) })).await;
    }
}

#[tonic::async_trait]
impl Fetcher for Fake {
    type FetchStream = ReceiverStream<Result<FetchEvent, Status>>;

    async fn fetch(&self, request: Request<Lease>) -> Result<Response<Self::FetchStream>, Status> {
        let lease = request.into_inner();
        let (kind, n) = self.record(&lease);
        let script = (self.scripts)(kind, n);
        if let Script::Refuse = script {
            let mut in_flight = self.slots_in_flight.lock().unwrap();
            if let Some(at) = in_flight.iter().position(|&s| s == lease.rate_grid_slot) {
                in_flight.swap_remove(at);
            }
            return Err(Status::invalid_argument("scripted refusal"));
        }
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move { this.play(script, lease, tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Fake {
    async fn play(&self, script: Script, lease: Lease, tx: Tx) {
        let events = self.events(&lease);
        match script {
            Script::Honest => {
                send_all(&tx, events).await;
                send_all(&tx, vec![summary(&lease, 0)]).await;
            }
            Script::Reversed => {
                let mut all = vec![summary(&lease, 0)];
                all.extend(events.into_iter().rev());
                send_all(&tx, all).await;
            }
            Script::BreakAfter(k) => {
                send_all(&tx, events.into_iter().take(k).collect()).await;
                let _ = tx.send(Err(Status::unavailable("scripted break"))).await;
            }
            Script::Silent => tx.closed().await,
            Script::ReplayOther => {
                send_all(&tx, self.replay_of_other(lease.fencing_token)).await;
                let mut answered = self.answered.subscribe();
                let _ = answered.wait_for(|&n| n >= 1).await;
                send_all(&tx, events).await;
                send_all(&tx, vec![summary(&lease, 0)]).await;
            }
            Script::Throttled => {
                let throttled = Event::Throttled(alldocs_proto::v1::Throttled {
                    http_status: 429,
                    retry_after_ms: 0,
                });
                send_all(&tx, vec![throttled]).await;
                send_all(&tx, events).await;
                send_all(&tx, vec![summary(&lease, 0)]).await;
            }
            Script::Refuse => unreachable!("refused before the stream"),
        }
        // Before the stream ends, so before the scheduler can hand the slot out again.
        let mut in_flight = self.slots_in_flight.lock().unwrap();
        if let Some(at) = in_flight.iter().position(|&s| s == lease.rate_grid_slot) {
            in_flight.swap_remove(at);
        }
        drop(in_flight);
        if matches!(lease.work, Some(Work::Packuments(_))) {
            self.answered.send_modify(|n| *n += 1);
        }
    }
}

/// A fake fetcher served on `127.0.0.1:0`.
async fn serve(fake: Fake) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FetcherServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// `count` packages, half `a-NN` (in the partition before the pivot `m`), half `pkg-NN`
/// (in the one after it).
fn registry(count: usize) -> BTreeMap<String, String> {
    (0..count)
        .map(|i| {
            let name = if i % 2 == 0 {
                format!("a-{i:02}")
            } else {
                format!("pkg-{i:02}")
            };
            (name, format!("1-{i}"))
        })
        .collect()
}

struct Run {
    counts: Counts,
    seen: Vec<Seen>,
    dir: tempfile::TempDir,
    stats: Arc<Stats>,
}

impl Run {
    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("c.sqlite")).unwrap()
    }

    /// name → (status, attempts, uri, last_error) of every package.
    fn packages(&self) -> BTreeMap<String, (String, i64, String, String)> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT name, status, attempts, COALESCE(uri, ''), COALESCE(last_error, '') FROM packages")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn packument_leases(&self) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.kind == Kind::Packuments)
            .collect()
    }
}

fn settings(max_in_flight: usize) -> Settings {
    Settings {
        replicate_origin: "http://127.0.0.1:9".into(),
        registry: "http://127.0.0.1:9".into(),
        store: "memory://scheduler-test".into(),
        accept: Accept::Full,
        page_size: 100,
        lease_size: 5,
        lease_duration: Duration::from_millis(400),
        answer_grace: Duration::from_millis(200),
        max_in_flight,
        concurrency: 1,
        rate_limit: 0.0,
        rate_recovery: Duration::from_secs(10),
        max_retries: 0,
        retry_base_ms: 10,
        max_document_bytes: 0,
        layout: alldocs_coordinator::checkpoint::Layout::Files,
        snapshot_id: String::new(),
        pack_bytes: 0,
        pack_interval: std::time::Duration::ZERO,
    }
}

/// Runs the scheduler to the end against a fake with `scripts`, over `count` packages.
async fn run(
    count: usize,
    max_in_flight: usize,
    max_attempts: u32,
    scripts: impl Fn(Kind, usize) -> Script + Send + Sync + 'static,
) -> Run {
    run_with(count, settings(max_in_flight), max_attempts, scripts).await
}

/// [`run`] with any settings.
async fn run_with(
    count: usize,
    settings: Settings,
    max_attempts: u32,
    scripts: impl Fn(Kind, usize) -> Script + Send + Sync + 'static,
) -> Run {
    let fake = Fake {
        registry: Arc::new(registry(count)),
        scripts: Arc::new(scripts),
        seen: Arc::default(),
        answered: Arc::new(watch::channel(0).0),
        slots_in_flight: Arc::default(),
    };
    let seen = fake.seen.clone();
    let addr = serve(fake).await;
    let dir = tempfile::tempdir().unwrap();
    let pivots = vec!["m".to_string()];
    let identity = RunIdentity {
        replicate_origin: "http://127.0.0.1:9".into(),
        registry: "http://127.0.0.1:9".into(),
        store: "memory://scheduler-test".into(),
        pivots: pivots.clone(),
        accept: "full".into(),
        layout: None,
    };
    let (checkpoint, _) = Checkpoint::open(
        &dir.path().join("c.sqlite"),
        &identity,
        &plan::partitions(&pivots),
        max_attempts,
    )
    .unwrap();
    let (state, state_rx) = watch::channel(RunState::Planning);
    let stats = Arc::new(Stats::default());
    let fetcher = FetcherHandle::remote(&format!("http://{addr}")).unwrap();
    let scheduler = Arc::new(Scheduler::new(
        checkpoint,
        vec![fetcher],
        settings,
        stats.clone(),
        state,
    ));
    let counts = tokio::time::timeout(Duration::from_secs(60), scheduler.run())
        .await
        .expect("the run ends")
        .expect("the run succeeds");
    assert_eq!(*state_rx.borrow(), RunState::Done);
    let seen = seen.lock().unwrap().clone();
    Run {
        counts,
        seen,
        dir,
        stats,
    }
}

fn lease_outcome(run: &Run, token: u64) -> String {
    run.db()
        .query_row(
            "SELECT outcome FROM leases WHERE token = ?1",
            [token as i64],
            |r| r.get(0),
        )
        .unwrap()
}

fn assert_totals(c: &Counts, total: u64, done: u64, failed: u64) {
    assert_eq!(
        (
            c.partitions_done,
            c.partitions_failed,
            c.rows_indexed,
            c.packuments_total,
            c.packuments_done,
            c.packuments_failed,
            c.packuments_pending,
            c.packuments_leased
        ),
        (2, 0, total, total, done, failed, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.bytes_stored, done * 100);
}

#[tokio::test]
async fn events_in_any_order_count_exactly() {
    // Packument leases send their summary first and their items last to first.
    let run = run(20, 2, 3, |kind, _| match kind {
        Kind::Packuments => Script::Reversed,
        Kind::Index => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 20, 20, 0);
    for (name, (status, attempts, uri, _)) in run.packages() {
        assert_eq!((status.as_str(), attempts), ("stored", 0), "{name}");
        let lease = run
            .packument_leases()
            .into_iter()
            .find(|s| s.items.contains(&name))
            .unwrap();
        assert_eq!(uri, self::uri(lease.token, &name));
    }
}

#[tokio::test]
async fn a_stream_that_breaks_mid_lease_loses_nothing_and_counts_one_attempt() {
    // The first packument lease stores two items, then its stream breaks.
    let run = run(20, 1, 3, |kind, n| match (kind, n) {
        (Kind::Packuments, 0) => Script::BreakAfter(2),
        _ => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 20, 20, 0);
    let leases = run.packument_leases();
    let broken = leases[0];
    assert!(
        lease_outcome(&run, broken.token).contains("broke: scripted break"),
        "the lease's outcome names the break"
    );
    let packages = run.packages();
    for (i, name) in broken.items.iter().enumerate() {
        let (status, attempts, uri, error) = &packages[name];
        assert_eq!(status, "stored");
        if i < 2 {
            // Stored before the break: kept from the broken lease, never leased again.
            assert_eq!((*attempts, uri.clone()), (0, self::uri(broken.token, name)));
            assert!(
                leases[1..].iter().all(|l| !l.items.contains(name)),
                "{name}"
            );
        } else {
            assert!(leases[1..].iter().any(|l| l.items.contains(name)), "{name}");
            // Given back with the attempt counted, then fetched by a later lease.
            assert_eq!((*attempts, error.as_str()), (1, ""), "{name}");
            assert_ne!(uri, &self::uri(broken.token, name));
        }
    }
}

#[tokio::test]
async fn a_refused_lease_counts_attempts_until_its_items_fail_with_the_reason() {
    // Every packument lease is refused: with 2 attempts each item fails after 2 leases.
    let run = run(10, 1, 2, |kind, _| match kind {
        Kind::Packuments => Script::Refuse,
        Kind::Index => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 10, 0, 10);
    for (name, (status, attempts, _, error)) in run.packages() {
        assert_eq!((status.as_str(), attempts), ("failed", 2), "{name}");
        assert!(
            error.contains("refused the lease: scripted refusal"),
            "{error}"
        );
    }
    assert_eq!(
        run.packument_leases().len(),
        4,
        "10 items, 5 a lease, 2 attempts"
    );
}

#[tokio::test]
async fn a_fetcher_that_never_answers_is_given_up_on_after_the_deadline() {
    let run = run(10, 1, 3, |kind, n| match (kind, n) {
        (Kind::Packuments, 0) => Script::Silent,
        _ => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 10, 10, 0);
    let silent = run.packument_leases()[0].clone();
    let packages = run.packages();
    for name in &silent.items {
        let (status, attempts, _, error) = &packages[name];
        assert_eq!((status.as_str(), *attempts), ("stored", 1), "{name}");
        assert!(
            error.is_empty(),
            "a later success clears the reason: {error}"
        );
    }
    let outcome = lease_outcome(&run, silent.token);
    assert!(outcome.contains("without an answer"), "{outcome}");
}

#[tokio::test]
async fn events_for_work_another_lease_holds_change_nothing() {
    // Two packument leases in flight: the second first claims the first one's items (and
    // sends rows for a partition it does not hold), then answers for its own.
    let run = run(20, 2, 3, |kind, n| match (kind, n) {
        (Kind::Packuments, 1) => Script::ReplayOther,
        _ => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 20, 20, 0);
    let packages = run.packages();
    assert!(
        !packages.contains_key("ghost"),
        "rows of a partition not held"
    );
    for lease in run.packument_leases() {
        for name in &lease.items {
            let (status, attempts, uri, _) = &packages[name];
            assert_eq!((status.as_str(), *attempts), ("stored", 0), "{name}");
            assert_eq!(
                uri,
                &self::uri(lease.token, name),
                "{name}: only its own lease's event counts"
            );
        }
    }
}

/// Users' `--rate-limit` holds across leases: every lease in flight gets its own slot on
/// one grid (never a slot another lease in flight holds), and once a fetcher reports that
/// the origin throttles, later leases get half the rate.
#[tokio::test]
async fn leases_hold_distinct_grid_slots_and_throttling_halves_the_next_ones() {
    let settings = Settings {
        rate_limit: 40.0,
        ..settings(4)
    };
    let run = run_with(80, settings, 3, |kind, n| match (kind, n) {
        (Kind::Packuments, 0) => Script::Throttled,
        _ => Script::Honest,
    })
    .await;
    assert_totals(&run.counts, 80, 80, 0);
    assert_eq!(run.seen.len(), 2 + 16, "2 partitions, 16 leases of 5");
    for s in &run.seen {
        assert!(!s.slot_clash, "slot {} was held twice: {s:?}", s.slot);
        assert!(s.slot < 4, "{s:?}");
        // Ticks 1/(0.98 × 40) s apart: a period of 4 ticks, slot j at j ticks.
        assert_eq!(s.grid.0, 102_041, "{s:?}");
        assert_eq!(s.grid.1, (25_510.2 * f64::from(s.slot)).round() as u64);
        assert!(s.rate == 10.0 || s.rate == 5.0, "{s:?}");
    }
    assert_eq!(
        run.seen[0].rate, 10.0,
        "the full share before any throttling"
    );
    let last = run.seen.iter().max_by_key(|s| s.token).unwrap();
    assert_eq!(last.rate, 5.0, "half after the origin throttled: {last:?}");
    assert_eq!(run.stats.rate_limit_current(), 20.0);
}
