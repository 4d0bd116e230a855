//! A lease's work: doing it (an index page run, or packuments fetched and kept, sealed
//! into packs when due), tallying what it did, and reporting each outcome as an event.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use alldocs_proto::v1::{
    lease::Work, Accept, ItemFailed, Layout, Lease, LeaseSummary, PackumentWork,
};
use futures::StreamExt;

use crate::{
    source::events::{ClientGone, EventSink},
    source::http::{FetchError, Http},
    source::index,
    source::packs::{Packer, Sealed},
    source::packument::{self, Outcome, Place},
    store::Store,
};

/// What a lease did so far.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) rows: AtomicU64,
    pub(super) stored: AtomicU64,
    pub(super) missing: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) bytes: AtomicU64,
}

pub(super) fn summary_for(
    lease: &Lease,
    tally: &Tally,
    started: Instant,
    total: u64,
    deadline_exceeded: bool,
) -> LeaseSummary {
    let stored = tally.stored.load(Ordering::Relaxed);
    let missing = tally.missing.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let finished = match lease.work {
        Some(Work::Index(_)) => stored + failed,
        _ => stored + missing + failed,
    };
    LeaseSummary {
        lease_id: lease.lease_id.clone(),
        fencing_token: lease.fencing_token,
        rows: tally.rows.load(Ordering::Relaxed),
        stored,
        missing,
        failed,
        bytes: tally.bytes.load(Ordering::Relaxed),
        requests: 0,
        retries: 0,
        duration_ms: started.elapsed().as_millis() as u64,
        unfinished: total.saturating_sub(finished),
        deadline_exceeded,
        throttled: 0,
    }
}

pub(super) fn work_size(lease: &Lease) -> u64 {
    match &lease.work {
        Some(Work::Index(_)) => 1,
        Some(Work::Packuments(p)) => p.items.len() as u64,
        None => 0,
    }
}

pub(super) fn deadline_of(lease: &Lease) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    if lease.deadline_unix_ms <= 0 {
        return now + Duration::from_secs(365 * 24 * 3600);
    }
    let left = lease
        .deadline_unix_ms
        .saturating_sub(alldocs_proto::now_unix_ms());
    now + Duration::from_millis(left.max(0) as u64)
}

/// Does the lease's work; returns how many items it had.
pub(super) async fn do_work(
    lease: &Lease,
    http: &Http,
    store: &Store,
    sink: &EventSink,
    tally: &Tally,
) -> u64 {
    match &lease.work {
        Some(Work::Index(work)) => {
            match index::run(http, &lease.replicate_origin, store, work, sink).await {
                Ok(outcome) => {
                    tally.rows.store(outcome.done.rows, Ordering::Relaxed);
                    tally.bytes.store(outcome.done.bytes, Ordering::Relaxed);
                    tally.stored.store(1, Ordering::Relaxed);
                    let _ = sink.index_done(outcome.done).await;
                }
                Err(e) => {
                    tally.failed.store(1, Ordering::Relaxed);
                    let _ = sink.failed(failure(String::new(), &e)).await;
                }
            }
            1
        }
        Some(Work::Packuments(work)) => {
            fetch_packuments(lease, work, http, store, sink, tally).await;
            work.items.len() as u64
        }
        None => 0,
    }
}

async fn fetch_packuments(
    lease: &Lease,
    work: &PackumentWork,
    http: &Http,
    store: &Store,
    sink: &EventSink,
    tally: &Tally,
) {
    let packer = (lease.layout() == Layout::Packs).then(|| {
        Packer::new(
            store.clone(),
            &lease.snapshot_id,
            lease.fencing_token,
            lease.pack_bytes,
            Duration::from_millis(u64::from(lease.pack_interval_ms)),
        )
    });
    let target = packument::Target {
        registry: &lease.registry,
        place: match &packer {
            Some(packer) => Place::Pack(packer),
            None => Place::File(store),
        },
        accept: Accept::try_from(lease.accept).unwrap_or(Accept::Full),
        max_document_bytes: lease.max_document_bytes,
    };
    let concurrency = lease.concurrency.max(1) as usize;
    let mut results = futures::stream::iter(work.items.iter().cloned())
        .map(|item| async move {
            let res = packument::fetch(http, target, &item.name, &item.rev, &tally.bytes).await;
            (item, res)
        })
        .buffer_unordered(concurrency);
    loop {
        let due = packer.as_ref().and_then(Packer::due);
        let sent = tokio::select! {
            next = results.next() => match next {
                None => break,
                Some((item, res)) => report(&item.name, res, sink, tally).await,
            },
            // Sealing runs in the handler, never raced: a seal cut off halfway would leave
            // a durable pack whose packuments were never reported.
            () = sleep_until_due(due) => match packer.as_ref() {
                Some(packer) => match packer.seal_if_due().await {
                    Some(sealed) => report_sealed(sealed, sink, tally).await,
                    None => Ok(()),
                },
                None => Ok(()),
            },
        };
        let failed = packer.as_ref().map(Packer::take_failed).unwrap_or_default();
        if sent.is_err() || report_failed(failed, sink, tally).await.is_err() {
            return;
        }
    }
    if let Some(packer) = &packer {
        if let Some(sealed) = packer.seal().await {
            if report_sealed(sealed, sink, tally).await.is_err() {
                return;
            }
        }
        let _ = report_failed(packer.take_failed(), sink, tally).await;
    }
}

/// Resolves once the open pack is due to be sealed; never, with no pack open.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends what became of one name.
async fn report(
    name: &str,
    res: Result<Outcome, FetchError>,
    sink: &EventSink,
    tally: &Tally,
) -> Result<(), ClientGone> {
    match res {
        Ok(Outcome::Stored(stored)) => {
            tally.stored.fetch_add(1, Ordering::Relaxed);
            sink.stored(stored).await
        }
        Ok(Outcome::Missing(missing)) => {
            tally.missing.fetch_add(1, Ordering::Relaxed);
            sink.missing(missing).await
        }
        Ok(Outcome::Held) => Ok(()),
        Ok(Outcome::Sealed(sealed)) => report_sealed(sealed, sink, tally).await,
        Err(e) => {
            tracing::warn!(name = %name, error = %e, "packument failed");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            sink.failed(failure(name.to_string(), &e)).await
        }
    }
}

/// Sends a sealed pack, then each packument in it; or the failures of one that was not.
async fn report_sealed(sealed: Sealed, sink: &EventSink, tally: &Tally) -> Result<(), ClientGone> {
    if let Some(pack) = sealed.pack {
        sink.pack_sealed(pack).await?;
    }
    for stored in sealed.stored {
        tally.stored.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(stored.bytes, Ordering::Relaxed);
        sink.stored(stored).await?;
    }
    report_failed(sealed.failed, sink, tally).await
}

async fn report_failed(
    failed: Vec<ItemFailed>,
    sink: &EventSink,
    tally: &Tally,
) -> Result<(), ClientGone> {
    for f in failed {
        tracing::warn!(name = %f.name, error = %f.reason, "packument failed");
        tally.failed.fetch_add(1, Ordering::Relaxed);
        sink.failed(f).await?;
    }
    Ok(())
}

fn failure(name: String, e: &FetchError) -> ItemFailed {
    ItemFailed {
        name,
        reason: e.to_string(),
        retryable: e.retryable(),
        http_status: e.status().map_or(0, |s| u32::from(s.as_u16())),
    }
}
