//! The events a lease streams back, applied in the caller's transaction: index rows,
//! a partition done, a packument stored, missing or failed. Only the current attempt's
//! events change anything.

use alldocs_proto::v1::{fetch_event::Event, IndexDone, IndexRows, PackSealed, PackumentStored};
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
                    if !self.take_packument(&m.name, token) {
                        continue;
                    }
                    // Prepared once per connection: one statement per event is hot.
                    self.conn
                        .prepare_cached(
                            // No revision is stored: a name that 404s briefly (or for good)
                            // is asked for again by the next run, not frozen as missing.
                            "UPDATE packages SET status = 'missing', stored_rev = NULL, uri = NULL, bytes = 0,
                                 last_error = ?1, lease_token = NULL, fetched_run = ?3
                             WHERE name = ?2 AND status = 'pending'",
                        )?
                        .execute(params![
                            format!("HTTP {}", m.http_status),
                            m.name,
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
                    if f.name.is_empty() {
                        self.give_back("partitions", token, None, &f.reason, 1, limit)?;
                    } else if self.take_packument(&f.name, token) {
                        self.count_attempt(&f.name, &f.reason, limit)?;
                    }
                }
                Event::PackSealed(p) => self.apply_sealed(token, p)?,
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
        if !self.take_packument(&s.name, token) {
            return Ok(0);
        }
        let limit = self.max_attempts as i64;
        let refused = if s.rev.len() > MAX_REV_BYTES || s.doc_rev.len() > MAX_REV_BYTES {
            // No fetcher may send such a revision: the checkpoint never stores one.
            Some(format!(
                "protocol error: the fetcher reported a revision of {} bytes, over {MAX_REV_BYTES}",
                s.rev.len().max(s.doc_rev.len())
            ))
        } else if !(s.sha256.is_empty() || s.sha256.len() == 32) {
            Some(format!(
                "protocol error: the fetcher reported a SHA-256 of {} bytes",
                s.sha256.len()
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            self.count_attempt(&s.name, &reason, limit)?;
            return Ok(0);
        }
        let (uri, pack) = if s.pack_length == 0 {
            (Some(s.uri.as_str()), None)
        } else {
            match self.pack_id(&s.uri)? {
                Some(id) => (None, Some(id)),
                None => {
                    let reason = format!(
                        "protocol error: the fetcher reported `{}` stored in the pack {}, which it never reported sealed",
                        s.name, s.uri
                    );
                    self.count_attempt(&s.name, &reason, limit)?;
                    return Ok(0);
                }
            }
        };
        let sha256 = (!s.sha256.is_empty()).then_some(&s.sha256[..]);
        let (offset, length) = match pack {
            Some(_) => (Some(s.pack_offset as i64), Some(s.pack_length as i64)),
            None => (None, None),
        };
        // The revision stored is the document's own `_rev` (a registry lagging the index
        // serves an older one: the next run fetches it again), or the one asked for if the
        // document has none.
        let n = self
            .conn
            .prepare_cached(
                "UPDATE packages SET status = 'stored', stored_rev = COALESCE(NULLIF(?2, ''), ?1),
                 doc_rev = ?2, uri = ?3, bytes = ?4, last_error = NULL, lease_token = NULL,
                 fetched_run = ?6, pack = ?7, pack_offset = ?8, pack_length = ?9, sha256 = ?10
             WHERE name = ?5 AND status = 'pending'",
            )?
            .execute(params![
                s.rev,
                s.doc_rev,
                uri,
                s.bytes as i64,
                s.name,
                self.run,
                pack,
                offset,
                length,
                sha256
            ])?;
        Ok(n as u64)
    }

    /// Records a sealed pack (once: a pack is sealed by one lease).
    pub(super) fn apply_sealed(&mut self, token: i64, p: &PackSealed) -> rusqlite::Result<()> {
        let id: i64 = self
            .conn
            .prepare_cached(
                "INSERT INTO packs (uri, bytes, entries, token, sealed_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(uri) DO UPDATE SET bytes = excluded.bytes, entries = excluded.entries,
                     token = excluded.token, sealed_ms = excluded.sealed_ms
                 RETURNING id",
            )?
            .query_row(
                params![
                    p.uri,
                    p.bytes as i64,
                    p.entries as i64,
                    token,
                    alldocs_proto::now_unix_ms()
                ],
                |r| r.get(0),
            )?;
        if self.packs.len() >= 16 {
            self.packs.remove(0);
        }
        self.packs.push((p.uri.clone(), id));
        Ok(())
    }

    /// The id of a sealed pack, by its URI.
    fn pack_id(&self, uri: &str) -> rusqlite::Result<Option<i64>> {
        if let Some((_, id)) = self.packs.iter().rev().find(|(u, _)| u == uri) {
            return Ok(Some(*id));
        }
        self.conn
            .prepare_cached("SELECT id FROM packs WHERE uri = ?1")?
            .query_row([uri], |r| r.get(0))
            .optional()
    }

    /// A row of the index: a new name is pending; a known one keeps its state when it is
    /// stored (or missing) at this very revision, or in flight or failed; otherwise
    /// (changed, removed, deleted) it is pending again. One statement.
    pub(super) fn upsert_package(
        &self,
        partition: &str,
        name: &str,
        rev: &str,
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO packages (name, partition, indexed_rev, status, seen_run)
                     VALUES (?1, ?2, ?3, 'pending', ?4)
                 ON CONFLICT(name) DO UPDATE SET
                     partition = excluded.partition, indexed_rev = excluded.indexed_rev,
                     seen_run = excluded.seen_run,
                     status = CASE
                         WHEN status IN ('stored', 'missing') AND stored_rev = excluded.indexed_rev
                             THEN status
                         WHEN status IN ('leased', 'failed', 'pending') THEN status
                         ELSE 'pending' END",
            )?
            .execute(params![name, partition, rev, self.run])?;
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
