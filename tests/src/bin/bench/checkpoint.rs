//! `bench --checkpoint-events N`: how fast the real SQLite checkpoint (WAL,
//! `synchronous=FULL`) takes index rows and packument events, driven as the scheduler does.

use std::path::Path;
use std::time::{Duration, Instant};

use alldocs_coordinator::checkpoint::{Checkpoint, RunIdentity, Work};
use alldocs_coordinator::plan::partitions;
use alldocs_proto::v1::{fetch_event::Event, IndexDone, IndexRow, IndexRows, PackumentStored};
use anyhow::{ensure, Result};
use serde_json::json;

/// Rows per `IndexRows` event (a fetcher sends a page's rows at once).
const ROWS_PER_EVENT: usize = 1_000;
/// Leases open at once, as with the coordinator's default --max-in-flight.
const LEASES: usize = 8;
/// Packuments per lease (the default --lease-size).
const LEASE_SIZE: usize = 500;
/// Events in one commit call of a lease stream (what arrives while the previous commits).
const EVENTS_PER_CALL: usize = 64;

/// What the checkpoint did.
pub struct Figures {
    pub names: usize,
    pub index: Duration,
    pub stored: Duration,
    pub commits: u64,
}

impl Figures {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "names": self.names,
            "index_seconds": self.index.as_secs_f64(),
            "index_rows_per_second": self.names as f64 / self.index.as_secs_f64(),
            "stored_seconds": self.stored.as_secs_f64(),
            "stored_events_per_second": self.names as f64 / self.stored.as_secs_f64(),
            "commit_calls": self.commits,
            "leases_at_once": LEASES,
            "lease_size": LEASE_SIZE,
            "events_per_call": EVENTS_PER_CALL,
        })
    }

    pub fn to_table(&self) -> String {
        format!(
            "checkpoint bench ({} names)\n  index rows/s ({ROWS_PER_EVENT} per event)      {:.0}\n  stored events/s ({LEASES} leases of {LEASE_SIZE}, {EVENTS_PER_CALL} per call)  {:.0}\n  commit calls                               {}\n",
            self.names,
            self.names as f64 / self.index.as_secs_f64(),
            self.names as f64 / self.stored.as_secs_f64(),
            self.commits,
        )
    }
}

/// Indexes `n` names into a fresh checkpoint in `dir`, then stores every one of them
/// through leases, and checks the counts at the end.
pub async fn run(n: usize, dir: &Path) -> Result<Figures> {
    let identity = RunIdentity {
        replicate_origin: "http://127.0.0.1:9/".into(),
        registry: "http://127.0.0.1:9/".into(),
        store: "memory://checkpoint-bench".into(),
        pivots: Vec::new(),
        accept: "full".into(),
        layout: None,
    };
    let plan = partitions::<String>(&[]);
    let (ck, _) = Checkpoint::open(&dir.join("checkpoint-bench.sqlite"), &identity, &plan, 3)?;

    let started = Instant::now();
    index(&ck, n).await?;
    let index = started.elapsed();

    let started = Instant::now();
    let mut commits = 0;
    let workers: Vec<_> = (0..LEASES)
        .map(|_| tokio::spawn(store_all(ck.clone())))
        .collect();
    for w in workers {
        commits += w.await??;
    }
    let stored = started.elapsed();
    let counts = ck.call(|db| db.counts_now()).await?;
    ensure!(
        counts.packuments_done == n as u64,
        "the checkpoint counts {} stored, expected {n}",
        counts.packuments_done
    );
    Ok(Figures {
        names: n,
        index,
        stored,
        commits,
    })
}

/// One partition's `n` rows, a page at a time, each page one commit call.
async fn index(ck: &Checkpoint, n: usize) -> Result<()> {
    let (token, partition) = ck
        .call(|db| {
            let token = db.next_token()?;
            let p = db.lease_partition(token)?.expect("the plan's partition");
            Ok((token, p.name))
        })
        .await?;
    for start in (0..n).step_by(ROWS_PER_EVENT) {
        let rows = (start..n.min(start + ROWS_PER_EVENT))
            .map(|i| IndexRow {
                id: name(i),
                rev: format!("1-{i:032x}"),
            })
            .collect();
        let event = Event::IndexRows(IndexRows {
            partition: partition.clone(),
            rows,
        });
        ck.call(move |db| db.apply(token, &[event])).await?;
    }
    let done = Event::IndexDone(IndexDone {
        partition,
        rows: n as u64,
        ..Default::default()
    });
    ck.call(move |db| db.apply(token, &[done])).await?;
    Ok(())
}

/// Leases packuments until none is left, storing each lease's items in calls of
/// [`EVENTS_PER_CALL`] events; returns the commit calls made.
async fn store_all(ck: Checkpoint) -> Result<u64> {
    let mut calls = 0;
    loop {
        let (token, items) = ck
            .call(|db| {
                let token = db.next_token()?;
                let items = db.lease_packuments(token, LEASE_SIZE)?;
                let work = Work::Packuments(items.clone());
                db.record_lease(token, &work, "bench", i64::MAX)?;
                Ok((token, items))
            })
            .await?;
        if items.is_empty() {
            return Ok(calls);
        }
        for chunk in items.chunks(EVENTS_PER_CALL) {
            let events: Vec<Event> = chunk
                .iter()
                .map(|(name, rev)| {
                    Event::Stored(PackumentStored {
                        name: name.clone(),
                        rev: rev.clone(),
                        uri: format!("memory://checkpoint-bench/packuments/{name}.json"),
                        bytes: 4_000,
                        doc_rev: rev.clone(),
                        etag: String::new(),
                        ..Default::default()
                    })
                })
                .collect();
            ck.call(move |db| db.apply(token, &events)).await?;
            calls += 1;
        }
        ck.call(move |db| db.end_lease(token, "finished", true))
            .await?;
        calls += 2;
    }
}

fn name(i: usize) -> String {
    format!("pkg-{i:09}")
}
