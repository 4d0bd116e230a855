//! What progress is made of: the counts behind `Progress` (cached briefly), the partitions
//! and the failures listed page by page, and failed items put back on demand.

use std::time::{Duration, Instant};

use alldocs_proto::v1::{Failure, Partition as PartitionInfo};
use rusqlite::params;

use crate::checkpoint::Db;

/// Counts behind `Progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub partitions_total: u64,
    pub partitions_done: u64,
    pub partitions_failed: u64,
    pub partitions_pending: u64,
    pub partitions_leased: u64,
    pub rows_indexed: u64,
    pub packuments_total: u64,
    pub packuments_done: u64,
    pub packuments_missing: u64,
    pub packuments_failed: u64,
    pub packuments_pending: u64,
    pub packuments_leased: u64,
    pub bytes_stored: u64,
    pub packuments_rev_mismatch: u64,
    /// Packuments fetched (stored or found missing) in this run, by any process.
    pub fetched_this_run: u64,
    /// Packuments the feed said were deleted (not in `packuments_total`).
    pub packuments_deleted: u64,
    /// How new packuments are stored.
    pub layout: crate::checkpoint::Layout,
    /// Packs sealed, and their bytes (trailers included).
    pub packs: u64,
    pub pack_bytes: u64,
    /// Pack bytes that hold a package's current copy (the rest is dead: older copies,
    /// packages no longer listed, trailers; `coordinator compact` reclaims it).
    pub pack_bytes_live: u64,
    /// Stored packuments with no SHA-256 recorded (stored before schema 6, until fetched
    /// again).
    pub packuments_without_digest: u64,
}

impl Counts {
    /// Nothing pending or leased, and no pending packument that could still be leased.
    pub fn is_done(&self) -> bool {
        self.partitions_pending == 0
            && self.partitions_leased == 0
            && self.packuments_pending == 0
            && self.packuments_leased == 0
    }
}

/// Where a page of failures starts: after this kind (0 partition, 1 packument) and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureCursor {
    pub kind: i64,
    pub name: String,
}

impl FailureCursor {
    /// The opaque `page_token` of the API.
    pub fn token(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (kind, name) = token.split_once(':')?;
        let kind = kind.parse().ok().filter(|k| matches!(k, 0 | 1))?;
        Some(Self {
            kind,
            name: name.to_string(),
        })
    }
}

/// One page of failures.
#[derive(Clone, Debug)]
pub struct FailurePage {
    pub failures: Vec<Failure>,
    pub total: u64,
    /// Where the next page starts, if there is one.
    pub next: Option<FailureCursor>,
}

impl FailurePage {
    /// From up to `limit + 1` rows: the extra one only says that another page follows.
    pub(super) fn new(mut failures: Vec<Failure>, limit: usize, total: u64) -> Self {
        let more = failures.len() > limit;
        failures.truncate(limit);
        let next = failures.last().filter(|_| more).map(|f| FailureCursor {
            kind: i64::from(f.kind == "packument"),
            name: f.name.clone(),
        });
        Self {
            failures,
            total,
            next,
        }
    }
}

impl Db {
    /// Counts at most a second old (older on a huge checkpoint, where counting costs more:
    /// never more than a tenth of the checkpoint thread's time). Exact once the run is
    /// done, since the scheduler counts afresh then.
    pub fn counts(&mut self) -> rusqlite::Result<Counts> {
        if let Some((at, cost, counts)) = self.cached {
            if at.elapsed() < cost.saturating_mul(10).max(Duration::from_secs(1)) {
                return Ok(counts);
            }
        }
        self.counts_now()
    }

    /// Exact counts, computed now.
    pub fn counts_now(&mut self) -> rusqlite::Result<Counts> {
        let started = Instant::now();
        let mut c = Counts::default();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT status, COUNT(*) FROM partitions GROUP BY status")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (status, n): (String, i64) = (r.get(0)?, r.get(1)?);
                let n = n as u64;
                c.partitions_total += n;
                match status.as_str() {
                    "done" => c.partitions_done = n,
                    "failed" => c.partitions_failed = n,
                    "leased" => c.partitions_leased = n,
                    _ => c.partitions_pending += n,
                }
            }
        }
        {
            let mut stmt = self.conn.prepare_cached(COUNT_PACKAGES)?;
            let v: [i64; 12] = stmt.query_row([self.run], |r| {
                let mut v = [0; 12];
                for (i, x) in v.iter_mut().enumerate() {
                    *x = r.get(i)?;
                }
                Ok(v)
            })?;
            let [seen, fetched, deleted, stored, bytes, mismatch, missing, failed, leased, pending, live, undigested] =
                v.map(|n| n as u64);
            c.pack_bytes_live = live;
            c.packuments_without_digest = undigested;
            c.rows_indexed = seen;
            c.fetched_this_run = fetched;
            c.packuments_deleted = deleted;
            c.packuments_done = stored;
            c.bytes_stored = bytes;
            c.packuments_rev_mismatch = mismatch;
            c.packuments_missing = missing;
            c.packuments_failed = failed;
            // A packument in a lease is `pending` in its row (leases live in memory), but
            // for `leased` rows a coordinator before schema 6 left.
            let in_flight = self.packuments_in_flight();
            c.packuments_leased = leased + in_flight;
            c.packuments_pending = pending.saturating_sub(in_flight);
            c.packuments_total = stored + missing + failed + leased + pending;
        }
        let (packs, pack_bytes): (i64, i64) = self
            .conn
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM packs")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        (c.packs, c.pack_bytes) = (packs as u64, pack_bytes as u64);
        c.layout = self.layout()?.0;
        self.cached = Some((Instant::now(), started.elapsed(), c));
        Ok(c)
    }

    pub fn list_partitions(&self) -> rusqlite::Result<Vec<PartitionInfo>> {
        let mut stmt = self.conn.prepare(
            "WITH k AS (
                 SELECT partition,
                        SUM(status NOT IN ('removed', 'deleted')) AS total,
                        SUM(status = 'stored') AS stored
                 FROM packages GROUP BY partition
             )
             SELECT p.name, p.start_key, p.end_key, p.status, p.rows, COALESCE(p.uri, ''), p.attempts,
                    COALESCE(p.last_error, ''), COALESCE(k.total, 0), COALESCE(k.stored, 0)
             FROM partitions p LEFT JOIN k ON k.partition = p.name ORDER BY p.ord",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PartitionInfo {
                name: r.get(0)?,
                start: r.get(1)?,
                end: r.get(2)?,
                status: r.get(3)?,
                rows: r.get::<_, i64>(4)? as u64,
                uri: r.get(5)?,
                attempts: r.get::<_, i64>(6)? as u32,
                last_error: r.get(7)?,
                packuments_total: r.get::<_, i64>(8)? as u64,
                packuments_done: r.get::<_, i64>(9)? as u64,
            })
        })?;
        rows.collect()
    }

    /// One page of failures after `after` (partitions first, then packuments, each by
    /// name), at most `limit`; with the total and where the next page starts.
    pub fn list_failures(
        &self,
        limit: u32,
        after: Option<&FailureCursor>,
    ) -> rusqlite::Result<FailurePage> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kind, name, reason, attempts FROM (
                 SELECT 0 AS k, 'partition' AS kind, name, COALESCE(last_error, '') AS reason, attempts
                     FROM partitions WHERE status = 'failed'
                 UNION ALL
                 SELECT 1, 'packument', name, COALESCE(last_error, ''), attempts
                     FROM packages WHERE status = 'failed')
             WHERE (k, name) > (?1, ?2) ORDER BY k, name LIMIT ?3",
        )?;
        let (k, name) = after.map_or((-1, ""), |c| (c.kind, c.name.as_str()));
        let failures = stmt
            .query_map(params![k, name, i64::from(limit) + 1], |r| {
                Ok(Failure {
                    kind: r.get(0)?,
                    name: r.get(1)?,
                    reason: r.get(2)?,
                    attempts: r.get::<_, i64>(3)? as u32,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let total: i64 = self.conn.query_row(FAILURES_TOTAL, [], |r| r.get(0))?;
        Ok(FailurePage::new(failures, limit as usize, total as u64))
    }

    /// Returns failed items (all, or those named) to pending with fresh attempts.
    pub fn retry_failed(&mut self, names: &[String]) -> rusqlite::Result<(u64, u64)> {
        let (parts, pkgs) = if names.is_empty() {
            (
                self.conn.execute(
                    "UPDATE partitions SET status = 'pending', attempts = 0 WHERE status = 'failed'",
                    [],
                )?,
                self.conn.execute(
                    "UPDATE packages SET status = 'pending', attempts = 0 WHERE status = 'failed'",
                    [],
                )?,
            )
        } else {
            let (mut parts, mut pkgs) = (0, 0);
            for name in names {
                parts += self.conn.execute(
                    "UPDATE partitions SET status = 'pending', attempts = 0 WHERE status = 'failed' AND name = ?1",
                    [name],
                )?;
                pkgs += self.conn.execute(
                    "UPDATE packages SET status = 'pending', attempts = 0 WHERE status = 'failed' AND name = ?1",
                    [name],
                )?;
            }
            (parts, pkgs)
        };
        if parts + pkgs > 0 {
            self.set_run_complete(false)?;
        }
        self.cached = None;
        Ok((parts as u64, pkgs as u64))
    }
}

/// Leases up to ?2 pending names for lease ?1, returning them: names from the pending
/// index in (partition, name) order, which stops after LIMIT rows instead of sorting
/// every pending name.
/// Every stored package's name, in order (walking the name index: nothing is sorted).
pub const STORED_NAMES: &str = "SELECT name FROM packages WHERE status = 'stored' ORDER BY name";

/// Every stored package with where its bytes are, in order (the same walk, each pack
/// found by its key).
pub const STORED_LOCATIONS: &str =
    "SELECT p.name, p.bytes, p.sha256, p.pack, k.uri, p.pack_offset, p.pack_length
     FROM packages p LEFT JOIN packs k ON k.id = p.pack WHERE p.status = 'stored' ORDER BY p.name";

/// Every package stored as a file of its own, with its digest, in order (the same walk).
pub const STORED_FILES: &str =
    "SELECT name, sha256 FROM packages WHERE status = 'stored' AND pack IS NULL ORDER BY name";

/// Every package figure of [`Counts`] (?1 the run), in one pass and as one row: a GROUP
/// BY status would sort every package in memory, there being no index over every status.
pub(super) const COUNT_PACKAGES: &str =
    "SELECT COALESCE(SUM(seen_run = ?1), 0), COALESCE(SUM(fetched_run = ?1), 0),
            COUNT(*) FILTER (WHERE status = 'deleted'),
            COUNT(*) FILTER (WHERE status = 'stored'),
            COALESCE(SUM(bytes) FILTER (WHERE status = 'stored'), 0),
            COUNT(*) FILTER (WHERE status = 'stored' AND doc_rev IS NOT NULL
                             AND doc_rev != '' AND doc_rev != indexed_rev),
            COUNT(*) FILTER (WHERE status = 'missing'),
            COUNT(*) FILTER (WHERE status = 'failed'),
            COUNT(*) FILTER (WHERE status = 'leased'),
            COUNT(*) FILTER (WHERE status NOT IN
                ('stored', 'missing', 'failed', 'leased', 'removed', 'deleted')),
            COALESCE(SUM(pack_length) FILTER (WHERE pack IS NOT NULL), 0),
            COUNT(*) FILTER (WHERE status = 'stored' AND sha256 IS NULL)
     FROM packages";

/// How many partitions and packages failed.
pub(super) const FAILURES_TOTAL: &str =
    "SELECT (SELECT COUNT(*) FROM partitions WHERE status = 'failed')
     + (SELECT COUNT(*) FROM packages WHERE status = 'failed')";
