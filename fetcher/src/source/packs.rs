//! The packs one lease writes (`--layout packs`): packuments go into the lease's open pack
//! as zstd frames, and the pack is sealed — its trailer written, the object made whole
//! and durable in one write — once it holds `pack_bytes`, once its first packument is
//! `pack_interval` old, or when the lease ends. Only then are its packuments reported
//! stored. A pack that could not be written reports its packuments failed (retryable);
//! a lease cut short seals nothing and leaves nothing behind (see `store::object`).

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use alldocs_proto::v1::{ItemFailed, PackSealed, PackumentStored};
use prost::Message;

use crate::{
    source::http::FetchError,
    store::{
        object::ObjectWriter,
        pack::{self, Entry},
        Store,
    },
};

/// The pack size when the lease says nothing.
pub const DEFAULT_PACK_BYTES: u64 = 64 << 20;
/// How long a pack stays open when the lease says nothing.
pub const DEFAULT_PACK_INTERVAL: Duration = Duration::from_secs(5);

/// What sealing a pack gives the lease to report: the pack, then its packuments stored;
/// or, for a pack that could not be written, its packuments failed.
#[derive(Debug, Default)]
pub struct Sealed {
    pub pack: Option<PackSealed>,
    pub stored: Vec<PackumentStored>,
    pub failed: Vec<ItemFailed>,
}

/// The pack being filled.
struct Open {
    writer: ObjectWriter,
    /// The `stored` events of its packuments, encoded one after another (length-delimited
    /// protobuf) in one buffer: a pack holds them until it is sealed, and thousands of
    /// small allocations living that long, each between the large short-lived ones of a
    /// response, would keep the allocator from reusing that memory (measured: 47 KB per
    /// packument held, over 200 MiB for a 5,000-packument lease).
    held: Vec<u8>,
    /// A write failed: every packument in it fails.
    broken: Option<String>,
}

/// The packs of one lease.
pub struct Packer {
    store: Store,
    snapshot: String,
    token: u64,
    max_bytes: u64,
    interval: Duration,
    next: AtomicU32,
    open: tokio::sync::Mutex<Option<Open>>,
    /// When the open pack is due to be sealed: its first packument's time plus the
    /// interval; set and cleared under `open`'s lock, readable without it (the lease's
    /// timer).
    due: Mutex<Option<Instant>>,
    /// Packuments of broken packs, waiting to be reported failed.
    failed: Mutex<Vec<ItemFailed>>,
}

impl Packer {
    /// `max_bytes` 0 and `interval` zero take the defaults.
    pub fn new(
        store: Store,
        snapshot: &str,
        token: u64,
        max_bytes: u64,
        interval: Duration,
    ) -> Self {
        Self {
            store,
            snapshot: snapshot.to_string(),
            token,
            max_bytes: if max_bytes == 0 {
                DEFAULT_PACK_BYTES
            } else {
                max_bytes
            },
            interval: if interval.is_zero() {
                DEFAULT_PACK_INTERVAL
            } else {
                interval
            },
            next: AtomicU32::new(0),
            open: tokio::sync::Mutex::new(None),
            due: Mutex::new(None),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// The size above which a packument goes into a pack of its own.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// A new pack object of this lease (its own, for one large packument).
    pub fn create(&self) -> Result<ObjectWriter, object_store::Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.store
            .create(&pack::pack_path(&self.snapshot, self.token, n))
    }

    /// Adds one packument's frame (`stored` without its location yet) to the open pack;
    /// returns what sealing it gave when this filled the pack. An error writing the pack
    /// fails this packument (the caller may try it again, into a new pack) and the others
    /// in that pack (see [`Packer::take_failed`]).
    pub async fn add(
        &self,
        frame: &[u8],
        mut stored: PackumentStored,
    ) -> Result<Option<Sealed>, FetchError> {
        let mut open = self.open.lock().await;
        if open.as_ref().is_some_and(|o| o.broken.is_some()) {
            let broken = open.take().expect("an open pack");
            self.report_failed(broken.held, broken.broken.unwrap_or_default());
        }
        if open.is_none() {
            let writer = self
                .create()
                .map_err(|e| store_error(&e.to_string(), "a new pack"))?;
            *open = Some(Open {
                writer,
                held: Vec::new(),
                broken: None,
            });
            *self.due.lock().expect("due") = Some(Instant::now() + self.interval);
        }
        let o = open.as_mut().expect("an open pack");
        let offset = o.writer.len();
        if let Err(e) = o.writer.write(frame).await {
            let err = store_error(&e.to_string(), o.writer.uri());
            o.broken = Some(err.to_string());
            return Err(err);
        }
        stored.pack_offset = offset;
        stored.pack_length = frame.len() as u64;
        stored
            .encode_length_delimited(&mut o.held)
            .expect("a Vec grows as needed");
        if o.writer.len() < self.max_bytes {
            return Ok(None);
        }
        let full = self.take(&mut open).expect("an open pack");
        drop(open);
        Ok(Some(self.finish(full).await))
    }

    /// When the open pack should be sealed, if one is open.
    pub fn due(&self) -> Option<Instant> {
        *self.due.lock().expect("due")
    }

    /// Seals the open pack if it is due ([`Packer::due`]).
    pub async fn seal_if_due(&self) -> Option<Sealed> {
        let mut open = self.open.lock().await;
        if open.is_none() || self.due().is_none_or(|due| due > Instant::now()) {
            return None;
        }
        let due = self.take(&mut open).expect("an open pack");
        drop(open);
        Some(self.finish(due).await)
    }

    /// Seals the open pack, if it holds anything (the lease's end).
    pub async fn seal(&self) -> Option<Sealed> {
        let open = self.take(&mut *self.open.lock().await)?;
        Some(self.finish(open).await)
    }

    /// Packuments of packs that could not be written, to report failed.
    pub fn take_failed(&self) -> Vec<ItemFailed> {
        std::mem::take(&mut *self.failed.lock().expect("failed"))
    }

    fn report_failed(&self, held: Vec<u8>, reason: String) {
        self.fail_all(decode_held(&held), reason);
    }

    fn fail_all(&self, held: Vec<PackumentStored>, reason: String) {
        let mut failed = self.failed.lock().expect("failed");
        failed.extend(held.into_iter().map(|s| ItemFailed {
            name: s.name,
            reason: reason.clone(),
            retryable: true,
            http_status: 0,
        }));
    }

    /// Takes the open pack to seal it (under the lock, so a pack opened meanwhile keeps
    /// its own due time).
    fn take(&self, open: &mut Option<Open>) -> Option<Open> {
        *self.due.lock().expect("due") = None;
        open.take()
    }

    /// Writes the trailer and makes the pack whole and durable.
    async fn finish(&self, open: Open) -> Sealed {
        let Open {
            writer,
            held,
            broken,
            ..
        } = open;
        if let Some(reason) = broken {
            self.report_failed(held, reason);
            return Sealed::default();
        }
        let uri = writer.uri().to_string();
        let mut stored = decode_held(&held);
        drop(held);
        match seal_pack(writer, &mut stored).await {
            Ok(pack) => Sealed {
                pack: Some(pack),
                stored,
                failed: Vec::new(),
            },
            Err(e) => {
                let reason = store_error(&e.to_string(), &uri).to_string();
                tracing::warn!(pack = %uri, error = %e, "a pack could not be written; its packuments are tried again");
                self.fail_all(stored, reason);
                Sealed::default()
            }
        }
    }
}

/// The `stored` events a pack held, in the order they were added.
fn decode_held(mut held: &[u8]) -> Vec<PackumentStored> {
    let mut out = Vec::new();
    while !held.is_empty() {
        out.push(PackumentStored::decode_length_delimited(&mut held).expect("encoded here"));
    }
    out
}

/// The trailer's entry of a packument in the pack.
fn entry_of(s: &PackumentStored) -> Entry {
    Entry {
        name: s.name.clone(),
        offset: s.pack_offset,
        length: s.pack_length,
        raw_length: s.bytes,
        sha256: hex::encode(&s.sha256),
    }
}

/// Seals a pack holding the frames of `stored` (their offsets and lengths set): writes
/// their trailer, commits, and sets the pack's URI on each.
pub async fn seal_pack(
    writer: ObjectWriter,
    stored: &mut [PackumentStored],
) -> std::io::Result<PackSealed> {
    let uri = writer.uri().to_string();
    let bytes = seal_writer(writer, stored.iter().map(entry_of).collect()).await?;
    for s in stored.iter_mut() {
        s.uri.clone_from(&uri);
    }
    Ok(PackSealed {
        uri,
        bytes,
        entries: stored.len() as u64,
    })
}

/// Appends the trailer of `entries` and commits; returns the pack's size.
pub async fn seal_writer(mut writer: ObjectWriter, entries: Vec<Entry>) -> std::io::Result<u64> {
    let trailer = pack::trailer_frame(entries)?;
    writer.write(&trailer).await?;
    let bytes = writer.len();
    writer.commit().await?;
    Ok(bytes)
}

fn store_error(message: &str, uri: &str) -> FetchError {
    FetchError::Store {
        uri: uri.to_string(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack::{compress, footer_len, parse_trailer, sha256_hex, FOOTER_BYTES};
    use futures::TryStreamExt;

    fn store(tag: &str) -> Store {
        Store::open(&format!("memory://packs-{tag}")).unwrap()
    }

    fn meta(name: &str, raw: &[u8]) -> PackumentStored {
        PackumentStored {
            name: name.into(),
            rev: "1-a".into(),
            bytes: raw.len() as u64,
            sha256: hex::decode(sha256_hex(raw)).unwrap(),
            ..Default::default()
        }
    }

    async fn packs_in(store: &Store) -> Vec<object_store::path::Path> {
        let listed: Vec<_> = store
            .object_store()
            .list(Some(&"packs".into()))
            .try_collect()
            .await
            .unwrap();
        listed.into_iter().map(|m| m.location).collect()
    }

    fn doc(i: usize) -> Vec<u8> {
        format!(r#"{{"name":"p{i}","readme":"{}"}}"#, "word ".repeat(40 + i)).into_bytes()
    }

    #[tokio::test]
    async fn a_pack_seals_once_full_and_reports_where_each_packument_is() {
        let store = store("full");
        let packer = Packer::new(store.clone(), "ab12", 7, 300, Duration::from_secs(60));
        let mut sealed = None;
        let mut added = Vec::new();
        for i in 0..50 {
            let raw = doc(i);
            let frame = compress(&raw).unwrap();
            added.push(raw.clone());
            if let Some(s) = packer
                .add(&frame, meta(&format!("p{i}"), &raw))
                .await
                .unwrap()
            {
                sealed = Some(s);
                break;
            }
        }
        let sealed = sealed.expect("the pack filled up and was sealed");
        let pack = sealed.pack.expect("a pack");
        assert_eq!(pack.entries as usize, added.len());
        assert_eq!(
            pack.uri,
            "memory://packs-full/packs/ab12/000000000007-0000.pack"
        );
        let bytes = store.get(&store.path_of(&pack.uri).unwrap()).await.unwrap();
        assert_eq!(bytes.len() as u64, pack.bytes);
        let footer = bytes.len() - FOOTER_BYTES as usize;
        let len = footer_len(&bytes[footer..], "p").unwrap() as usize;
        let trailer = parse_trailer(&bytes[footer - len..footer], "p").unwrap();
        assert_eq!(trailer.entries.len(), added.len());
        for (stored, raw) in sealed.stored.iter().zip(&added) {
            assert_eq!(stored.uri, pack.uri);
            let frame = &bytes
                [stored.pack_offset as usize..(stored.pack_offset + stored.pack_length) as usize];
            assert_eq!(
                &zstd::stream::decode_all(frame).unwrap(),
                raw,
                "{}",
                stored.name
            );
        }
        assert!(packer.seal().await.is_none(), "nothing left open");
    }

    #[tokio::test]
    async fn nothing_is_in_the_store_until_a_pack_is_sealed_and_a_dropped_one_leaves_nothing() {
        let store = store("dropped");
        let packer = Packer::new(store.clone(), "cd34", 1, 0, Duration::ZERO);
        let raw = doc(1);
        assert!(packer
            .add(&compress(&raw).unwrap(), meta("p1", &raw))
            .await
            .unwrap()
            .is_none());
        assert!(
            packs_in(&store).await.is_empty(),
            "an open pack is not visible"
        );
        drop(packer); // a lease cut short
        assert!(
            packs_in(&store).await.is_empty(),
            "and leaves nothing behind"
        );

        let packer = Packer::new(store.clone(), "cd34", 2, 0, Duration::ZERO);
        packer
            .add(&compress(&raw).unwrap(), meta("p1", &raw))
            .await
            .unwrap();
        let sealed = packer.seal().await.expect("the lease's end seals it");
        assert_eq!(sealed.stored.len(), 1);
        assert_eq!(packs_in(&store).await.len(), 1);
    }

    #[tokio::test]
    async fn a_pack_is_due_once_its_first_packument_is_the_interval_old() {
        let store = store("due");
        let packer = Packer::new(store.clone(), "ef56", 3, 0, Duration::from_millis(30));
        assert!(packer.due().is_none(), "nothing open, nothing due");
        let raw = doc(2);
        packer
            .add(&compress(&raw).unwrap(), meta("p2", &raw))
            .await
            .unwrap();
        assert!(packer.seal_if_due().await.is_none(), "not yet");
        tokio::time::sleep_until(packer.due().expect("due").into()).await;
        let sealed = packer.seal_if_due().await.expect("due now");
        assert_eq!(sealed.stored[0].name, "p2");
        assert!(packer.due().is_none());
    }
}
