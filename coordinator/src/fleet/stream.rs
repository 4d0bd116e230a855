//! Following one lease's event stream: drain what has arrived into a batch, commit it as
//! one checkpoint call, and classify how the stream ended.

use std::sync::atomic::Ordering;

use alldocs_proto::v1::{fetch_event::Event, FetchEvent, LeaseSummary};
use futures::{stream::BoxStream, FutureExt, StreamExt};
use tonic::Status;

use crate::{
    checkpoint::{Checkpoint, CheckpointError},
    fleet::budget::Budget,
    fleet::fetchers::FetcherHandle,
    fleet::rates::Stats,
    fleet::refusal::{refused_end, Context, LeaseEnd},
};

/// The most events committed in one checkpoint call.
pub const MAX_BATCH: usize = 1024;

/// A lease's event stream, as both kinds of fetcher return it.
pub type EventStream = BoxStream<'static, Result<FetchEvent, Status>>;

/// Events that had arrived, and how the stream ended if it did.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    pub ended: Option<Result<(), Status>>,
}

/// Waits for the next event, then takes every one already there (up to `max`) without
/// waiting again, so a busy stream is committed in large batches and a slow one at once.
pub async fn next_batch(stream: &mut EventStream, max: usize) -> Batch {
    let mut batch = Batch::default();
    let mut next = Some(stream.next().await);
    while let Some(item) = next.take() {
        match item {
            None => batch.ended = Some(Ok(())),
            Some(Err(status)) => batch.ended = Some(Err(status)),
            Some(Ok(ev)) => batch.events.extend(ev.event),
        }
        if batch.ended.is_none() && batch.events.len() < max {
            next = stream.next().now_or_never();
        }
    }
    batch
}

/// How a lease ended, by its summary.
pub fn summary_end(s: &LeaseSummary) -> LeaseEnd {
    if s.unfinished == 0 {
        LeaseEnd::counted("finished")
    } else if s.deadline_exceeded {
        LeaseEnd::counted(format!(
            "lease deadline passed with {} items unfinished",
            s.unfinished
        ))
    } else {
        // Told to stop (SIGTERM, scale-in): hand the rest out again as is.
        LeaseEnd::uncounted(format!(
            "fetcher stopped with {} items unfinished",
            s.unfinished
        ))
    }
}

/// How a lease ended when its stream did: cleanly (the summary decides, and a stream
/// without one counts the attempt), or broken (before any event: the fetcher was never
/// there; after: the work's attempt counts).
pub fn stream_end(
    ctx: &Context,
    ended: Result<(), Status>,
    received_any: bool,
    summary: Option<LeaseEnd>,
) -> LeaseEnd {
    match ended {
        Ok(()) => summary.unwrap_or_else(|| LeaseEnd::counted("stream ended without a summary")),
        Err(status) if !received_any => refused_end(ctx, &status),
        Err(status) => LeaseEnd::counted(format!(
            "stream from {} broke: {}",
            ctx.fetcher,
            status.message()
        )),
    }
}

/// Follows one lease's stream into the checkpoint.
pub struct Follower<'a> {
    pub checkpoint: &'a Checkpoint,
    pub stats: &'a Stats,
    pub budget: &'a Budget,
    pub token: i64,
}

impl Follower<'_> {
    /// Starts the lease on `fetcher` and commits its events as they arrive, in batches;
    /// returns how it ended. A batch the checkpoint could not commit is an error: the run
    /// must not go on as if it were done.
    pub async fn follow(
        &self,
        fetcher: &FetcherHandle,
        lease: alldocs_proto::v1::Lease,
    ) -> Result<LeaseEnd, CheckpointError> {
        let ctx = Context {
            fetcher: fetcher.name().to_string(),
            auth: fetcher.auth_mode(),
            audience: fetcher.audience().map(str::to_string),
            store: lease.store_url.clone(),
            replicate_origin: lease.replicate_origin.clone(),
            registry: lease.registry.clone(),
        };
        let mut stream = match fetcher.fetch(lease).await {
            Ok(stream) => stream,
            Err(status) => return Ok(refused_end(&ctx, &status)),
        };
        let mut summary = None;
        let mut received_any = false;
        loop {
            let batch = next_batch(&mut stream, MAX_BATCH).await;
            received_any |= !batch.events.is_empty();
            if let Some(end) = self.observe(&batch.events) {
                summary = Some(end);
            }
            // The lease's last events are committed at once: its slot is free only then.
            let last = batch.ended.is_some() || summary.is_some();
            self.commit(batch.events, last).await?;
            if let Some(ended) = batch.ended {
                return Ok(stream_end(&ctx, ended, received_any, summary));
            }
        }
    }

    /// Logs failures and counts rows; returns the summary's verdict if the batch has one.
    fn observe(&self, events: &[Event]) -> Option<LeaseEnd> {
        let mut summary = None;
        for ev in events {
            match ev {
                Event::IndexRows(r) => {
                    self.stats
                        .rows
                        .fetch_add(r.rows.len() as u64, Ordering::Relaxed);
                }
                Event::Summary(s) => {
                    crate::fleet::metrics::FLEET.summary(s);
                    summary = Some(summary_end(s));
                }
                Event::Failed(f) if f.name.is_empty() => {
                    self.stats.failed(&f.name, &f.reason, f.retryable);
                    tracing::warn!(reason = %f.reason, retryable = f.retryable, "indexing a partition failed; is --replicate-origin right and reachable from here?");
                }
                Event::Failed(f) => {
                    self.stats.failed(&f.name, &f.reason, f.retryable);
                    tracing::warn!(name = %f.name, reason = %f.reason, retryable = f.retryable, "fetch failed");
                }
                Event::Throttled(t) => {
                    crate::fleet::metrics::FLEET.throttled(t.http_status);
                    let before = self.budget.current();
                    let rate = self.budget.throttled();
                    if rate < before {
                        tracing::warn!(
                            http_status = t.http_status,
                            retry_after_ms = t.retry_after_ms,
                            rate_limit_current = rate,
                            "the origin throttles; new leases go slower"
                        );
                    }
                }
                _ => {}
            }
        }
        summary
    }

    /// Applies a batch in one checkpoint call (a group commit with other leases' events
    /// unless it is the lease's last) and counts what it stored.
    async fn commit(&self, events: Vec<Event>, last: bool) -> Result<(), CheckpointError> {
        if events.is_empty() {
            return Ok(());
        }
        let bytes: u64 = events
            .iter()
            .map(|e| match e {
                Event::Stored(s) => s.bytes,
                _ => 0,
            })
            .sum();
        let token = self.token;
        let apply = move |db: &mut crate::checkpoint::Db| db.apply(token, &events);
        let stored = if last {
            self.checkpoint.call(apply).await?
        } else {
            self.checkpoint.call_grouped(apply).await?
        };
        self.stats.fetched.fetch_add(stored, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::refusal::Verdict;
    use alldocs_proto::v1::{IndexRows, PackumentMissing};

    fn event(e: Event) -> Result<FetchEvent, Status> {
        Ok(FetchEvent { event: Some(e) })
    }

    fn missing(name: &str) -> Event {
        Event::Missing(PackumentMissing {
            name: name.into(),
            http_status: 404,
        })
    }

    #[tokio::test]
    async fn a_batch_takes_what_has_arrived_and_notes_how_the_stream_ended() {
        let items = vec![
            event(missing("a")),
            event(missing("b")),
            event(missing("c")),
        ];
        let mut stream: EventStream = futures::stream::iter(items).boxed();
        let first = next_batch(&mut stream, 2).await;
        assert_eq!((first.events.len(), first.ended.is_some()), (2, false));
        let second = next_batch(&mut stream, 2).await;
        assert_eq!(second.events.len(), 1);
        assert!(
            matches!(second.ended, Some(Ok(()))),
            "the end is seen with the last event"
        );

        let broken = vec![
            event(Event::IndexRows(IndexRows::default())),
            Err(Status::unavailable("connection reset")),
            event(missing("never read")),
        ];
        let mut stream: EventStream = futures::stream::iter(broken).boxed();
        let batch = next_batch(&mut stream, 100).await;
        assert_eq!(batch.events.len(), 1);
        assert!(matches!(batch.ended, Some(Err(ref s)) if s.message() == "connection reset"));
    }

    #[test]
    fn how_a_stream_ends_decides_whether_the_attempt_counts() {
        let f = Context {
            fetcher: "f".into(),
            ..Default::default()
        };
        let finished = summary_end(&LeaseSummary::default());
        assert_eq!(
            stream_end(&f, Ok(()), true, Some(finished.clone())),
            finished
        );
        assert!(finished.count_attempt);
        let no_summary = stream_end(&f, Ok(()), true, None);
        assert!(no_summary.count_attempt && no_summary.outcome.contains("without a summary"));
        let never_there = stream_end(&f, Err(Status::unavailable("refused")), false, None);
        let rest = Verdict::Unreachable { retry_after: None };
        assert!(never_there.verdict == rest && !never_there.count_attempt);
        let broke = stream_end(&f, Err(Status::unavailable("reset")), true, None);
        assert!(
            broke.count_attempt && broke.verdict == Verdict::Answered,
            "{broke:?}"
        );
        assert!(broke.outcome.contains("stream from f broke: reset"));
        let stopped = summary_end(&LeaseSummary {
            unfinished: 3,
            ..Default::default()
        });
        assert!(
            !stopped.count_attempt,
            "a fetcher told to stop says nothing about the items"
        );
        let late = summary_end(&LeaseSummary {
            unfinished: 3,
            deadline_exceeded: true,
            ..Default::default()
        });
        assert!(late.count_attempt);
        assert!(refused_end(&f, &Status::invalid_argument("bad")).count_attempt);
        assert_eq!(refused_end(&f, &Status::unavailable("down")).verdict, rest);
        // An HTTP-level 401 arrives as the stream's first item: it stops the run.
        let refused = stream_end(
            &f,
            Err(Status::unauthenticated("HTTP status code 401")),
            false,
            None,
        );
        assert_eq!(refused.verdict, Verdict::Stop);
    }
}
