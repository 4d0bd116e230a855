//! Leases: a partition or a batch of packuments taken under a fencing token, and whatever
//! a lease did not finish given back (its attempt counted or not), failed past the limit.
//!
//! A partition in a lease is marked `leased` in its row. A packument in a lease is not:
//! which lease holds it is kept in memory ([`InFlight`]), so that a packument costs the
//! checkpoint one row write, when it is stored (or found missing), instead of three state
//! changes. Its row stays `pending` meanwhile, so after a crash it is simply pending again;
//! and since a lease lives only as long as the coordinator that handed it out, nothing
//! else needs it: a superseded lease's late events find the name held by another token, or
//! by none, and change nothing.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use crate::{checkpoint::Db, plan::Partition};

/// The packuments in a lease now: which token holds each.
#[derive(Debug, Default)]
pub struct InFlight {
    by_name: HashMap<String, i64>,
    by_token: HashMap<i64, Vec<String>>,
}

impl InFlight {
    /// Whether `token` holds `name`; if so it no longer does (its event is being applied).
    fn take(&mut self, name: &str, token: i64) -> bool {
        if self.by_name.get(name) != Some(&token) {
            return false;
        }
        self.by_name.remove(name);
        true
    }

    fn add(&mut self, token: i64, names: &[(String, String)]) {
        for (name, _) in names {
            self.by_name.insert(name.clone(), token);
        }
        self.by_token
            .entry(token)
            .or_default()
            .extend(names.iter().map(|(n, _)| n.clone()));
    }

    /// The lease `token` ends: what it still holds.
    fn end(&mut self, token: i64) -> Vec<String> {
        let names = self.by_token.remove(&token).unwrap_or_default();
        let held: Vec<String> = names
            .into_iter()
            .filter(|n| self.by_name.get(n) == Some(&token))
            .collect();
        for name in &held {
            self.by_name.remove(name);
        }
        held
    }

    /// No lease holds `name` any more (the feed changed it).
    pub(super) fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    pub(super) fn clear(&mut self) {
        self.by_name.clear();
        self.by_token.clear();
    }

    /// Packuments in a lease now.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn holds(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// What the coordinator tells a fetcher to do.
#[derive(Clone, Debug)]
pub enum Work {
    Index(Partition),
    Packuments(Vec<(String, String)>),
}

impl Db {
    /// Leases the first pending partition, if any.
    pub fn lease_partition(&mut self, token: i64) -> rusqlite::Result<Option<Partition>> {
        let part = self
            .conn
            .prepare_cached(
                "SELECT name, start_key, end_key FROM partitions WHERE status = 'pending' ORDER BY ord LIMIT 1",
            )?
            .query_row([], |r| {
                    Ok(Partition {
                        name: r.get(0)?,
                        start: r.get(1)?,
                        end: r.get(2)?,
                    })
            })
            .optional()?;
        if let Some(p) = &part {
            self.conn
                .prepare_cached(
                    "UPDATE partitions SET status = 'leased', lease_token = ?1 WHERE name = ?2",
                )?
                .execute(params![token, p.name])?;
        }
        Ok(part)
    }

    /// Leases up to `max` pending packuments of partitions whose index is finished, none
    /// already in a lease, first in (partition, name) order (so work given back is tried
    /// again first). Writes nothing: the lease's membership is kept in memory.
    pub fn lease_packuments(
        &mut self,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        self.lease_pending(LEASE_PACKUMENTS, token, max)
    }

    /// Leases up to `max` of the (name, indexed revision) rows `sql` selects in order
    /// (`LIMIT ?1`), skipping those already in a lease: they are pending too, so `sql` is
    /// asked for that many more (a few thousand at most).
    fn lease_pending(
        &mut self,
        sql: &str,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        let limit = max + self.in_flight.len();
        let rows: Vec<(String, String)> = self
            .conn
            .prepare_cached(sql)?
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let items: Vec<(String, String)> = rows
            .into_iter()
            .filter(|(n, _)| !self.in_flight.holds(n))
            .take(max)
            .collect();
        self.in_flight.add(token, &items);
        Ok(items)
    }

    /// Records a lease being handed out.
    pub fn record_lease(
        &self,
        token: i64,
        work: &Work,
        fetcher: &str,
        deadline_ms: i64,
    ) -> rusqlite::Result<()> {
        let (kind, items) = match work {
            Work::Index(_) => ("index", 1),
            Work::Packuments(items) => ("packuments", items.len()),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO leases (token, kind, items, fetcher, started_ms, deadline_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![token, kind, items as i64, fetcher, alldocs_proto::now_unix_ms(), deadline_ms])?;
        Ok(())
    }

    /// Ends a lease: whatever it still holds returns to pending, with the attempt counted
    /// if `count_attempt` (then failing past the limit). Returns how many items went back.
    pub fn end_lease(
        &mut self,
        token: i64,
        outcome: &str,
        count_attempt: bool,
    ) -> rusqlite::Result<u64> {
        let limit = self.max_attempts as i64;
        let add = i64::from(count_attempt);
        // Packages marked `leased` by a coordinator before schema 6 go back the same way.
        let mut returned = 0;
        for table in ["partitions", "packages"] {
            returned += self.give_back(table, token, None, outcome, add, limit)?;
        }
        let unfinished = self.in_flight.end(token);
        returned += unfinished.len();
        if count_attempt {
            for name in &unfinished {
                self.count_attempt(name, outcome, limit)?;
            }
        }
        self.conn
            .prepare_cached("UPDATE leases SET ended_ms = ?1, outcome = ?2 WHERE token = ?3")?
            .execute(params![alldocs_proto::now_unix_ms(), outcome, token])?;
        Ok(returned as u64)
    }

    /// Everything leased goes back to pending, as it was (no attempt counted).
    pub(super) fn unlease_all(&mut self) -> rusqlite::Result<()> {
        self.in_flight.clear();
        self.conn.execute_batch(
            "UPDATE partitions SET status = 'pending', lease_token = NULL WHERE status = 'leased'",
        )?;
        self.conn.execute_batch(UNLEASE_PACKAGES)
    }

    /// Gives back the work of every lease still open, with no attempt counted, and ends
    /// those leases with `outcome`: for a run that stops while leases are in flight.
    pub fn release_open_leases(&mut self, outcome: &str) -> rusqlite::Result<()> {
        self.unlease_all()?;
        self.conn.execute(
            "UPDATE leases SET ended_ms = ?1, outcome = ?2 WHERE ended_ms IS NULL",
            params![alldocs_proto::now_unix_ms(), outcome],
        )?;
        self.cached = None;
        Ok(())
    }

    /// Gives back what `token` holds in `table` (only `name`, if given): the attempt
    /// counted `add` times, then failed with `reason` once attempts reach `limit`, else
    /// pending again. Returns how many rows went back.
    pub(super) fn give_back(
        &self,
        table: &str,
        token: i64,
        name: Option<&str>,
        reason: &str,
        add: i64,
        limit: i64,
    ) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(&give_back_sql(table, name.is_some()))?
            .execute(params![add, reason, limit, token, name])
    }

    /// Counts an attempt of a packument no lease holds any more: failed with `reason` once
    /// attempts reach `limit`, else pending again.
    pub(super) fn count_attempt(
        &self,
        name: &str,
        reason: &str,
        limit: i64,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE packages SET attempts = attempts + 1, last_error = ?2,
                     status = CASE WHEN attempts + 1 >= ?3 THEN 'failed' ELSE 'pending' END
                 WHERE name = ?1 AND status = 'pending'",
            )?
            .execute(params![name, reason, limit])?;
        Ok(())
    }

    /// Whether lease `token` holds packument `name`; if so, it is released to the caller,
    /// which applies its event.
    pub(super) fn take_packument(&mut self, name: &str, token: i64) -> bool {
        self.in_flight.take(name, token)
    }

    /// Packuments in a lease now.
    pub fn packuments_in_flight(&self) -> u64 {
        self.in_flight.len() as u64
    }

    pub(super) fn holds_partition(&self, token: i64, partition: &str) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM partitions WHERE name = ?1 AND lease_token = ?2 AND status = 'leased'",
            )?
            .exists(params![partition, token])
    }

    /// Makes `names` the run's wanted list: each goes (back) to pending in the partition its
    /// key falls in, a new one with no indexed revision yet. Nothing else changes.
    pub fn want(&mut self, names: &[String], plan: &[Partition]) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM wanted", [])?;
        for name in names {
            let partition = crate::plan::partition_of(plan, name);
            self.conn
                .execute("INSERT INTO wanted (name) VALUES (?1)", [name])?;
            self.conn.execute(
                "INSERT INTO packages (name, partition, indexed_rev, status, seen_run)
                     VALUES (?1, ?2, '', 'pending', 0)
                 ON CONFLICT(name) DO UPDATE SET status = 'pending', attempts = 0,
                     last_error = NULL, lease_token = NULL",
                params![name, partition],
            )?;
        }
        self.cached = None;
        Ok(())
    }

    /// Leases up to `max` pending names of the wanted list.
    pub fn lease_wanted(
        &mut self,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        self.lease_pending(
            "SELECT p.name, p.indexed_rev FROM wanted w JOIN packages p ON p.name = w.name
             WHERE p.status = 'pending' ORDER BY p.name LIMIT ?1",
            token,
            max,
        )
    }

    /// How the wanted names ended: (listed, stored, missing, failed).
    pub fn wanted_counts(&self) -> rusqlite::Result<(u64, u64, u64, u64)> {
        self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(p.status = 'stored'), 0),
                    COALESCE(SUM(p.status = 'missing'), 0), COALESCE(SUM(p.status = 'failed'), 0)
             FROM wanted w JOIN packages p ON p.name = w.name",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            },
        )
    }
}

/// Pending packuments of indexed partitions in (partition, name) order, at most ?1: the
/// partial index of pending packages walked in its own order, stopping after LIMIT rows.
pub(super) const LEASE_PACKUMENTS: &str =
    "SELECT name, indexed_rev FROM packages INDEXED BY packages_pending
     WHERE status = 'pending'
       AND partition IN (SELECT name FROM partitions WHERE status IN ('done', 'failed'))
     LIMIT ?1";

/// Every package marked leased (by a coordinator before schema 6) back to pending.
pub(super) const UNLEASE_PACKAGES: &str =
    "UPDATE packages SET status = 'pending', lease_token = NULL WHERE status = 'leased'";

/// Gives back (?1 attempts added, ?2 the reason, failed at ?3 attempts) what lease ?4
/// holds in `table`: one name (?5) by its key, or the whole lease by its token (for
/// packages, through the leased index).
pub(super) fn give_back_sql(table: &str, by_name: bool) -> String {
    let which = if by_name {
        "name = ?5 AND lease_token = ?4"
    } else {
        "lease_token = ?4 AND ?5 IS NULL"
    };
    format!(
        "UPDATE {table} SET attempts = attempts + ?1, last_error = ?2, lease_token = NULL,
             status = CASE WHEN attempts + ?1 >= ?3 THEN 'failed' ELSE 'pending' END
         WHERE {which} AND status = 'leased'"
    )
}
