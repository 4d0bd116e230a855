//! The `_changes` feed's place in the checkpoint: the sequence applied so far (in `meta`),
//! and one page of changes applied to the packages in the same transaction as it, so a
//! restart neither misses a change nor applies one twice.

use std::fmt;

use rusqlite::params;
use serde_json::Value;

use crate::{
    checkpoint::{Db, Mode},
    plan::{partition_of, Partition},
};

/// A feed position, as the endpoint gave it: a number (npm, PouchDB) or an opaque string
/// (CouchDB 2 and later). Kept as the text that goes into `since=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seq(String);

impl Seq {
    /// The sequence as recorded in the checkpoint.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// A sequence from JSON: a number, or a string (its contents).
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => Some(Self(n.to_string())),
            Value::String(s) if !s.is_empty() && s.len() <= 1024 => Some(Self(s.clone())),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The sequence's leading number (all of npm's and PouchDB's; the `N` of CouchDB's
    /// `N-…`), for comparing positions and showing the lag.
    pub fn number(&self) -> Option<u64> {
        let digits: &str = self
            .0
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("");
        digits.parse().ok()
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether the feed was reset under us (npm did so in 2016, 2021 and 2025): its head is
/// behind the position we applied. Opaque sequences without a number never compare.
pub fn is_reset(ours: &Seq, head: &Seq) -> bool {
    matches!((ours.number(), head.number()), (Some(o), Some(h)) if h < o)
}

/// How many sequence numbers `ours` is behind `head` (`None` when either is not a number).
pub fn lag(ours: &Seq, head: &Seq) -> Option<u64> {
    Some(head.number()?.saturating_sub(ours.number()?))
}

/// One change: a document's name, its winning revision now, and whether it was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub rev: String,
    pub deleted: bool,
}

/// The checkpoint's `meta` key holding the feed sequence every change up to which is
/// applied.
pub const SEQ_KEY: &str = "follow_seq";

/// What one page did to the checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Packages now pending (new, or their revision changed).
    pub pending: u64,
    /// Packages now marked deleted.
    pub deleted: u64,
}

impl Db {
    /// The sequence the checkpoint has applied the feed up to, if it follows one.
    pub fn follow_seq(&self) -> rusqlite::Result<Option<Seq>> {
        Ok(self.meta(SEQ_KEY)?.map(Seq::new))
    }

    /// Starts following at `head`, read before any partition of this run is indexed (so
    /// every change the index pass may miss is in the feed after it). Partitions an
    /// earlier, unfollowed attempt of this run already indexed are indexed again.
    pub fn start_following(&mut self, head: &Seq, reindex: bool) -> rusqlite::Result<()> {
        if reindex {
            self.conn.execute(
                "UPDATE partitions SET status = 'pending', rows = 0, uri = NULL, attempts = 0,
                     last_error = NULL, lease_token = NULL WHERE status != 'pending'",
                [],
            )?;
            self.set_run_complete(false)?;
        }
        self.set_meta(SEQ_KEY, head.as_str())?;
        self.cached = None;
        Ok(())
    }

    /// Of `names`, those whose packument is stored (their objects, for `--delete-objects`).
    pub fn stored_among(&self, names: &[String]) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM packages WHERE name = ?1 AND status = 'stored'")?;
        let mut stored = Vec::new();
        for name in names {
            if stmt.exists([name])? {
                stored.push(name.clone());
            }
        }
        Ok(stored)
    }

    /// Applies one page of the feed and records `seq` after it, in the caller's
    /// transaction. A new package, or one whose revision differs from the stored one, goes
    /// to pending (fresh attempts); a deleted one is marked `deleted` (its object's URI
    /// cleared when `objects_removed`).
    pub fn apply_changes(
        &mut self,
        changes: &[Change],
        plan: &[Partition],
        seq: &Seq,
        objects_removed: bool,
    ) -> rusqlite::Result<Applied> {
        let mut applied = Applied::default();
        for change in changes {
            if change.deleted {
                applied.deleted += self.mark_deleted(change, objects_removed)? as u64;
            } else {
                applied.pending += u64::from(self.mark_changed(change, plan)?);
            }
        }
        self.set_meta(SEQ_KEY, seq.as_str())?;
        if applied.pending > 0 {
            self.set_run_complete(false)?;
        }
        self.cached = None;
        Ok(applied)
    }

    fn mark_deleted(&mut self, change: &Change, objects_removed: bool) -> rusqlite::Result<usize> {
        // A lease that holds it now reports nothing that counts.
        self.in_flight.forget(&change.name);
        self.conn
            .prepare_cached(
                "UPDATE packages SET status = 'deleted', indexed_rev = ?2, lease_token = NULL,
                     last_error = NULL, attempts = 0, seen_run = ?3,
                     uri = CASE WHEN ?4 THEN NULL ELSE uri END,
                     pack = CASE WHEN ?4 THEN NULL ELSE pack END,
                     pack_offset = CASE WHEN ?4 THEN NULL ELSE pack_offset END,
                     pack_length = CASE WHEN ?4 THEN NULL ELSE pack_length END
                 WHERE name = ?1 AND status != 'deleted'",
            )?
            .execute(params![change.name, change.rev, self.run, objects_removed])
    }

    /// Returns whether the package is now pending.
    fn mark_changed(&mut self, change: &Change, plan: &[Partition]) -> rusqlite::Result<bool> {
        self.in_flight.forget(&change.name);
        self.conn
            .prepare_cached(
                "INSERT INTO packages (name, partition, indexed_rev, status, seen_run)
                     VALUES (?1, ?2, ?3, 'pending', ?4)
                 ON CONFLICT(name) DO UPDATE SET
                     partition = excluded.partition, indexed_rev = excluded.indexed_rev,
                     seen_run = excluded.seen_run,
                     status = CASE WHEN status IN ('stored', 'missing')
                                   AND stored_rev IS excluded.indexed_rev
                              THEN status ELSE 'pending' END,
                     attempts = CASE WHEN status IN ('stored', 'missing')
                                     AND stored_rev IS excluded.indexed_rev
                                THEN attempts ELSE 0 END,
                     last_error = NULL, lease_token = NULL
                 RETURNING status = 'pending'",
            )?
            .query_row(
                params![
                    change.name,
                    partition_of(plan, &change.name),
                    change.rev,
                    self.run
                ],
                |r| r.get(0),
            )
    }

    /// The feed was reset under us: a new run indexes everything again (packuments whose
    /// revision is unchanged are not fetched again), following from the new `head`.
    pub fn restart_after_reset(&mut self, head: &Seq) -> rusqlite::Result<i64> {
        let run = self.begin_run(self.run + 1, Mode::Full)?;
        self.run = run;
        self.set_meta(SEQ_KEY, head.as_str())?;
        self.cached = None;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_opaque_but_their_numbers_compare() {
        let npm = Seq::from_json(&serde_json::json!(41_223_017)).unwrap();
        assert_eq!(npm.as_str(), "41223017");
        assert_eq!(npm.number(), Some(41_223_017));
        let couch = Seq::from_json(&serde_json::json!("12-g1AAAAFTeJzLYWBg")).unwrap();
        assert_eq!(couch.as_str(), "12-g1AAAAFTeJzLYWBg");
        assert_eq!(couch.number(), Some(12));
        let opaque = Seq::new("g1AAAA");
        assert_eq!(opaque.number(), None);
        assert!(Seq::from_json(&serde_json::json!(null)).is_none());
        assert!(Seq::from_json(&serde_json::json!("")).is_none());

        assert!(
            is_reset(&Seq::new("5000"), &Seq::new("12")),
            "head behind us"
        );
        assert!(!is_reset(&Seq::new("12"), &Seq::new("12")));
        assert!(!is_reset(&Seq::new("12"), &Seq::new("5000")));
        assert!(!is_reset(&opaque, &Seq::new("1")), "opaque never compares");
        assert_eq!(lag(&Seq::new("10"), &Seq::new("25")), Some(15));
        assert_eq!(lag(&opaque, &Seq::new("25")), None);
    }
}
