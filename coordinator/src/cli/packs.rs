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

/// Raw bytes decoded at a time by a walk through a pack: what it holds in memory beyond
/// the pack itself (and one packument larger than this).
pub const BATCH_BYTES: u64 = 16 << 20;

/// Batches under this many raw bytes are decoded on the calling thread alone.
const PARALLEL_FROM: u64 = 128 << 10;

impl PackObject {
    /// The packuments of `batch` (indexes into the trailer's entries, each with what the
    /// checkpoint records of it), decoded and checked against their digests, in order:
    /// split by bytes across the machine's cores (up to four), since decoding and hashing
    /// small frames, not reading, is what a walk through packs spends its time on.
    pub fn decode(&self, batch: &[(usize, Live)]) -> Vec<Result<Bytes, PackError>> {
        let one = |(i, live): &(usize, Live)| {
            let e = &self.trailer.entries[*i];
            let frame = self.frame(e.offset, e.length, &e.name)?;
            pack::decode(
                frame,
                &e.name,
                &self.uri,
                live.bytes,
                live.sha256.as_deref().unwrap_or_default(),
            )
        };
        split_by_bytes(batch, |(_, live)| live.bytes, one)
    }
}

/// `one` of every item, in order: split by bytes (`weight`) across the machine's cores
/// (up to four) when there is enough to share, else on the calling thread.
pub fn split_by_bytes<T: Sync, R: Send>(
    items: &[T],
    weight: impl Fn(&T) -> u64,
    one: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let total: u64 = items.iter().map(&weight).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || items.len() < 2 || total < PARALLEL_FROM {
        return items.iter().map(one).collect();
    }
    // Cut where each part holds about its share of the bytes.
    let mut parts = Vec::with_capacity(threads);
    let (mut start, mut acc) = (0, 0);
    for (at, item) in items.iter().enumerate() {
        acc += weight(item);
        if acc * threads as u64 >= total * (parts.len() as u64 + 1) && parts.len() + 1 < threads {
            parts.push(&items[start..=at]);
            start = at + 1;
        }
    }
    parts.push(&items[start..]);
    let one = &one;
    std::thread::scope(|s| {
        let rest: Vec<_> = parts[1..]
            .iter()
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        let mut out: Vec<_> = parts[0].iter().map(one).collect();
        for h in rest {
            out.extend(h.join().expect("a worker thread does not panic"));
        }
        out
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use alldocs_fetcher::store::pack::Entry;

    /// A pack of `docs` as the fetcher writes it, with what the checkpoint would record.
    fn pack_of(docs: &[Vec<u8>]) -> (PackObject, Vec<(usize, Live)>) {
        let (mut bytes, mut entries, mut live) = (Vec::new(), Vec::new(), Vec::new());
        for (i, doc) in docs.iter().enumerate() {
            let frame = pack::compress(doc).unwrap();
            entries.push(Entry {
                name: format!("p{i}"),
                offset: bytes.len() as u64,
                length: frame.len() as u64,
                raw_length: doc.len() as u64,
                sha256: pack::sha256_hex(doc),
            });
            live.push((
                i,
                Live {
                    sha256: Some(hex::decode(pack::sha256_hex(doc)).unwrap()),
                    bytes: doc.len() as u64,
                    stored: true,
                },
            ));
            bytes.extend_from_slice(&frame);
        }
        let trailer = Trailer::new(entries);
        let pack = PackObject {
            id: 1,
            uri: "memory://t/packs/a.pack".into(),
            bytes: Bytes::from(bytes),
            trailer,
        };
        (pack, live)
    }

    #[test]
    fn a_batch_decoded_across_threads_comes_back_in_order_with_a_bad_frame_where_it_is() {
        // Sizes that vary, so the parts split by bytes hold different counts.
        let docs: Vec<Vec<u8>> = (0..400)
            .map(|i| {
                format!(
                    "{{\"name\":\"p{i}\",\"pad\":\"{}\"}}",
                    "x".repeat(100 + (i * 37) % 5000)
                )
                .into_bytes()
            })
            .collect();
        let (pack, mut live) = pack_of(&docs);
        assert!(live.iter().map(|(_, l)| l.bytes).sum::<u64>() > PARALLEL_FROM);
        let decoded = pack.decode(&live);
        assert_eq!(decoded.len(), docs.len());
        for (got, want) in decoded.iter().zip(&docs) {
            assert_eq!(got.as_ref().unwrap().as_ref(), &want[..]);
        }
        // A wrong digest recorded for one entry fails that entry alone, at its place.
        live[321].1.sha256 = Some(vec![0; 32]);
        let decoded = pack.decode(&live);
        for (i, got) in decoded.iter().enumerate() {
            match got {
                Err(e) if i == 321 => assert!(e.to_string().contains("p321"), "{e}"),
                Ok(raw) if i != 321 => assert_eq!(raw.as_ref(), &docs[i][..]),
                other => panic!("entry {i}: {other:?}"),
            }
        }
    }
}
