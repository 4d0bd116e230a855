//! The events a lease streams back, applied in the caller's transaction: index rows,
//! a partition done, a packument stored, missing or failed. Only the current attempt's
//! events change anything.

use alldocs_proto::v1::{fetch_event::Event, IndexDone, IndexRows, PackumentStored};
use rusqlite::{params, OptionalExtension};

use crate::checkpoint::Db;

impl Db {
    /// Applies a lease's events; those of a superseded lease (another token now holds the
    /// item) change nothing. Returns how many packuments this batch stored.
    pub fn apply(&mut self, token: i64, events: &[Event]) -> rusqlite::Result<u64> {
        let mut stored = 0;
        for event in events {
            match event {
                Event::IndexRows(rows) => self.apply_rows(token, rows)?,
                Event::IndexDone(done) => self.apply_done(token, done)?,
                Event::Stored(s) => stored += self.apply_stored(token, s)?,
                Event::Missing(m) => {
                    // Prepared once per connection: one statement per event is hot.
                    self.conn
                        .prepare_cached(
                            // No revision is stored: a name that 404s briefly (or for good)
                            // is asked for again by the next run, not frozen as missing.
                            "UPDATE packages SET status = 'missing', stored_rev = NULL, uri = NULL, bytes = 0,
                                 last_error = ?1, lease_token = NULL, fetched_run = ?4
                             WHERE name = ?2 AND lease_token = ?3 AND status = 'leased'",
                        )?
                        .execute(params![
                            format!("HTTP {}", m.http_status),
                            m.name,
                            token,
                            self.run
                        ])?;
                }
                Event::Failed(f) => {
                    // A failure that retrying cannot help fails at once.
                    let limit = if f.retryable {
                        self.max_attempts as i64
                    } else {
                        0
                    };
                    let (table, name) = match f.name.as_str() {
                        "" => ("partitions", None),
                        name => ("packages", Some(name)),
                    };
                    self.give_back(table, token, name, &f.reason, 1, limit)?;
                }
                Event::Summary(_) | Event::Throttled(_) => {}
            }
        }
        Ok(stored)
    }

    pub(super) fn apply_rows(&mut self, token: i64, rows: &IndexRows) -> rusqlite::Result<()> {
        if !self.holds_partition(token, &rows.partition)? {
            return Ok(());
        }
        if let Some(reason) = oversized_row(rows) {
            // A fetcher must never send such a row: fail this attempt of the partition
            // (tried again up to the limit) and keep none of it.
            let limit = self.max_attempts as i64;
            let part = Some(rows.partition.as_str());
            self.give_back("partitions", token, part, &reason, 1, limit)?;
            return Ok(());
        }
        for row in &rows.rows {
            self.upsert_package(&rows.partition, &row.id, &row.rev)?;
        }
        Ok(())
    }

    pub(super) fn apply_done(&mut self, token: i64, done: &IndexDone) -> rusqlite::Result<()> {
        if !self.holds_partition(token, &done.partition)? {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "UPDATE partitions SET status = 'done', rows = ?1, uri = ?2, last_error = NULL, lease_token = NULL
                 WHERE name = ?3",
            )?
            .execute(params![done.rows as i64, done.uri, done.partition])?;
        // Names that were in this partition before but not in this run's index have left
        // the registry.
        self.conn
            .prepare_cached(
                "UPDATE packages SET status = 'removed', lease_token = NULL
                 WHERE partition = ?1 AND seen_run < ?2 AND status != 'removed'",
            )?
            .execute(params![done.partition, self.run])?;
        Ok(())
    }

    /// Returns 1 if the event stored the package (its lease holds it), else 0.
    pub(super) fn apply_stored(
        &mut self,
        token: i64,
        s: &PackumentStored,
    ) -> rusqlite::Result<u64> {
        use alldocs_fetcher::source::all_docs::MAX_REV_BYTES;
        if s.rev.len() > MAX_REV_BYTES || s.doc_rev.len() > MAX_REV_BYTES {
            // No fetcher may send such a revision: the checkpoint never stores one.
            let reason = format!(
                "protocol error: the fetcher reported a revision of {} bytes, over {MAX_REV_BYTES}",
                s.rev.len().max(s.doc_rev.len())
            );
            let limit = self.max_attempts as i64;
            self.give_back("packages", token, Some(&s.name), &reason, 1, limit)?;
            return Ok(0);
        }
        // The revision stored is the document's own `_rev` (a registry lagging the index
        // serves an older one: the next run fetches it again), or the one asked for if the
        // document has none.
        let n = self
            .conn
            .prepare_cached(
                "UPDATE packages SET status = 'stored', stored_rev = COALESCE(NULLIF(?2, ''), ?1),
                 doc_rev = ?2, uri = ?3, bytes = ?4, last_error = NULL, lease_token = NULL,
                 fetched_run = ?7
             WHERE name = ?5 AND lease_token = ?6 AND status = 'leased'",
            )?
            .execute(params![
                s.rev,
                s.doc_rev,
                s.uri,
                s.bytes as i64,
                s.name,
                token,
                self.run
            ])?;
        Ok(n as u64)
    }

    pub(super) fn upsert_package(
        &self,
        partition: &str,
        name: &str,
        rev: &str,
    ) -> rusqlite::Result<()> {
        let existing: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT status, stored_rev FROM packages WHERE name = ?1")?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match existing {
            None => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO packages (name, partition, indexed_rev, status, seen_run) VALUES (?1, ?2, ?3, 'pending', ?4)",
                    )?
                    .execute(params![name, partition, rev, self.run])?;
            }
            Some((status, stored_rev)) => {
                let unchanged = stored_rev.as_deref() == Some(rev);
                let status = match status.as_str() {
                    "stored" | "missing" if unchanged => status,
                    "leased" | "failed" | "pending" => status,
                    _ => "pending".to_string(),
                };
                self.conn
                    .prepare_cached(
                        "UPDATE packages SET partition = ?1, indexed_rev = ?2, status = ?3, seen_run = ?4 WHERE name = ?5",
                    )?
                    .execute(params![partition, rev, status, self.run, name])?;
            }
        }
        Ok(())
    }
}

/// Why a batch of index rows cannot be taken: an id over npm's name limit or a revision
/// over its bound, which no fetcher may send (the checkpoint never stores one). The reason
/// names the row and its size, never its bytes.
pub(super) fn oversized_row(rows: &alldocs_proto::v1::IndexRows) -> Option<String> {
    use alldocs_fetcher::source::all_docs::{MAX_ID_BYTES, MAX_REV_BYTES};
    rows.rows.iter().enumerate().find_map(|(i, row)| {
        let (field, bytes, limit) = if row.id.len() > MAX_ID_BYTES {
            ("id", row.id.len(), MAX_ID_BYTES)
        } else if row.rev.len() > MAX_REV_BYTES {
            ("rev", row.rev.len(), MAX_REV_BYTES)
        } else {
            return None;
        };
        Some(format!(
            "protocol error: the fetcher sent an index row (#{} of a batch) whose {field} is \
             {bytes} bytes, over {limit}; none of the batch was kept",
            i + 1
        ))
    })
}
