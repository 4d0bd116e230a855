//! Leases: a partition or a batch of packuments taken under a fencing token, and whatever
//! a lease did not finish given back (its attempt counted or not), failed past the limit.

use rusqlite::{params, OptionalExtension};

use crate::{checkpoint::Db, plan::Partition};

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

    /// Leases up to `max` pending packuments of partitions whose index is finished, in one
    /// statement.
    pub fn lease_packuments(
        &mut self,
        token: i64,
        max: usize,
    ) -> rusqlite::Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(LEASE_PACKUMENTS)?;
        let rows = stmt.query_map(params![token, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// Hands `items` to the lease `token`.
    pub(super) fn mark_leased(
        &self,
        token: i64,
        items: &[(String, String)],
    ) -> rusqlite::Result<()> {
        let mut update = self.conn.prepare_cached(
            "UPDATE packages SET status = 'leased', lease_token = ?1 WHERE name = ?2",
        )?;
        for (name, _) in items {
            update.execute(params![token, name])?;
        }
        Ok(())
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
        let mut returned = 0;
        for table in ["partitions", "packages"] {
            returned += self.give_back(table, token, None, outcome, add, limit)?;
        }
        self.conn
            .prepare_cached("UPDATE leases SET ended_ms = ?1, outcome = ?2 WHERE token = ?3")?
            .execute(params![alldocs_proto::now_unix_ms(), outcome, token])?;
        Ok(returned as u64)
    }

    /// Everything leased goes back to pending, as it was (no attempt counted).
    pub(super) fn unlease_all(&self) -> rusqlite::Result<()> {
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
        let items: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT p.name, p.indexed_rev FROM wanted w JOIN packages p ON p.name = w.name
                 WHERE p.status = 'pending' ORDER BY p.name LIMIT ?1",
            )?
            .query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.mark_leased(token, &items)?;
        Ok(items)
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

pub(super) const LEASE_PACKUMENTS: &str = "UPDATE packages SET status = 'leased', lease_token = ?1
     WHERE name IN (
         SELECT name FROM packages INDEXED BY packages_pending
         WHERE status = 'pending'
           AND partition IN (SELECT name FROM partitions WHERE status IN ('done', 'failed'))
         LIMIT ?2)
     RETURNING name, indexed_rev";

/// Every leased package back to pending.
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
