//! What a `--store` URL names ([`StoreLocation`]), why one cannot be used
//! ([`StoreError`]), and the checks a local store directory passes before anything is
//! stored in it.

use std::path::PathBuf;

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
pub(super) fn check_store_dir(
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
