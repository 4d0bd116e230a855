//! **Part `follow`: `serve --follow`.** After the snapshot, the `_changes` feed keeps it
//! current: [`changes`] reads the feed (its head, pages after an opaque sequence), and
//! [`Tail`] applies each page with the sequence after it in one checkpoint transaction, so
//! a restart neither misses a change nor applies one twice; changed and new packages go
//! back to pending (the scheduler refetches them), deleted ones are marked `deleted`.
//!
//! Uses: `fleet` (the run's request budget, live figures), `checkpoint`, `plan`.

pub mod changes;

use std::{sync::Arc, time::Duration};

use crate::{
    checkpoint::{
        feed::{is_reset, Applied, Change, Seq},
        Checkpoint, Opened,
    },
    fleet::{budget::Budget, rates::Stats},
    follow::changes::{Feed, FeedError},
    plan::Partition,
};
use alldocs_fetcher::{source::pace::Pace, store::Store};

/// How following is configured.
#[derive(Clone, Debug)]
pub struct FollowSettings {
    /// How long to wait between looks at the feed once caught up.
    pub interval: Duration,
    /// Changes asked for per request.
    pub page_size: u32,
    /// Pending packuments at which catching up pauses to fetch them.
    pub batch: u64,
}

/// What catching up found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caught {
    /// Nothing to fetch: the feed had no change that needs a packument.
    Current,
    /// This many packuments wait to be fetched.
    Pending(u64),
    /// The feed was reset: a new run re-indexes everything.
    Reset,
}

/// Reads the feed into the checkpoint.
pub struct Tail {
    pub checkpoint: Checkpoint,
    pub feed: Feed,
    pub plan: Arc<Vec<Partition>>,
    pub budget: Arc<Budget>,
    pub stats: Arc<Stats>,
    /// With `--delete-objects`: where a deleted package's object is removed (else kept).
    pub store: Option<Store>,
    pub settings: FollowSettings,
}

impl Tail {
    /// Says where following stopped, and how to carry on.
    pub fn say_where_stopped(&self) {
        let seq = self
            .stats
            .feed()
            .ours
            .map(|s| s.to_string())
            .unwrap_or_default();
        eprintln!(
            "stopped following at feed sequence {seq}; the checkpoint keeps it: `coordinator serve --follow` with the same --db carries on from there"
        );
    }

    /// Before the first lease: resumes at the recorded sequence, or records the feed's head
    /// as where following starts (before any partition is indexed).
    pub async fn begin(&self, opened: Opened) -> anyhow::Result<()> {
        let recorded = self.checkpoint.call(|db| db.follow_seq()).await?;
        let head = self.feed.head(self.pace()).await;
        let ours = match (recorded, &head) {
            (Some(seq), _) => seq,
            (None, Ok(head)) => {
                let (at, reindex) = (head.clone(), opened.resumed);
                self.checkpoint
                    .call(move |db| db.start_following(&at, reindex))
                    .await?;
                tracing::info!(seq = %head, reindex, "following the feed from its head");
                head.clone()
            }
            (None, Err(e)) => anyhow::bail!(
                "--follow: cannot read the feed's position from --replicate-origin ({e}); check that it is a CouchDB-compatible replication endpoint this machine can reach"
            ),
        };
        if let Err(e) = &head {
            tracing::warn!(error = %e, "cannot read the feed's head now; following carries on from the recorded sequence");
        }
        self.stats.set_feed(|f| {
            f.following = true;
            f.ours = Some(ours);
            f.head = head.ok();
        });
        Ok(())
    }

    /// Applies the feed up to its head, or until [`FollowSettings::batch`] packuments wait.
    pub async fn catch_up(&self) -> anyhow::Result<Caught> {
        let head = self.feed.head(self.pace()).await?;
        self.stats.set_feed(|f| f.head = Some(head.clone()));
        let mut ours = self.ours();
        if is_reset(&ours, &head) {
            return self.reset(&ours, head).await;
        }
        let mut pending = 0;
        loop {
            let page = match self
                .feed
                .page(&ours, self.settings.page_size, self.pace())
                .await
            {
                Err(FeedError::SinceRefused { .. }) => {
                    let head = self.feed.head(self.pace()).await?;
                    return self.reset(&ours, head).await;
                }
                other => other?,
            };
            if page.rows == 0 {
                return Ok(caught(pending));
            }
            if page.last_seq == ours {
                tracing::warn!(seq = %ours, rows = page.rows, "the feed answered changes without moving on; trying again later");
                return Ok(caught(pending));
            }
            let applied = self.apply(page.changes, page.last_seq.clone()).await?;
            pending += applied.pending;
            tracing::info!(
                seq = %page.last_seq, changes = page.rows, skipped = page.skipped,
                pending = applied.pending, deleted = applied.deleted, "applied changes"
            );
            ours = page.last_seq;
            self.stats.set_feed(|f| f.ours = Some(ours.clone()));
            if page.rows < self.settings.page_size as usize || pending >= self.settings.batch {
                return Ok(caught(pending));
            }
        }
    }

    /// Removes deleted packages' objects if asked to, then commits the page and `seq`
    /// together. (Removing first: a crash in between applies the page again, and removing
    /// again is harmless.)
    async fn apply(&self, changes: Vec<Change>, seq: Seq) -> anyhow::Result<Applied> {
        let removing = self.store.is_some();
        if let Some(store) = &self.store {
            let deleted: Vec<String> = changes
                .iter()
                .filter(|c| c.deleted)
                .map(|c| c.name.clone())
                .collect();
            let stored = self
                .checkpoint
                .call(move |db| db.stored_among(&deleted))
                .await?;
            for name in stored {
                remove_object(store, &name).await?;
            }
        }
        let plan = self.plan.clone();
        Ok(self
            .checkpoint
            .call(move |db| db.apply_changes(&changes, &plan, &seq, removing))
            .await?)
    }

    async fn reset(&self, ours: &Seq, head: Seq) -> anyhow::Result<Caught> {
        tracing::warn!(
            ours = %ours, head = %head,
            "the feed was reset (its head is behind the position we applied, or it refused it): indexing everything again; packuments whose revision is unchanged are not fetched again"
        );
        let at = head.clone();
        let run = self
            .checkpoint
            .call(move |db| db.restart_after_reset(&at))
            .await?;
        tracing::info!(run, seq = %head, "new run after the feed reset");
        self.stats.set_feed(|f| f.ours = Some(head));
        Ok(Caught::Reset)
    }

    fn ours(&self) -> Seq {
        self.stats.feed().ours.unwrap_or_else(|| Seq::new("0"))
    }

    /// The pace of a feed request: a slot of the run's grid (the scheduler is idle while
    /// the feed is read, so one is free), like any lease's requests.
    fn pace(&self) -> Pace {
        let lease = match self.budget.take_slot() {
            Some(slot) => {
                let pace = self.budget.pace(&slot);
                alldocs_proto::v1::Lease {
                    rate_limit: pace.rate,
                    rate_grid_period_us: pace.period_us,
                    rate_grid_phase_us: pace.phase_us,
                    ..Default::default()
                }
            }
            // Every slot held (not while the scheduler is idle): one slot's share of the rate.
            None => alldocs_proto::v1::Lease {
                rate_limit: self.budget.current() / self.budget.slots().max(1) as f64,
                ..Default::default()
            },
        };
        Pace::of_lease(&lease)
    }
}

fn caught(pending: u64) -> Caught {
    if pending == 0 {
        Caught::Current
    } else {
        Caught::Pending(pending)
    }
}

/// Removes the stored object of `name`; one already gone is no error.
async fn remove_object(store: &Store, name: &str) -> anyhow::Result<()> {
    let path = alldocs_fetcher::store::packument_path(name);
    match store.object_store().delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "--delete-objects: removing {} failed: {e}",
            store.uri(&path)
        )),
    }
}
