//! A snapshot's packs read whole, for the walks that go pack by pack (`export --order
//! packs`, `unpack`, `compact`): a pack's bytes and trailer, its frames, the packs the
//! checkpoint records, and which of a pack's entries are live (the current copy of a
//! stored package).

use alldocs_fetcher::store::{
    pack::{self, PackError, Trailer},
    Store,
};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

use super::snapshot::pack_path;

/// One pack read whole: its bytes and its trailer.
pub struct PackObject {
    pub id: i64,
    pub uri: String,
    pub bytes: Bytes,
    pub trailer: Trailer,
}

impl PackObject {
    /// Reads the pack `uri` of the checkpoint (row `id`).
    pub async fn read(store: &Store, id: i64, uri: &str) -> anyhow::Result<Self> {
        let path = pack_path(store, uri)?;
        let bytes = store.get(&path).await.map_err(|e| {
            anyhow::anyhow!("the pack {uri} cannot be read ({e}); rerun `coordinator run` on this --db to fetch what it held again")
        })?;
        let trailer = Self::trailer_of(&bytes, uri)?;
        Ok(Self {
            id,
            uri: uri.to_string(),
            bytes,
            trailer,
        })
    }

    fn trailer_of(bytes: &[u8], uri: &str) -> Result<Trailer, PackError> {
        let footer_at = bytes
            .len()
            .checked_sub(pack::FOOTER_BYTES as usize)
            .ok_or_else(|| PackError::NoFooter { uri: uri.into() })?;
        let len = pack::footer_len(&bytes[footer_at..], uri)? as usize;
        let start = footer_at
            .checked_sub(len)
            .ok_or_else(|| PackError::BadTrailer {
                uri: uri.into(),
                reason: format!("its trailer would be {len} bytes, more than the pack holds"),
            })?;
        pack::parse_trailer(&bytes[start..footer_at], uri)
    }

    /// The frame of an entry, if the pack holds all of it.
    pub fn frame(&self, offset: u64, length: u64, name: &str) -> Result<&[u8], PackError> {
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= self.bytes.len() as u64);
        match end {
            Some(end) => Ok(&self.bytes[offset as usize..end as usize]),
            None => Err(PackError::BadFrame {
                name: name.into(),
                uri: self.uri.clone(),
                reason: "its frame lies outside the pack".into(),
            }),
        }
    }
}

/// Every pack of the checkpoint, in the order they were sealed: (id, uri, bytes).
pub fn packs(conn: &Connection) -> rusqlite::Result<Vec<(i64, String, u64)>> {
    let mut stmt = conn.prepare("SELECT id, uri, bytes FROM packs ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    rows.collect()
}

/// Whether the checkpoint has the pack columns (schema 6): an older one, opened
/// read-only, holds files only.
pub fn has_packs(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'packs')",
        [],
        |r| r.get(0),
    )
}

/// A package whose current copy is an entry of a pack: its recorded SHA-256 (if any),
/// its length, and whether it is stored (rather than, say, pending a refetch).
pub struct Live {
    pub sha256: Option<Vec<u8>>,
    pub bytes: u64,
    pub stored: bool,
}

/// Which entries of a pack are live: the packages whose current copy they are.
pub struct Liveness<'c> {
    stmt: rusqlite::CachedStatement<'c>,
}

impl<'c> Liveness<'c> {
    pub fn new(conn: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            stmt: conn.prepare_cached(
                "SELECT pack, pack_offset, sha256, bytes, status FROM packages WHERE name = ?1",
            )?,
        })
    }

    /// What the checkpoint records of `name` when its current copy is this entry.
    pub fn of(&mut self, name: &str, pack: i64, offset: u64) -> rusqlite::Result<Option<Live>> {
        let row = self
            .stmt
            .query_row([name], |r| {
                Ok((
                    r.get::<_, Option<i64>>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        Ok(match row {
            Some((Some(p), Some(o), sha256, bytes, status)) if p == pack && o as u64 == offset => {
                Some(Live {
                    sha256,
                    bytes,
                    stored: status == "stored",
                })
            }
            _ => None,
        })
    }
}
