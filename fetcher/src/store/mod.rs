//! **Part `store`: where objects go.** Object storage behind one small interface, chosen
//! by URL (path, file://, memory://, gs://, s3://); durable, atomic local writes
//! ([`durable`]); which names are packages and the one-to-one name → object-key mapping
//! ([`names`]); half-open partitions in raw byte order and their stable names ([`keys`]);
//! objects written piece by piece and seen only once whole ([`object`]); and the pack
//! format, many packuments per object ([`pack`]); what a store URL names and whether a
//! local store directory can be used ([`location`]).
//!
//! Uses: no other part.

pub mod durable;
pub mod keys;
mod location;
pub mod names;
pub mod object;
pub mod pack;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;

use crate::store::durable::LocalDir;
pub use crate::store::location::{check_writable_and_case_sensitive, StoreError, StoreLocation};
use object_store::{
    aws::AmazonS3Builder, buffered::BufWriter, gcp::GoogleCloudStorageBuilder,
    local::LocalFileSystem, memory::InMemory, path::Path, prefix::PrefixStore, ObjectStore,
    PutPayload,
};

/// An opened object store and the URI its objects are known by.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    base_uri: String,
    /// For a local directory: the file system, and its root for durable writes.
    local: Option<(Arc<LocalFileSystem>, Arc<LocalDir>)>,
    /// For a local directory: `base_uri` parsed once (every object's URI extends it).
    base_url: Option<url::Url>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("base_uri", &self.base_uri)
            .finish()
    }
}

fn opened() -> &'static Mutex<HashMap<String, Store>> {
    static OPENED: OnceLock<Mutex<HashMap<String, Store>>> = OnceLock::new();
    OPENED.get_or_init(Default::default)
}

impl Store {
    /// Opens (or reuses) the store a URL names. Stores are cached per URL for the life of
    /// the process, so every lease naming `memory://x` sees the same objects.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        if let Some(store) = opened().lock().expect("store cache").get(url) {
            return Ok(store.clone());
        }
        let store = Self::open_uncached(url)?;
        opened()
            .lock()
            .expect("store cache")
            .entry(url.to_string())
            .or_insert(store.clone());
        Ok(store)
    }

    /// Opens a store only to read what it holds (`show`, `export`, `unpack`'s source):
    /// a local directory must exist, and nothing is written to it (not even the probe
    /// [`Store::open`] writes to check it can hold a snapshot), so a read-only one reads.
    pub fn open_to_read(url: &str) -> Result<Self, StoreError> {
        if let StoreLocation::Local(path) = StoreLocation::parse(url)? {
            if !path.is_dir() {
                return Err(StoreError::Unusable {
                    path: path.display().to_string(),
                    reason: "it is not a directory (was the store moved or deleted?)".into(),
                });
            }
            return Self::open_local(url, &path, false);
        }
        Self::open(url)
    }

    fn open_uncached(url: &str) -> Result<Self, StoreError> {
        if let StoreLocation::Local(path) = StoreLocation::parse(url)? {
            return Self::open_local(url, &path, true);
        }
        let open_err = |source| StoreError::Open {
            url: url.to_string(),
            source,
        };
        let (inner, base_uri): (Arc<dyn ObjectStore>, String) = match StoreLocation::parse(url)? {
            StoreLocation::Local(_) => unreachable!("opened by open_local"),
            StoreLocation::Memory(name) => (
                Arc::new(InMemory::new()),
                format!("memory://{}", name.trim_end_matches('/')),
            ),
            StoreLocation::Gcs { bucket, prefix } => {
                let gcs = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(open_err)?;
                (
                    with_prefix(gcs, &prefix),
                    join_uri(&format!("gs://{bucket}"), &prefix),
                )
            }
            StoreLocation::S3 { bucket, prefix } => {
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(open_err)?;
                (
                    with_prefix(s3, &prefix),
                    join_uri(&format!("s3://{bucket}"), &prefix),
                )
            }
        };
        Ok(Self {
            inner,
            base_uri,
            local: None,
            base_url: None,
        })
    }

    /// A local directory, checked first (`check`) that it can hold a snapshot.
    fn open_local(url: &str, path: &std::path::Path, check: bool) -> Result<Self, StoreError> {
        if check {
            check_writable_and_case_sensitive(path)?;
        }
        let abs = std::fs::canonicalize(path).map_err(|source| StoreError::CreateDir {
            path: path.display().to_string(),
            source,
        })?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(&abs).map_err(|source| {
            StoreError::Open {
                url: url.to_string(),
                source,
            }
        })?);
        let base_uri = url::Url::from_directory_path(&abs)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_else(|()| format!("file://{}", abs.display()));
        Ok(Self {
            inner: fs.clone(),
            base_url: url::Url::parse(&base_uri).ok(),
            base_uri,
            local: Some((fs, Arc::new(LocalDir::new(abs)))),
        })
    }

    /// The full URI of an object, e.g. `file:///data/packuments/@types/node.json`. A
    /// `file://` URI is a URL that resolves to the file (a key's `%` is written `%25`, as
    /// are spaces and non-ASCII bytes); gs:// and s3:// URIs hold the key as it is.
    pub fn uri(&self, path: &Path) -> String {
        if let Some(base) = &self.base_url {
            let mut url = base.clone();
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().extend(path.parts());
            }
            return url.into();
        }
        join_uri(&self.base_uri, path.as_ref())
    }

    /// The path of an object of this store, from its URI ([`Store::uri`]); `None` for a
    /// URI outside the store.
    pub fn path_of(&self, uri: &str) -> Option<Path> {
        let base = match &self.base_url {
            Some(base) => base.as_str().trim_end_matches('/').to_string(),
            None => self.base_uri.trim_end_matches('/').to_string(),
        };
        let rest = uri.strip_prefix(&base)?.strip_prefix('/')?;
        if self.base_url.is_some() {
            // A file:// URI: its segments are percent-encoded.
            let parts: Vec<String> = rest
                .split('/')
                .map(|s| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect();
            return Some(Path::from_iter(parts));
        }
        Some(Path::from(rest))
    }

    /// Writes a whole object at once, replacing any object at that path (idempotent).
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), object_store::Error> {
        self.inner
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
    }

    /// Writes a whole object at once and makes it survive a power loss before returning:
    /// the same as [`Store::put`] then [`Store::make_durable`], but for a local directory
    /// in one blocking call that writes and syncs the file, links (or renames) it into
    /// place, then syncs its directory together with concurrent writers
    /// ([`LocalDir::write`]).
    pub async fn put_durable(&self, path: &Path, bytes: Bytes) -> Result<(), object_store::Error> {
        let Some((fs, dir)) = &self.local else {
            return self.put(path, bytes).await;
        };
        let file = fs.path_to_filesystem(path)?;
        let dir = dir.clone();
        blocking(move || dir.write(&file, &bytes)).await
    }

    /// Makes a written object survive a power loss before anyone is told it is stored.
    ///
    /// object_store's `LocalFileSystem` (0.12) writes a temp file and renames it into
    /// place without any fsync, so after a crash the rename may be on disk and the data
    /// not: a file that exists but is empty. So for a local directory the file is synced,
    /// then its directory (grouped with concurrent writers), and once per process each
    /// directory up to the store's root (any scope directory just created). A completed
    /// PUT or multipart upload to gs:// or s3:// is already durable when it returns:
    /// nothing to do there (nor for memory://).
    pub async fn make_durable(&self, path: &Path) -> Result<(), object_store::Error> {
        let Some((fs, dir)) = &self.local else {
            return Ok(());
        };
        let file = fs.path_to_filesystem(path)?;
        let dir = dir.clone();
        blocking(move || dir.make_durable(&file)).await
    }

    /// A writer that uploads in parts once it holds more than `capacity` bytes; nothing is
    /// visible at `path` until it is shut down, and `abort` leaves no object behind.
    pub fn writer(&self, path: &Path, capacity: usize) -> BufWriter {
        BufWriter::with_capacity(self.inner.clone(), path.clone(), capacity)
    }

    /// Reads a whole object (tests and tools; fetchers never read back).
    pub async fn get(&self, path: &Path) -> Result<Bytes, object_store::Error> {
        self.inner.get(path).await?.bytes().await
    }

    /// For a local directory: its file system and durable-write state.
    pub(crate) fn local(&self) -> Option<&(Arc<LocalFileSystem>, Arc<LocalDir>)> {
        self.local.as_ref()
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

/// Runs local file work on a blocking thread, its error as object_store's.
async fn blocking(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), object_store::Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| object_store::Error::JoinError { source: e })?
        .map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })
}

fn with_prefix<S: ObjectStore>(store: S, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

fn join_uri(base: &str, path: &str) -> String {
    if path.is_empty() {
        base.to_string()
    } else {
        format!("{}/{}", base.trim_end_matches('/'), path)
    }
}

/// `packuments/<key>.json`, the key one-to-one with the name ([`crate::store::names::encode_key`]):
/// `react` → `packuments/react.json`, `@types/node` → `packuments/@types/node.json`,
/// `a/b` → `packuments/a%2Fb.json`, `100%` → `packuments/100%25.json`.
pub fn packument_path(name: &str) -> Path {
    let raw = format!("packuments/{}.json", crate::store::names::encode_key(name));
    Path::parse(&raw).expect("encoded keys have no empty, `.`, `..` or control segments")
}

/// `index/<partition>.jsonl`.
pub fn index_path(partition: &str) -> Path {
    Path::from(format!("index/{partition}.jsonl"))
}

#[cfg(test)]
mod tests {
    use super::location::check_store_dir;
    use super::*;

    #[test]
    fn parses_every_supported_scheme_and_refuses_others() {
        assert_eq!(
            StoreLocation::parse("./data").unwrap(),
            StoreLocation::Local("./data".into())
        );
        assert_eq!(
            StoreLocation::parse("file:///tmp/x").unwrap(),
            StoreLocation::Local("/tmp/x".into())
        );
        assert_eq!(
            StoreLocation::parse("gs://bkt/snap/2026/").unwrap(),
            StoreLocation::Gcs {
                bucket: "bkt".into(),
                prefix: "snap/2026".into()
            }
        );
        assert_eq!(
            StoreLocation::parse("s3://bkt").unwrap(),
            StoreLocation::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        let err = StoreLocation::parse("ftp://host/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown store scheme `ftp://`"), "{err}");
        assert!(
            err.contains("gs://"),
            "the error says what to use instead: {err}"
        );
        assert!(StoreLocation::parse("gs:///x").is_err());
    }

    #[test]
    fn scoped_packuments_are_nested_under_their_scope() {
        assert_eq!(
            packument_path("@types/node").as_ref(),
            "packuments/@types/node.json"
        );
        assert_eq!(
            packument_path("JSONStream").as_ref(),
            "packuments/JSONStream.json"
        );
        assert_eq!(packument_path("~a*b!").as_ref(), "packuments/~a*b!.json");
        assert_eq!(
            packument_path("bad\nname").as_ref(),
            "packuments/bad%0Aname.json"
        );
        assert_eq!(
            packument_path("bad%0Aname").as_ref(),
            "packuments/bad%250Aname.json"
        );
        assert_eq!(packument_path("a/b").as_ref(), "packuments/a%2Fb.json");
    }

    #[tokio::test]
    async fn memory_stores_are_shared_per_url_and_writes_are_idempotent() {
        let a = Store::open("memory://shared-test").unwrap();
        let b = Store::open("memory://shared-test").unwrap();
        let path = packument_path("left-pad");
        a.put(&path, Bytes::from_static(b"{}")).await.unwrap();
        a.put(&path, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(b.get(&path).await.unwrap(), Bytes::from_static(b"{}"));
        assert_eq!(
            b.uri(&path),
            "memory://shared-test/packuments/left-pad.json"
        );
    }

    #[tokio::test]
    async fn local_store_uri_is_absolute_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let path = packument_path("@scope/pkg");
        store.put(&path, Bytes::from_static(b"[]")).await.unwrap();
        let on_disk = dir.path().join("packuments/@scope/pkg.json");
        assert_eq!(std::fs::read(on_disk).unwrap(), b"[]");
        assert!(store.uri(&path).starts_with("file:///"));
        assert!(store.uri(&path).ends_with("/packuments/@scope/pkg.json"));
    }

    #[test]
    fn a_case_insensitive_store_directory_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        // A lookup that folds case, as macOS and Windows volumes do by default.
        let folding = |p: &std::path::Path| {
            let want = p.file_name().unwrap().to_string_lossy().to_lowercase();
            std::fs::read_dir(p.parent().unwrap())
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().to_lowercase() == want)
        };
        let err = check_store_dir(dir.path(), folding)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not tell names apart by case"), "{err}");
        assert!(
            err.contains("case-sensitive volume") && err.contains("s3://"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe removed"
        );
        // This machine's volume is case-sensitive: the real check passes, leaving nothing.
        check_writable_and_case_sensitive(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe removed"
        );
    }

    #[test]
    fn a_store_path_that_is_a_file_or_cannot_be_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = check_writable_and_case_sensitive(&file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a file, not a directory"), "{err}");
        assert!(err.contains("--store"), "{err}");
        let err = Store::open(file.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("is a file, not a directory"), "{err}");
        // /proc/self is a directory no one may create files in, root included.
        let err = check_writable_and_case_sensitive(std::path::Path::new("/proc/self"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot write a file in it"), "{err}");
        assert!(err.contains("writable directory"), "{err}");
    }

    #[tokio::test]
    async fn local_objects_are_synced_after_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let path = packument_path("@scope/pkg");
        store.put(&path, Bytes::from_static(b"{}")).await.unwrap();
        store.make_durable(&path).await.unwrap();
        let missing = packument_path("never-written");
        assert!(store.make_durable(&missing).await.is_err());
        let memory = Store::open("memory://durable-test").unwrap();
        memory.make_durable(&missing).await.unwrap();
        // Written and synced in one call: the bytes are there, under their key only.
        let scoped = packument_path("@other/pkg");
        store
            .put_durable(&scoped, Bytes::from_static(b"{\"a\":1}"))
            .await
            .unwrap();
        let on_disk = dir.path().join("packuments/@other/pkg.json");
        assert_eq!(std::fs::read(on_disk).unwrap(), b"{\"a\":1}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("packuments/@other"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pkg.json"], "no staged file left");
        memory
            .put_durable(&scoped, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            memory.get(&scoped).await.unwrap(),
            Bytes::from_static(b"{}")
        );
    }

    #[tokio::test]
    async fn local_uris_resolve_to_the_file_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        for name in ["a/b", "100%", "nul%00name", "@s/a%2Fb", "caf\u{e9} x"] {
            let path = packument_path(name);
            store
                .put(&path, Bytes::from(name.to_string()))
                .await
                .unwrap();
            let file = url::Url::parse(&store.uri(&path))
                .unwrap()
                .to_file_path()
                .unwrap();
            assert_eq!(std::fs::read(&file).unwrap(), name.as_bytes(), "{name}");
        }
        let uri = store.uri(&packument_path("@types/node"));
        assert!(uri.ends_with("/packuments/@types/node.json"), "{uri}");
    }
}
