//! `coordinator compact`: packs whose live share is under `--threshold` are rewritten
//! into new packs (their live frames copied as they are), the checkpoint is pointed at
//! the new packs in one transaction, and only then are the old packs deleted. Stopped at
//! any point, every stored package stays readable: before the commit the new packs are
//! unreferenced (removed by the next `compact`), after it the old ones are. Pack objects
//! no row of the checkpoint refers to — left by a run that stopped between writing a pack
//! and committing it — are removed too. Holds the checkpoint's lock: no run meanwhile.

use std::{collections::HashMap, net::SocketAddr, process::ExitCode};

use alldocs_fetcher::{
    source::packs::seal_writer,
    store::{object::ObjectWriter, pack::Entry, Store},
};
use clap::Args;
use futures::TryStreamExt;
use object_store::path::Path;
use rusqlite::{params, Connection};

use crate::{
    checkpoint::{lock::CheckpointLock, schema},
    cli::{
        read::{recorded_store, DbArg},
        snapshot::{self, Liveness, PackObject},
    },
    run::args::usage,
};

/// The most compressed bytes a new pack holds.
const PACK_BYTES: u64 = 64 << 20;

#[derive(Args, Debug)]
pub struct CompactArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Rewrite the packs whose live share (bytes holding a package's current copy) is
    /// under this fraction.
    #[arg(long, default_value_t = 0.5, value_parser = parse_fraction)]
    pub threshold: f64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "`{s}` is not a fraction from 0 to 1; give one such as 0.5"
        )),
    }
}

/// The points between the steps of compaction, for tests that stop it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new pack is written and durable; the checkpoint does not know it yet.
    Written,
    /// The checkpoint points at the new pack; the old packs are still in the store.
    Committed,
    /// The old packs are deleted.
    Deleted,
}

/// What compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub packs_written: u64,
    pub bytes_after: u64,
    pub packuments_moved: u64,
    pub orphans_removed: u64,
}

pub async fn compact(args: CompactArgs) -> anyhow::Result<ExitCode> {
    let done = run(&args, &mut |_| {}).await?;
    println!(
        "compacted {} packs ({}) into {} ({}), moving {} packuments; {} reclaimed; {} unreferenced packs removed",
        done.packs_rewritten,
        bytesize::ByteSize(done.bytes_before),
        done.packs_written,
        bytesize::ByteSize(done.bytes_after),
        done.packuments_moved,
        bytesize::ByteSize(done.bytes_before.saturating_sub(done.bytes_after)),
        done.orphans_removed
    );
    Ok(ExitCode::SUCCESS)
}

/// Compacts, calling `step` after each step (a test stops the process there).
pub async fn run(args: &CompactArgs, step: &mut dyn FnMut(Step)) -> anyhow::Result<Compacted> {
    let db = &args.db.db;
    if !db.is_file() {
        return Err(usage(format!("no checkpoint at --db {}", db.display())));
    }
    let _lock = CheckpointLock::acquire(db, SocketAddr::from(([0, 0, 0, 0], 0)))
        .map_err(|e| usage(e.to_string()))?;
    let conn = open_for_writing(db)?;
    let store = recorded_store(&conn)?;
    let snapshot_id: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'snapshot_id'",
            [],
            |r| r.get(0),
        )
        .unwrap_or_default();
    let mut done = Compacted {
        orphans_removed: remove_orphans(&conn, &store, &snapshot_id).await?,
        ..Compacted::default()
    };
    let candidates = candidates(&conn, args.threshold)?;
    let mut out = Output::new(&store, &snapshot_id);
    for (id, uri, bytes) in candidates {
        let pack = PackObject::read(&store, id, &uri).await?;
        let mut live = Liveness::new(&conn)?;
        for e in &pack.trailer.entries {
            if live.of(&e.name, id, e.offset)?.is_none() {
                continue;
            }
            let frame = pack.frame(e.offset, e.length, &e.name)?;
            out.add(e, frame, (id, e.offset)).await?;
        }
        drop(live);
        done.packs_rewritten += 1;
        done.bytes_before += bytes;
        out.drained.push((id, uri));
        if out.len() >= PACK_BYTES {
            out.finish(&conn, &store, step, &mut done).await?;
        }
    }
    out.finish(&conn, &store, step, &mut done).await?;
    Ok(done)
}

fn open_for_writing(db: &std::path::Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(db)
        .map_err(|e| usage(format!("cannot open --db {}: {e}", db.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    if !schema::has_tables(&conn)? {
        return Err(usage(format!("--db {} is not a checkpoint", db.display())));
    }
    schema::check_version(&conn, &db.display().to_string()).map_err(|e| usage(e.to_string()))?;
    if !snapshot::has_packs(&conn)? {
        return Err(usage(format!(
            "--db {} was written before packs (schema 5 or older): it holds files only, and there is nothing to compact",
            db.display()
        )));
    }
    Ok(conn)
}

/// The packs under the threshold, in the order they were sealed.
fn candidates(conn: &Connection, threshold: f64) -> anyhow::Result<Vec<(i64, String, u64)>> {
    let mut live: HashMap<i64, u64> = HashMap::new();
    let mut stmt = conn.prepare("SELECT pack, pack_length FROM packages WHERE pack IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        *live.entry(r.get(0)?).or_default() += r.get::<_, i64>(1)? as u64;
    }
    Ok(snapshot::packs(conn)?
        .into_iter()
        .filter(|(id, _, bytes)| {
            let share = live.get(id).copied().unwrap_or(0) as f64 / (*bytes).max(1) as f64;
            share < threshold
        })
        .collect())
}

/// Deletes pack objects of this snapshot that no row of `packs` names.
async fn remove_orphans(
    conn: &Connection,
    store: &Store,
    snapshot_id: &str,
) -> anyhow::Result<u64> {
    if snapshot_id.is_empty() {
        return Ok(0);
    }
    let known: std::collections::HashSet<String> = snapshot::packs(conn)?
        .into_iter()
        .map(|(_, uri, _)| uri)
        .collect();
    let prefix = Path::from(format!("packs/{snapshot_id}"));
    let listed: Vec<_> = store
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", store.uri(&prefix)))?;
    let mut removed = 0;
    for meta in listed {
        if !known.contains(&store.uri(&meta.location)) {
            store.object_store().delete(&meta.location).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The new pack being filled, and the old packs whose live frames are all in it.
struct Output {
    writer: Option<ObjectWriter>,
    entries: Vec<Entry>,
    /// For each entry: the pack and offset it comes from.
    from: Vec<(i64, u64)>,
    drained: Vec<(i64, String)>,
    store: Store,
    snapshot_id: String,
    n: u32,
}

impl Output {
    fn new(store: &Store, snapshot_id: &str) -> Self {
        Self {
            writer: None,
            entries: Vec::new(),
            from: Vec::new(),
            drained: Vec::new(),
            store: store.clone(),
            snapshot_id: snapshot_id.to_string(),
            n: 0,
        }
    }

    fn len(&self) -> u64 {
        self.writer.as_ref().map_or(0, ObjectWriter::len)
    }

    async fn add(&mut self, e: &Entry, frame: &[u8], from: (i64, u64)) -> anyhow::Result<()> {
        if self.writer.is_none() {
            let path = Path::from(format!(
                "packs/{}/compact-{}-{:04}.pack",
                self.snapshot_id,
                alldocs_proto::now_unix_ms(),
                self.n
            ));
            self.n += 1;
            self.writer = Some(self.store.create(&path)?);
        }
        let writer = self.writer.as_mut().expect("a writer");
        let offset = writer.len();
        writer.write(frame).await?;
        self.entries.push(Entry {
            offset,
            ..e.clone()
        });
        self.from.push(from);
        Ok(())
    }

    /// Seals the new pack, points the checkpoint at it and forgets the drained packs in
    /// one transaction, then deletes their objects.
    async fn finish(
        &mut self,
        conn: &Connection,
        store: &Store,
        step: &mut dyn FnMut(Step),
        done: &mut Compacted,
    ) -> anyhow::Result<()> {
        let entries = std::mem::take(&mut self.entries);
        let from = std::mem::take(&mut self.from);
        let drained = std::mem::take(&mut self.drained);
        let sealed = match self.writer.take() {
            Some(writer) => {
                let uri = writer.uri().to_string();
                let moved = entries.clone();
                let bytes = seal_writer(writer, entries).await?;
                step(Step::Written);
                Some((uri, bytes, moved))
            }
            None => None,
        };
        if sealed.is_none() && drained.is_empty() {
            return Ok(());
        }
        let tx = conn.unchecked_transaction()?;
        if let Some((uri, bytes, moved)) = &sealed {
            let id: i64 = tx.query_row(
                "INSERT INTO packs (uri, bytes, entries, token, sealed_ms) VALUES (?1, ?2, ?3, NULL, ?4) RETURNING id",
                params![uri, *bytes as i64, moved.len() as i64, alldocs_proto::now_unix_ms()],
                |r| r.get(0),
            )?;
            let mut update = tx.prepare(
                "UPDATE packages SET pack = ?1, pack_offset = ?2 WHERE name = ?3 AND pack = ?4 AND pack_offset = ?5",
            )?;
            for (e, (old, old_offset)) in moved.iter().zip(&from) {
                update.execute(params![
                    id,
                    e.offset as i64,
                    e.name,
                    old,
                    *old_offset as i64
                ])?;
            }
            done.packs_written += 1;
            done.bytes_after += bytes;
            done.packuments_moved += moved.len() as u64;
        }
        for (id, _) in &drained {
            tx.execute("DELETE FROM packs WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        step(Step::Committed);
        for (_, uri) in &drained {
            let path = snapshot::pack_path(store, uri)?;
            match store.object_store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        step(Step::Deleted);
        Ok(())
    }
}
