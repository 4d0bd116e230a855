//! One job (`serve` or `run`): with its options checked (`run::preflight`), open the
//! checkpoint, serve the gRPC API, run the scheduler until the work is done or the job is
//! told to stop, and print the end-of-run summary.

use std::{future::Future, net::SocketAddr, pin::Pin, process::ExitCode, sync::Arc};

use alldocs_fetcher::{
    serve::{grpc, telemetry::Signal},
    source::http::{redact, RetryPolicy},
    store::Store,
};
use alldocs_proto::v1::RunState;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch, Notify},
    task::JoinHandle,
};

use crate::{
    api::CoordinatorService,
    checkpoint::lock::CheckpointLock,
    checkpoint::{Checkpoint, CheckpointError, Mode, Opened},
    fleet::fetchers::FetcherHandle,
    fleet::rates::Stats,
    follow::changes::Feed,
    follow::{Caught, FollowSettings, Tail},
    run::args::{usage, JobArgs},
    run::display,
    run::preflight::{prepare, Prepared},
    run::scheduler::Scheduler,
};

/// The exit code of a job that finished with items failed for good (listed in its
/// summary and in `ListFailures`): everything else is stored, and `RetryFailed` or a
/// rerun tries them again. 1 stays for a job stopped by an error.
pub const FAILED_ITEMS: u8 = 3;

/// Runs a job until it is done (`run`; or, for `serve`, until `stop`) and returns the exit
/// code. `listening`, if given, learns the API's address once it is bound.
pub async fn job(
    args: JobArgs,
    stay: bool,
    stop: impl Future<Output = Signal> + Send,
    listening: Option<oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<ExitCode> {
    if args.follow && !stay {
        return Err(usage(
            "--follow keeps the snapshot current and never finishes: use `coordinator serve --follow` (`run` exits once the snapshot is done)",
        ));
    }
    let mut prepared = prepare(&args)?;
    // A credential that cannot be had stops the job before anything is written.
    for fetcher in &prepared.fetchers {
        fetcher
            .authenticate()
            .await
            .map_err(|e| usage(format!("{e:#}")))?;
    }
    crate::run::preflight::check_store(&args.store)
        .await
        .map_err(usage)?;
    let listener = grpc::bind(args.listen)
        .await
        .map_err(|e| usage(e.to_string()))?;
    let local = listener.local_addr()?;
    // Held until the job returns: a second coordinator on this checkpoint is refused.
    let _lock = CheckpointLock::acquire(&args.db, local).map_err(|e| usage(e.to_string()))?;
    let (checkpoint, opened) = Checkpoint::open_for(
        &args.db,
        &prepared.identity,
        &prepared.partitions,
        args.max_attempts,
        prepared.mode,
        args.follow,
    )
    .map_err(|e| match e {
        CheckpointError::ConfigMismatch { .. }
        | CheckpointError::LayoutMismatch { .. }
        | CheckpointError::Open { .. }
        | CheckpointError::TooNew { .. } => usage(e.to_string()),
        other => other.into(),
    })?;
    (prepared.settings.layout, prepared.settings.snapshot_id) =
        checkpoint.call(|db| db.layout()).await?;
    if prepared.mode == Mode::Names {
        let (names, plan) = (prepared.names.clone(), prepared.partitions.clone());
        checkpoint.call(move |db| db.want(&names, &plan)).await?;
    }
    println!("coordinator listening on {local}");
    if let Some(tx) = listening {
        let _ = tx.send(local);
    }
    tracing::info!(
        run = opened.run, resumed = opened.resumed, partitions = prepared.partitions.len(),
        db = %args.db.display(), store = %args.store, registry = %redact(&prepared.settings.registry),
        fetchers = prepared.fetchers.len(), "starting"
    );
    let running = Running::start(args, prepared, checkpoint, listener, local, opened).await?;
    let stop = std::pin::pin!(stop);
    running.drive(stay, stop).await
}

/// A job whose API is up: the scheduler runs (again, after RetryFailed under `serve`)
/// until the work is done or the job is told to stop.
struct Running {
    args: JobArgs,
    service: CoordinatorService,
    scheduler: Arc<Scheduler>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    retried: Arc<Notify>,
    local: SocketAddr,
    opened: Opened,
    /// `serve --follow`: the feed that keeps the snapshot current.
    tail: Option<Arc<Tail>>,
}

type Stop<'a> = Pin<&'a mut (dyn Future<Output = Signal> + Send + 'a)>;

/// How one pass of the scheduler ended.
enum Ran {
    Done,
    /// Told to stop, but the work was done by then.
    DoneAsStopped,
    Interrupted(Signal),
}

impl Running {
    async fn start(
        args: JobArgs,
        prepared: Prepared,
        checkpoint: Checkpoint,
        listener: TcpListener,
        local: SocketAddr,
        opened: Opened,
    ) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let retried = Arc::new(Notify::new());
        let (state_tx, state_rx) = watch::channel(RunState::Planning);
        let service = CoordinatorService {
            checkpoint: checkpoint.clone(),
            stats: stats.clone(),
            retried: retried.clone(),
            state: state_rx,
            mode: prepared.mode,
        };
        let plan = Arc::new(prepared.partitions.clone());
        let (origin, credentials) = (
            prepared.settings.replicate_origin.clone(),
            prepared.credentials.clone(),
        );
        let policy = RetryPolicy {
            max_retries: args.max_retries,
            base: args.retry_base,
            ..RetryPolicy::default()
        };
        let scheduler = Arc::new(
            Scheduler::new(
                checkpoint.clone(),
                prepared.fetchers,
                prepared.settings,
                stats.clone(),
                state_tx,
            )
            .mode(prepared.mode),
        );
        let server = crate::run::surface::serve_api(&args, &service, &scheduler, listener).await;
        let tail = match args.follow {
            false => None,
            true => Some(Arc::new(Tail {
                checkpoint,
                feed: Feed::new(&origin, credentials, policy),
                plan,
                budget: scheduler.budget.clone(),
                stats,
                store: match args.delete_objects {
                    true => Some(Store::open(&args.store)?),
                    false => None,
                },
                settings: FollowSettings {
                    interval: args.follow_interval,
                    page_size: args.page_size,
                    batch: u64::from(args.lease_size) * u64::from(args.max_in_flight),
                },
            })),
        };
        Ok(Self {
            args,
            service,
            scheduler,
            server,
            retried,
            local,
            opened,
            tail,
        })
    }

    async fn drive(mut self, stay: bool, mut stop: Stop<'_>) -> anyhow::Result<ExitCode> {
        if let Some(tail) = &self.tail {
            tail.begin(self.opened).await?;
        }
        let mut summarized = false;
        loop {
            let finished_as_stopped = match self.run_once(stop.as_mut()).await? {
                Ran::Interrupted(signal) => return Ok(self.interrupted(signal)),
                Ran::Done => false,
                Ran::DoneAsStopped => true,
            };
            // Following, the snapshot is summarized once; later batches are logged.
            let failed = match (&self.tail, summarized) {
                (Some(_), true) => 0,
                _ => self.summarize().await?,
            };
            summarized = true;
            if !stay || finished_as_stopped {
                self.server.abort();
                return Ok(if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(FAILED_ITEMS)
                });
            }
            let again = match self.tail.clone() {
                Some(tail) => self.follow(&tail, stop.as_mut()).await?,
                None => self.await_retry(stop.as_mut()).await?,
            };
            if !again {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }

    /// `serve --follow` with nothing to lease: reads the feed until it brings work (or
    /// RetryFailed does). Returns whether to run the scheduler again. A feed that cannot
    /// be read is tried again after the interval; a checkpoint that cannot be written
    /// stops the job.
    async fn follow(&mut self, tail: &Tail, mut stop: Stop<'_>) -> anyhow::Result<bool> {
        loop {
            let caught = tokio::select! {
                caught = tail.catch_up() => caught,
                _ = stop.as_mut() => {
                    tail.say_where_stopped();
                    return Ok(false);
                }
            };
            match caught {
                Ok(Caught::Pending(_) | Caught::Reset) => return Ok(true),
                Ok(Caught::Current) => {}
                Err(e) if e.downcast_ref::<CheckpointError>().is_some() => return Err(e),
                Err(e) => tracing::warn!(
                    error = %e, retry_in = %humantime::format_duration(tail.settings.interval),
                    "reading the _changes feed failed; trying again"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(tail.settings.interval) => {}
                _ = self.retried.notified() => return Ok(true),
                _ = stop.as_mut() => {
                    tail.say_where_stopped();
                    return Ok(false);
                }
                r = &mut self.server => {
                    r??;
                    return Ok(false);
                }
            }
        }
    }

    /// Runs the scheduler with progress shown; `None` if told to stop first.
    async fn run_once(&self, stop: Stop<'_>) -> anyhow::Result<Ran> {
        let (stop_display, display_stopped) = oneshot::channel();
        let display = tokio::spawn(display::show(
            self.service.clone(),
            self.args.progress,
            self.args.progress_interval,
            display_stopped,
        ));
        let outcome = tokio::select! {
            result = self.scheduler.clone().run() => Ok(result),
            signal = stop => Err(signal),
        };
        let _ = stop_display.send(());
        let _ = display.await;
        match outcome {
            Ok(result) => result.map(|_| Ran::Done),
            Err(signal) => {
                // Told to stop as the last lease was ending: if the checkpoint says the
                // work is done, the run is finished, not interrupted.
                let counts = self.service.checkpoint.call(|db| db.counts_now()).await?;
                Ok(if counts.is_done() {
                    Ran::DoneAsStopped
                } else {
                    Ran::Interrupted(signal)
                })
            }
        }
    }

    /// Stops in-process fetchers (their leases end cleanly) and says how to carry on; the
    /// exit code says which signal stopped the job before it finished (130, 143).
    fn interrupted(&self, signal: Signal) -> ExitCode {
        for f in self.scheduler.fetchers.all() {
            if let FetcherHandle::Local(svc) = f {
                svc.stop();
            }
        }
        eprintln!(
            "interrupted: the checkpoint {} keeps everything finished so far; run the same command again to carry on",
            self.args.db.display()
        );
        ExitCode::from(signal.exit_code())
    }

    /// `serve` stays up when done, for watching and to run again when RetryFailed puts
    /// work back. Returns whether to run again.
    async fn await_retry(&mut self, stop: Stop<'_>) -> anyhow::Result<bool> {
        tokio::select! {
            _ = self.retried.notified() => {
                tracing::info!("failures put back by RetryFailed; running again");
                Ok(true)
            }
            _ = stop => {
                eprintln!("stopped; the run was complete");
                Ok(false)
            }
            r = &mut self.server => {
                r??;
                Ok(false)
            }
        }
    }

    /// Prints the end-of-run summary to stdout; returns how many items failed.
    async fn summarize(&self) -> anyhow::Result<u64> {
        let progress = self.service.progress().await?;
        println!("\n{}", display::table(&progress));
        let failed = progress.partitions_failed + progress.packuments_failed;
        if failed > 0 {
            let page = self
                .service
                .checkpoint
                .call(|db| db.list_failures(10, None))
                .await?;
            println!("{} failed (first {}):", page.total, page.failures.len());
            for f in &page.failures {
                println!(
                    "  {} {}: {} (after {} attempts)",
                    f.kind, f.name, f.reason, f.attempts
                );
            }
            if progress.partitions_failed > 0 {
                println!(
                    "{} partition(s) could not be indexed from --replicate-origin {}: if this machine cannot reach it, pass --replicate-origin with a CouchDB-compatible replication endpoint it can reach.",
                    progress.partitions_failed,
                    redact(&self.args.replicate_origin)
                );
            }
            println!(
                "Retry them: run the same command again (a new run fetches failures again), or while `coordinator serve` runs:\n  grpcurl -plaintext {} alldocs.v1.Coordinator/RetryFailed",
                self.local
            );
        }
        if self.args.names.is_some() {
            let (listed, stored, missing, failed) = self
                .service
                .checkpoint
                .call(|db| db.wanted_counts())
                .await?;
            println!(
                "names: {listed} listed: {stored} stored, {missing} missing (the registry does not have them), {failed} failed"
            );
        }
        if self.args.index_only {
            println!(
                "index only: {} packages indexed, none fetched; run without --index-only to fetch them (the next run indexes again, cheaply, then fetches what changed)",
                progress.rows_indexed
            );
        }
        println!(
            "store: {}   checkpoint: {}",
            self.args.store,
            self.args.db.display()
        );
        Ok(failed)
    }
}
