//! **Part `store`: where objects go.** Object storage behind one small interface, chosen
//! by URL (path, file://, memory://, gs://, s3://); durable, atomic local writes
//! ([`durable`]); which names are packages and the one-to-one name → object-key mapping
//! ([`names`]); half-open partitions in raw byte order and their stable names ([`keys`]).
//!
//! Uses: no other part.

pub mod durable;
pub mod keys;
pub mod names;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;

use crate::store::durable::LocalDir;
use object_store::{
    aws::AmazonS3Builder, buffered::BufWriter, gcp::GoogleCloudStorageBuilder,
    local::LocalFileSystem, memory::InMemory, path::Path, prefix::PrefixStore, ObjectStore,
    PutPayload,
};

/// Why a store URL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown store scheme `{scheme}://` in `{url}`: use a directory path, file://PATH, memory://NAME, gs://BUCKET[/PREFIX] or s3://BUCKET[/PREFIX]")]
    UnknownScheme { scheme: String, url: String },
    #[error("invalid store URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the store directory {path}: {source}; check that the path is writable")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store {path} is not usable: {reason}")]
    Unusable { path: String, reason: String },
    #[error("cannot open the store `{url}`: {source}")]
    Open {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// Where a store URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Local(PathBuf),
    Memory(String),
    Gcs { bucket: String, prefix: String },
    S3 { bucket: String, prefix: String },
}

impl StoreLocation {
    /// Parses a store URL without touching the store, so callers can refuse a bad one
    /// before anything is written.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(invalid("it is empty; give a directory or a URL"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Self::Local(PathBuf::from(url)));
        };
        match scheme {
            "file" => {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                let path = parsed
                    .to_file_path()
                    .map_err(|()| invalid("a file:// URL needs an absolute path"))?;
                Ok(Self::Local(path))
            }
            "memory" => Ok(Self::Memory(rest.to_string())),
            "gs" | "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("the bucket name is missing"));
                }
                let (bucket, prefix) = (bucket.to_string(), prefix.trim_matches('/').to_string());
                Ok(if scheme == "gs" {
                    Self::Gcs { bucket, prefix }
                } else {
                    Self::S3 { bucket, prefix }
                })
            }
            other => Err(StoreError::UnknownScheme {
                scheme: other.to_string(),
                url: url.to_string(),
            }),
        }
    }
}

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

    fn open_uncached(url: &str) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            url: url.to_string(),
            source,
        };
        let mut local = None;
        let (inner, base_uri): (Arc<dyn ObjectStore>, String) = match StoreLocation::parse(url)? {
            StoreLocation::Local(path) => {
                check_writable_and_case_sensitive(&path)?;
                let abs = std::fs::canonicalize(&path).map_err(|source| StoreError::CreateDir {
                    path: path.display().to_string(),
                    source,
                })?;
                let fs = Arc::new(LocalFileSystem::new_with_prefix(&abs).map_err(open_err)?);
                let base = url::Url::from_directory_path(&abs)
                    .map(|u| u.as_str().trim_end_matches('/').to_string())
                    .unwrap_or_else(|()| format!("file://{}", abs.display()));
                local = Some((fs.clone(), Arc::new(LocalDir::new(abs))));
                (fs, base)
            }
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
        let base_url = local.as_ref().and_then(|_| url::Url::parse(&base_uri).ok());
        Ok(Self {
            inner,
            base_uri,
            local,
            base_url,
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

/// Checks, before anything is stored, that a local store directory can hold a snapshot:
/// the path is (or can be made) a directory, a file can be written in it, and it tells
/// names apart by case — npm has names that differ only in case (`LiveScript` and
/// `livescript`), which would share one file on a case-insensitive volume (the default on
/// macOS and Windows). Creates the directory if it is missing.
pub fn check_writable_and_case_sensitive(dir: &std::path::Path) -> Result<(), StoreError> {
    check_store_dir(dir, |p| std::fs::symlink_metadata(p).is_ok())
}

/// [`check_writable_and_case_sensitive`] with the lookup injected: `exists` says whether a
/// path names a file (a case-insensitive volume finds a file under another case).
fn check_store_dir(
    dir: &std::path::Path,
    exists: impl Fn(&std::path::Path) -> bool,
) -> Result<(), StoreError> {
    let unusable = |reason: String| StoreError::Unusable {
        path: dir.display().to_string(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(unusable(
            "it is a file, not a directory; give a directory (it is created if missing) with --store".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.display().to_string(),
        source,
    })?;
    // Unique per call, so checks running at once (two leases, two processes) never
    // remove each other's probe.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!(".alldocs-probe-{}-{n}-CaseProbe", std::process::id());
    let upper = dir.join(&probe);
    std::fs::write(&upper, b"").map_err(|e| {
        unusable(format!(
            "cannot write a file in it ({e}); give a writable directory with --store"
        ))
    })?;
    let folded = exists(&dir.join(probe.to_lowercase()));
    let _ = std::fs::remove_file(&upper);
    if folded {
        return Err(unusable(
            "its file system does not tell names apart by case, and npm has packages whose \
             names differ only in case (`LiveScript` and `livescript`), which would overwrite \
             each other; put the store on a case-sensitive volume (e.g. a case-sensitive APFS \
             volume on macOS, a directory with case sensitivity enabled on Windows) or use \
             --store gs://BUCKET/PREFIX or s3://BUCKET/PREFIX"
                .into(),
        ));
    }
    Ok(())
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
