//! The Fetcher service: runs one lease, streams its events through a bounded channel, and
//! stops the lease's work when the client goes away, the deadline passes, or the process
//! is told to stop.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use alldocs_proto::v1::{
    fetcher_server::Fetcher, lease::Work, FetchEvent, ItemFailed, Layout, Lease,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::work::{deadline_of, do_work, summary_for, work_size, Tally};
use crate::{
    source::events::EventSink,
    source::http::{build_client, Http, RetryPolicy},
    source::npmrc::Credentials,
    source::pace::Pace,
    source::policy::Policy,
    store::Store,
};

/// Events buffered per lease before the fetcher waits for its client.
const EVENT_BUFFER: usize = 256;

/// The fetcher: stateless apart from its HTTP connection pool and credentials.
#[derive(Clone)]
pub struct FetchService {
    client: reqwest::Client,
    credentials: Arc<Credentials>,
    /// What leases may name; the in-process fetcher's is unrestricted.
    policy: Arc<Policy>,
    stopping: CancellationToken,
    active: Arc<watch::Sender<usize>>,
}

/// Counts a lease as active for as long as it lives.
struct ActiveGuard(Arc<watch::Sender<usize>>);

impl ActiveGuard {
    fn new(active: &Arc<watch::Sender<usize>>) -> Self {
        active.send_modify(|n| *n += 1);
        Self(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl FetchService {
    /// A fetcher that takes any lease: the one a coordinator embeds.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            client: build_client(),
            credentials: Arc::new(credentials),
            policy: Arc::new(Policy::unrestricted()),
            stopping: CancellationToken::new(),
            active: Arc::new(watch::channel(0).0),
        }
    }

    /// The same fetcher, taking only leases `policy` admits (`fetcher serve`).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The number of leases being worked on right now, as a value that can be awaited.
    pub fn active_leases(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    /// Tells every running lease to stop and end its stream with a summary, so the
    /// coordinator re-leases the unfinished work at once (SIGTERM on Cloud Run).
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// Starts a lease and returns its event stream: the same call the gRPC server makes,
    /// so an in-process fetcher and a remote one behave alike. A lease the policy refuses
    /// is refused here, before any request is sent or anything is written.
    pub fn start(
        &self,
        lease: Lease,
    ) -> Result<ReceiverStream<Result<FetchEvent, Status>>, Status> {
        validate(&lease)?;
        let lease = self.policy.admit(lease)?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let this = self.clone();
        let guard = ActiveGuard::new(&self.active);
        tokio::spawn(async move {
            let open = &crate::source::metrics::metrics().leases_open;
            open.inc();
            this.run(lease, EventSink::new(tx)).await;
            open.dec();
            drop(guard);
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn run(self, lease: Lease, sink: EventSink) {
        let started = Instant::now();
        let store = match Store::open(&lease.store_url) {
            Ok(store) => store,
            Err(e) => return fail_unopened_store(&lease, &sink, &e, started).await,
        };
        let policy = RetryPolicy {
            max_retries: lease.max_retries,
            base: Duration::from_millis(match lease.retry_base_ms {
                0 => 500,
                ms => u64::from(ms),
            }),
            ..RetryPolicy::default()
        };
        let http = Http::new(
            self.client.clone(),
            self.credentials.clone(),
            Pace::of_lease(&lease),
            policy,
        )
        .report_throttling_to(sink.clone());
        let tally = Tally::default();
        let deadline = deadline_of(&lease);
        let work = do_work(&lease, &http, &store, &sink, &tally);
        let expired =
            lease.deadline_unix_ms > 0 && lease.deadline_unix_ms <= alldocs_proto::now_unix_ms();
        let (total, deadline_exceeded) = tokio::select! {
            // In this order: a lease whose client left, that is told to stop, or that is
            // already past its deadline sends no request at all.
            biased;
            _ = sink.closed() => {
                tracing::info!(lease = %lease.lease_id, fencing_token = lease.fencing_token, "client went away; lease stopped");
                return;
            }
            _ = self.stopping.cancelled() => {
                tracing::info!(lease = %lease.lease_id, "stopping; lease ends early");
                (work_size(&lease), false)
            }
            _ = std::future::ready(()), if expired => {
                tracing::warn!(lease = %lease.lease_id, "lease arrived past its deadline; ending it");
                (work_size(&lease), true)
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(lease = %lease.lease_id, "lease deadline passed; ending early");
                (work_size(&lease), true)
            }
            total = work => (total, false),
        };
        let mut summary = summary_for(&lease, &tally, started, total, deadline_exceeded);
        summary.requests = http.counters.requests.load(Ordering::Relaxed);
        summary.retries = http.counters.retries.load(Ordering::Relaxed);
        summary.throttled = http.counters.throttled.load(Ordering::Relaxed);
        let index = matches!(lease.work, Some(Work::Index(_)));
        crate::source::metrics::metrics().lease_done(&summary, index);
        tracing::debug!(
            lease = %lease.lease_id, fencing_token = lease.fencing_token, rows = summary.rows,
            stored = summary.stored, missing = summary.missing, failed = summary.failed,
            bytes = summary.bytes, requests = summary.requests, ms = summary.duration_ms,
            "lease finished"
        );
        let _ = sink.summary(summary).await;
    }
}

/// A store that could not be opened fails every item of the lease with its reason (the
/// partition of an index lease), so the coordinator records why, not that it "finished".
async fn fail_unopened_store(
    lease: &Lease,
    sink: &EventSink,
    e: &crate::store::StoreError,
    started: Instant,
) {
    tracing::error!(lease = %lease.lease_id, error = %e, "the store cannot be opened");
    let names: Vec<String> = match &lease.work {
        Some(Work::Packuments(work)) => work.items.iter().map(|i| i.name.clone()).collect(),
        _ => vec![String::new()],
    };
    let tally = Tally::default();
    for name in names {
        let failed = ItemFailed {
            name,
            reason: e.to_string(),
            retryable: false,
            http_status: 0,
        };
        if sink.failed(failed).await.is_err() {
            return;
        }
        tally.failed.fetch_add(1, Ordering::Relaxed);
    }
    let total = work_size(lease);
    let _ = sink
        .summary(summary_for(lease, &tally, started, total, false))
        .await;
}

#[tonic::async_trait]
impl Fetcher for FetchService {
    type FetchStream = ReceiverStream<Result<FetchEvent, Status>>;

    async fn fetch(&self, request: Request<Lease>) -> Result<Response<Self::FetchStream>, Status> {
        self.start(request.into_inner()).map(Response::new)
    }
}

/// Refuses a lease that cannot be worked, saying what is wrong with it.
fn validate(lease: &Lease) -> Result<(), Status> {
    let url_ok = |what: &str, url: &str| -> Result<(), Status> {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            _ => Err(Status::invalid_argument(format!(
                "lease {}: {what} `{}` is not an http(s) URL",
                lease.lease_id,
                crate::source::http::redact(url)
            ))),
        }
    };
    match &lease.work {
        None => Err(Status::invalid_argument(format!(
            "lease {} names no work (neither index nor packuments)",
            lease.lease_id
        ))),
        Some(Work::Index(w)) => {
            if let (Some(s), Some(e)) = (&w.start, &w.end) {
                if s.as_bytes() >= e.as_bytes() {
                    return Err(Status::invalid_argument(format!(
                        "lease {}: partition start `{s}` is not before its end `{e}`",
                        lease.lease_id
                    )));
                }
            }
            url_ok("replicate_origin", &lease.replicate_origin)
        }
        Some(Work::Packuments(_)) => {
            if lease.layout() == Layout::Packs
                && !crate::store::pack::valid_snapshot_id(&lease.snapshot_id)
            {
                return Err(Status::invalid_argument(format!(
                    "lease {}: layout packs needs a snapshot_id of 1 to 32 lowercase hex digits, not `{}`",
                    lease.lease_id,
                    lease.snapshot_id.escape_debug()
                )));
            }
            url_ok("registry", &lease.registry)
        }
    }?;
    crate::store::StoreLocation::parse(&lease.store_url)
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}
