//! **Part `api`: the `alldocs.v1.Coordinator` gRPC service.** Progress, partitions,
//! failures, retries, answered from the checkpoint and the live figures; [`admin`] guards
//! every call with `ALLDOCS_ADMIN_TOKEN`.
//!
//! Uses: `fleet` (live figures), `checkpoint`.

pub mod admin;

use std::{sync::Arc, time::Duration};

use alldocs_proto::v1::{
    coordinator_server::Coordinator, GetProgressRequest, ListFailuresRequest, ListFailuresResponse,
    ListPartitionsRequest, ListPartitionsResponse, Progress, RetryFailedRequest,
    RetryFailedResponse, RunState, WatchProgressRequest,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    checkpoint::{Checkpoint, CheckpointError, Counts, FailureCursor},
    fleet::rates::Stats,
};

/// Serves progress from the checkpoint and the scheduler's live figures.
#[derive(Clone)]
pub struct CoordinatorService {
    pub checkpoint: Checkpoint,
    pub stats: Arc<Stats>,
    /// Told when RetryFailed put work back, so a finished `serve` runs again.
    pub retried: Arc<Notify>,
    pub state: watch::Receiver<RunState>,
    /// What the run does: with `--index-only` or `--names` it is done when its own work
    /// is, though other packages of the snapshot may wait.
    pub mode: crate::checkpoint::Mode,
}

/// Waits until the next progress is due: the interval has passed, or the run's state is
/// no longer the one last sent. False if the client went away.
async fn next_update(
    state: &mut watch::Receiver<RunState>,
    sent: i32,
    interval: Duration,
    tx: &mpsc::Sender<Result<Progress, Status>>,
) -> bool {
    let due = tokio::time::sleep(interval);
    tokio::pin!(due);
    loop {
        tokio::select! {
            _ = &mut due => return true,
            changed = state.changed() => {
                if changed.is_err() {
                    // The run is over: wait out the interval.
                    (&mut due).await;
                    return true;
                }
                if *state.borrow_and_update() as i32 != sent {
                    return true;
                }
            }
            _ = tx.closed() => return false,
        }
    }
}

fn internal(e: CheckpointError) -> Status {
    Status::internal(e.to_string())
}

/// Builds a `Progress` from exact counts, the run state and this process's rates.
pub fn progress_of(counts: &Counts, state: RunState, stats: &Stats) -> Progress {
    // While running: rates over the recent past. Once done: the average over the run.
    let rates = if state == RunState::Done {
        stats.average()
    } else {
        stats.rates()
    };
    let remaining = counts.packuments_pending + counts.packuments_leased;
    let eta_seconds = if state == RunState::Done {
        0
    } else if rates.packuments_per_second > 0.0
        && counts.partitions_pending + counts.partitions_leased == 0
    {
        (remaining as f64 / rates.packuments_per_second).ceil() as i64
    } else {
        -1
    };
    Progress {
        state: state as i32,
        partitions_total: counts.partitions_total,
        partitions_done: counts.partitions_done,
        partitions_failed: counts.partitions_failed,
        rows_indexed: counts.rows_indexed,
        packuments_total: counts.packuments_total,
        packuments_done: counts.packuments_done,
        packuments_missing: counts.packuments_missing,
        packuments_failed: counts.packuments_failed,
        bytes_stored: counts.bytes_stored,
        packuments_pending: counts.packuments_pending,
        packuments_leased: counts.packuments_leased,
        leases_in_flight: stats.leases_in_flight(),
        packuments_per_second: rates.packuments_per_second,
        rows_per_second: rates.rows_per_second,
        bytes_per_second: rates.bytes_per_second,
        eta_seconds,
        elapsed_ms: stats.elapsed().as_millis() as u64,
        packuments_fetched_this_run: counts.fetched_this_run,
        packuments_rev_mismatch: counts.packuments_rev_mismatch,
        rate_limit_current: stats.rate_limit_current(),
        packuments_deleted: counts.packuments_deleted,
        layout: counts.layout.as_str().to_string(),
        packs: counts.packs,
        pack_bytes: counts.pack_bytes,
        pack_bytes_live: counts.pack_bytes_live,
        pack_bytes_dead: counts.pack_bytes.saturating_sub(counts.pack_bytes_live),
        packuments_without_digest: counts.packuments_without_digest,
        ..feed_progress(&stats.feed())
    }
}

/// The feed's part of progress: head, our sequence and the lag (empty and -1 when not
/// following).
fn feed_progress(feed: &crate::fleet::rates::FeedStatus) -> Progress {
    let show = |seq: &Option<crate::checkpoint::feed::Seq>| seq.as_ref().map(ToString::to_string);
    let lag = match (&feed.ours, &feed.head) {
        (Some(ours), Some(head)) => {
            crate::checkpoint::feed::lag(ours, head).map_or(-1, |l| l as i64)
        }
        _ => -1,
    };
    Progress {
        feed_head_seq: show(&feed.head).unwrap_or_default(),
        feed_seq: show(&feed.ours).unwrap_or_default(),
        feed_lag: lag,
        ..Default::default()
    }
}

impl CoordinatorService {
    /// The current progress.
    pub async fn progress(&self) -> Result<Progress, CheckpointError> {
        let counts = self.checkpoint.call(|db| db.counts()).await?;
        // Before the scheduler has looked at the checkpoint, the run is still planning.
        // Then the counts decide (so a RetryFailed shows at once), but for a run whose own
        // work (the index, or a list of names) the scheduler found done.
        let watched = *self.state.borrow();
        let state = match state_of(&counts) {
            _ if matches!(watched, RunState::Planning | RunState::Unspecified) => {
                RunState::Planning
            }
            RunState::Done => RunState::Done,
            _ if watched == RunState::Done && self.mode != crate::checkpoint::Mode::Full => {
                RunState::Done
            }
            state => state,
        };
        // Done, and the feed keeps the snapshot current.
        let state = match state {
            RunState::Done if self.stats.feed().following => RunState::Following,
            state => state,
        };
        Ok(progress_of(&counts, state, &self.stats))
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn get_progress(
        &self,
        _: Request<GetProgressRequest>,
    ) -> Result<Response<Progress>, Status> {
        self.progress().await.map(Response::new).map_err(internal)
    }

    type WatchProgressStream = ReceiverStream<Result<Progress, Status>>;

    async fn watch_progress(
        &self,
        request: Request<WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms).max(50)),
        };
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let mut state = this.state.clone();
            loop {
                let progress = match this.progress().await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                let (sent, done) = (progress.state, progress.state == RunState::Done as i32);
                if tx.send(Ok(progress)).await.is_err() || done {
                    return;
                }
                if !next_update(&mut state, sent, interval, &tx).await {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_partitions(
        &self,
        _: Request<ListPartitionsRequest>,
    ) -> Result<Response<ListPartitionsResponse>, Status> {
        let partitions = self
            .checkpoint
            .call(|db| db.list_partitions())
            .await
            .map_err(internal)?;
        Ok(Response::new(ListPartitionsResponse { partitions }))
    }

    async fn list_failures(
        &self,
        request: Request<ListFailuresRequest>,
    ) -> Result<Response<ListFailuresResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 100,
            n => n.min(1000),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(FailureCursor::parse(token).ok_or_else(|| {
                Status::invalid_argument(
                    "page_token is not one this coordinator gave out; pass a next_page_token from ListFailures, or none for the first page",
                )
            })?),
        };
        let page = self
            .checkpoint
            .call(move |db| db.list_failures(limit, after.as_ref()))
            .await
            .map_err(internal)?;
        Ok(Response::new(ListFailuresResponse {
            failures: page.failures,
            total: page.total,
            next_page_token: page.next.map(|c| c.token()).unwrap_or_default(),
        }))
    }

    async fn retry_failed(
        &self,
        request: Request<RetryFailedRequest>,
    ) -> Result<Response<RetryFailedResponse>, Status> {
        let names = request.into_inner().names;
        let (partitions, packuments) = self
            .checkpoint
            .call(move |db| db.retry_failed(&names))
            .await
            .map_err(internal)?;
        if partitions + packuments > 0 {
            self.retried.notify_one();
        }
        Ok(Response::new(RetryFailedResponse {
            partitions,
            packuments,
        }))
    }
}

/// What the counts say the run is doing.
pub fn state_of(c: &Counts) -> RunState {
    if c.is_done() {
        RunState::Done
    } else if c.partitions_pending + c.partitions_leased > 0 {
        RunState::Indexing
    } else {
        RunState::Fetching
    }
}

/// The coordinator's server: the API (behind the admin token, if one is set), health,
/// and reflection v1 and v1alpha (always open); and on the same port, plain HTTP (any
/// request that is not gRPC) answered by `http`.
pub async fn serve(
    service: CoordinatorService,
    guard: admin::AdminGuard,
    listener: tokio::net::TcpListener,
    http: axum::Router,
) -> impl std::future::Future<Output = Result<(), tonic::transport::Error>> {
    use alldocs_fetcher::serve::grpc;
    use alldocs_proto::v1::coordinator_server::CoordinatorServer;
    let (refl_v1, refl_v1alpha) = grpc::reflection();
    let health = grpc::health::<CoordinatorServer<CoordinatorService>>().await;
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(http.into())
        .add_service(health)
        .add_service(refl_v1)
        .add_service(refl_v1alpha)
        .add_service(CoordinatorServer::with_interceptor(service, guard))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
}
