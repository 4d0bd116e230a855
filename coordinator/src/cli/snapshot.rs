//! Reading a snapshot's stored packuments, whatever their layout: a package's bytes are
//! a file of its own (`packuments/<key>.json`) or a frame in a pack (its URI, offset and
//! length in the checkpoint). Every read checks the bytes against the SHA-256 the
//! checkpoint recorded, so a damaged object is reported with the name and the object,
//! never returned as good bytes. `show` reads one package; `export`, `unpack` and
//! `compact` walk packs sequentially, one pack object at a time.

pub use super::packs::{has_packs, packs, Live, Liveness, PackObject};
use alldocs_fetcher::store::{
    pack::{self, PackError},
    packument_path, Store,
};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

/// Where one stored package's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `packuments/<key>.json` of the store.
    File,
    /// A frame in a pack.
    Pack {
        id: i64,
        uri: String,
        offset: u64,
        length: u64,
    },
}

/// A stored package as the checkpoint records it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub name: String,
    pub location: Location,
    /// Its exact length.
    pub bytes: u64,
    /// SHA-256 of its exact bytes; `None` for one stored before digests were recorded.
    pub sha256: Option<Vec<u8>>,
}

/// What the checkpoint says of a name: its status and last error, and where its bytes
/// are if it is stored.
pub fn lookup(
    conn: &Connection,
    name: &str,
) -> rusqlite::Result<Option<(String, Option<String>, Stored)>> {
    if !has_packs(conn)? {
        // A checkpoint from before packs (opened read-only, not migrated): files only.
        return conn
            .query_row(
                "SELECT status, last_error, bytes FROM packages WHERE name = ?1",
                [name],
                |r| {
                    let stored = Stored {
                        name: name.to_string(),
                        location: Location::File,
                        bytes: r.get::<_, i64>(2)? as u64,
                        sha256: None,
                    };
                    Ok((r.get(0)?, r.get(1)?, stored))
                },
            )
            .optional();
    }
    conn.query_row(
        "SELECT p.status, p.last_error, p.bytes, p.sha256, p.pack, k.uri, p.pack_offset, p.pack_length
         FROM packages p LEFT JOIN packs k ON k.id = p.pack WHERE p.name = ?1",
        [name],
        |r| {
            let location = match r.get::<_, Option<i64>>(4)? {
                Some(id) => Location::Pack {
                    id,
                    uri: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    offset: r.get::<_, i64>(6)? as u64,
                    length: r.get::<_, i64>(7)? as u64,
                },
                None => Location::File,
            };
            Ok((
                r.get(0)?,
                r.get(1)?,
                Stored {
                    name: name.to_string(),
                    location,
                    bytes: r.get::<_, i64>(2)? as u64,
                    sha256: r.get::<_, Option<Vec<u8>>>(3)?,
                },
            ))
        },
    )
    .optional()
}

/// The bytes of one stored package, checked.
pub async fn read(store: &Store, stored: &Stored) -> anyhow::Result<Bytes> {
    let digest = stored.sha256.as_deref().unwrap_or_default();
    match &stored.location {
        Location::File => {
            let path = packument_path(&stored.name);
            let bytes = store.get(&path).await.map_err(|e| {
                anyhow::anyhow!(
                    "`{}` is stored in the checkpoint but its object {} is not in the store ({e}); \
                     rerun `coordinator run` on this --db to fetch it again",
                    stored.name,
                    store.uri(&path)
                )
            })?;
            pack::check_digest(&bytes, &stored.name, &store.uri(&path), digest)?;
            Ok(bytes)
        }
        Location::Pack {
            uri,
            offset,
            length,
            ..
        } => {
            let path = pack_path(store, uri)?;
            let frame = store
                .object_store()
                .get_range(&path, *offset..offset + length)
                .await
                .map_err(|e| missing_pack(&stored.name, uri, e))?;
            if frame.len() as u64 != *length {
                return Err(PackError::BadFrame {
                    name: stored.name.clone(),
                    uri: uri.clone(),
                    reason: format!(
                        "the pack ends inside its frame ({} of {length} bytes)",
                        frame.len()
                    ),
                }
                .into());
            }
            Ok(pack::decode(
                &frame,
                &stored.name,
                uri,
                stored.bytes,
                digest,
            )?)
        }
    }
}

/// A pack's path in the store.
pub fn pack_path(store: &Store, uri: &str) -> anyhow::Result<object_store::path::Path> {
    store.path_of(uri).ok_or_else(|| {
        anyhow::anyhow!(
            "the checkpoint names the pack {uri}, which is not in the store it records ({}); was the store moved?",
            store.uri(&object_store::path::Path::from(""))
        )
    })
}

fn missing_pack(name: &str, uri: &str, e: object_store::Error) -> anyhow::Error {
    let what = match e {
        object_store::Error::NotFound { .. } => "is not in the store",
        _ => "cannot be read",
    };
    anyhow::anyhow!(
        "`{name}` is stored in the checkpoint but its pack {uri} {what} ({e}); \
         rerun `coordinator run` on this --db to fetch what it held again"
    )
}

/// In which order a walk over the stored packages goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Key order (raw byte order of the names), one read per package.
    #[default]
    Key,
    /// The order the packs were sealed in, each pack read whole and sequentially, each
    /// pack's packuments in the order they were written; then the packages stored as files
    /// of their own, in key order. The fast way through a packed snapshot.
    Packs,
}

/// Calls `each` with every stored package's name, its bytes and the SHA-256 they were
/// checked against (recorded for all but those stored before schema 6), in `order`.
/// `each` returns whether to go on. One package (or, by packs, one pack) in memory at a
/// time.
pub fn each_stored(
    conn: &Connection,
    store: &Store,
    rt: &tokio::runtime::Handle,
    order: Order,
    mut each: impl FnMut(&str, &[u8], Option<&[u8]>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    // One read transaction: one consistent snapshot of the checkpoint while a run may
    // write it, and one shared lock, not one per statement.
    let read = conn.unchecked_transaction()?;
    walk(&read, store, rt, order, &mut each)
}

fn walk(
    conn: &Connection,
    store: &Store,
    rt: &tokio::runtime::Handle,
    order: Order,
    each: &mut impl FnMut(&str, &[u8], Option<&[u8]>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let packed = has_packs(conn)?;
    if order == Order::Key || !packed {
        let sql = if packed {
            crate::checkpoint::STORED_LOCATIONS
        } else {
            crate::checkpoint::STORED_NAMES
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let stored = if packed {
                stored_of(row)?
            } else {
                Stored {
                    name: row.get(0)?,
                    location: Location::File,
                    bytes: 0,
                    sha256: None,
                }
            };
            let raw = rt.block_on(read(store, &stored))?;
            if !each(&stored.name, &raw, stored.sha256.as_deref())? {
                return Ok(());
            }
        }
        return Ok(());
    }
    let mut live = Liveness::new(conn)?;
    for (id, uri, _) in packs(conn)? {
        let pack = rt.block_on(PackObject::read(store, id, &uri))?;
        let (mut batch, mut batch_bytes) = (Vec::new(), 0);
        for (at, e) in pack.trailer.entries.iter().enumerate() {
            match live.of(&e.name, id, e.offset)? {
                Some(l) if l.stored => {
                    batch_bytes += l.bytes;
                    batch.push((at, l));
                }
                _ => continue,
            }
            if batch_bytes >= super::packs::BATCH_BYTES {
                if !emit(&pack, &batch, each)? {
                    return Ok(());
                }
                (batch, batch_bytes) = (Vec::new(), 0);
            }
        }
        if !emit(&pack, &batch, each)? {
            return Ok(());
        }
    }
    let mut stmt = conn.prepare(crate::checkpoint::STORED_FILES)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let stored = Stored {
            name: row.get(0)?,
            location: Location::File,
            bytes: 0,
            sha256: row.get::<_, Option<Vec<u8>>>(1)?,
        };
        let raw = rt.block_on(read(store, &stored))?;
        if !each(&stored.name, &raw, stored.sha256.as_deref())? {
            return Ok(());
        }
    }
    Ok(())
}

/// Decodes a batch of a pack's live entries and hands them to `each` in order; whether
/// to go on.
fn emit(
    pack: &PackObject,
    batch: &[(usize, Live)],
    each: &mut impl FnMut(&str, &[u8], Option<&[u8]>) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    for ((at, live), raw) in batch.iter().zip(pack.decode(batch)) {
        let raw = raw?;
        if !each(
            &pack.trailer.entries[*at].name,
            &raw,
            live.sha256.as_deref(),
        )? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A row of [`crate::checkpoint::STORED_LOCATIONS`].
fn stored_of(r: &rusqlite::Row) -> rusqlite::Result<Stored> {
    let location = match r.get::<_, Option<i64>>(3)? {
        Some(id) => Location::Pack {
            id,
            uri: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            offset: r.get::<_, i64>(5)? as u64,
            length: r.get::<_, i64>(6)? as u64,
        },
        None => Location::File,
    };
    Ok(Stored {
        name: r.get(0)?,
        location,
        bytes: r.get::<_, i64>(1)? as u64,
        sha256: r.get::<_, Option<Vec<u8>>>(2)?,
    })
}
