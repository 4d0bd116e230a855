//! What a fetcher's operator lets a lease do: the stores it may write and the origins it
//! may read (prefixes of normalised URLs), and how large and how concurrent it may be.

use std::path::{Component, Path, PathBuf};

use alldocs_proto::v1::{lease::Work, Lease};
use tonic::Status;

use crate::{
    source::{http::redact, npmrc::has_dot_segment},
    store::StoreLocation,
};

/// The largest lease a fetcher takes by default: the coordinator's largest (`--lease-size`
/// is at most 10,000).
pub const DEFAULT_MAX_LEASE_ITEMS: usize = 10_000;

/// Requests one lease may have in flight by default.
pub const DEFAULT_MAX_LEASE_CONCURRENCY: u32 = 64;

/// Why an allow-list entry is unusable (refused when the fetcher starts).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("--allow-store `{entry}`: {reason}")]
    Store { entry: String, reason: String },
    #[error("--allow-origin `{entry}`: {reason}")]
    Origin { entry: String, reason: String },
}

/// Where a store URL points, normalised so prefixes compare safely: a local directory as
/// its canonical absolute path, a bucket as scheme, bucket and path segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKey {
    Local(PathBuf),
    Bucket {
        scheme: &'static str,
        bucket: String,
        segments: Vec<String>,
    },
}

impl StoreKey {
    /// Normalises a store URL (or a bare path, taken from the current directory). A
    /// `memory://` store, a `..` segment or an unparsable URL is refused with the reason.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            if decoded.split(['/', '\\']).any(|s| s == "..") {
                return Err("it has a `..` segment".into());
            }
        }
        match StoreLocation::parse(url).map_err(|e| e.to_string())? {
            StoreLocation::Memory(_) => Err(
                "a memory:// store lives inside one process; a remote fetcher cannot write to it"
                    .into(),
            ),
            StoreLocation::Local(path) => Ok(Self::Local(canonical(&path)?)),
            StoreLocation::Gcs { bucket, prefix } => Self::bucket("gs", &bucket, &prefix),
            StoreLocation::S3 { bucket, prefix } => Self::bucket("s3", &bucket, &prefix),
        }
    }

    fn bucket(scheme: &'static str, bucket: &str, prefix: &str) -> Result<Self, String> {
        Ok(Self::Bucket {
            scheme,
            bucket: bucket.to_ascii_lowercase(),
            segments: segments(prefix)?,
        })
    }

    /// Whether `self` lies within `prefix`, segment by segment.
    pub fn is_within(&self, prefix: &Self) -> bool {
        match (self, prefix) {
            (Self::Local(path), Self::Local(root)) => path.starts_with(root),
            (
                Self::Bucket {
                    scheme,
                    bucket,
                    segments,
                },
                Self::Bucket {
                    scheme: s,
                    bucket: b,
                    segments: under,
                },
            ) => scheme == s && bucket == b && segments.starts_with(under),
            _ => false,
        }
    }
}

/// The non-empty segments of a `/`-separated path; a `.` or `..` segment (also written
/// with `%2e`, or hidden behind `%2f`) is refused.
fn segments(path: &str) -> Result<Vec<String>, String> {
    if has_dot_segment(path) {
        return Err("it has a `.` or `..` segment".into());
    }
    Ok(path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// `path` made absolute (from the current directory), with no `..`, and its longest
/// existing ancestor resolved through symlinks: where a store there would really write.
fn canonical(path: &Path) -> Result<PathBuf, String> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("it has a `..` segment".into());
    }
    let absolute = std::path::absolute(path).map_err(|e| e.to_string())?;
    let parts: Vec<Component> = absolute
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    for existing in (1..=parts.len()).rev() {
        let ancestor: PathBuf = parts[..existing].iter().collect();
        if let Ok(real) = std::fs::canonicalize(&ancestor) {
            return Ok(parts[existing..].iter().fold(real, |p, c| p.join(c)));
        }
    }
    Ok(parts.iter().collect())
}

/// An origin URL, normalised: scheme, host (lowercase), port (defaults filled in) and the
/// non-empty path segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginKey {
    scheme: String,
    host: String,
    port: u16,
    segments: Vec<String>,
}

impl OriginKey {
    /// Normalises an http(s) URL; a query, a fragment, or a `.`/`..` segment is refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("not an http(s) URL".into());
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err("it has a query or a fragment".into());
        }
        let raw_path = url.split_once("://").map_or(url, |(_, rest)| rest);
        let raw_path = raw_path.find('/').map_or("", |i| &raw_path[i..]);
        if has_dot_segment(raw_path) {
            return Err("it has a `.` or `..` segment".into());
        }
        Ok(Self {
            scheme: parsed.scheme().to_string(),
            host: parsed.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: parsed.port_or_known_default().unwrap_or_default(),
            segments: segments(parsed.path())?,
        })
    }

    /// Whether `self` lies within `prefix`: same scheme, host and port, and the prefix's
    /// path segments first.
    pub fn is_within(&self, prefix: &Self) -> bool {
        self.scheme == prefix.scheme
            && self.host == prefix.host
            && self.port == prefix.port
            && self.segments.starts_with(&prefix.segments)
    }
}

/// What leases arriving over gRPC may name and how large they may be. The in-process
/// fetcher a coordinator embeds is [`Policy::unrestricted`].
#[derive(Clone, Debug)]
pub struct Policy {
    /// Stores a lease may name; `None` with `remote` set: any but `memory://`.
    stores: Option<Vec<(String, StoreKey)>>,
    /// Origins a lease may read; `None`: any.
    origins: Option<Vec<(String, OriginKey)>>,
    max_items: usize,
    max_concurrency: u32,
    /// Leases come from other processes: `memory://` is refused, caps apply.
    remote: bool,
}

impl Policy {
    /// Everything allowed: the coordinator's own in-process fetcher.
    pub fn unrestricted() -> Self {
        Self {
            stores: None,
            origins: None,
            max_items: usize::MAX,
            max_concurrency: u32::MAX,
            remote: false,
        }
    }

    /// A policy for leases from other processes: stores and origins within the given
    /// prefixes (`None`: any, except that `memory://` is always refused), at most
    /// `max_items` items, at most `max_concurrency` requests at once.
    pub fn remote(
        stores: Option<&[String]>,
        origins: Option<&[String]>,
        max_items: usize,
        max_concurrency: u32,
    ) -> Result<Self, PolicyError> {
        let stores = stores
            .map(|list| {
                list.iter()
                    .map(|entry| {
                        StoreKey::parse(entry)
                            .map(|key| (entry.clone(), key))
                            .map_err(|reason| PolicyError::Store {
                                entry: entry.clone(),
                                reason,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let origins = origins
            .map(|list| {
                list.iter()
                    .map(|entry| {
                        OriginKey::parse(entry)
                            .map(|key| (redact(entry), key))
                            .map_err(|reason| PolicyError::Origin {
                                entry: redact(entry),
                                reason,
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            stores,
            origins,
            max_items,
            max_concurrency: max_concurrency.max(1),
            remote: true,
        })
    }

    /// Checks a lease before anything is sent or written: `PERMISSION_DENIED` for a store
    /// or origin outside the allow-lists, `INVALID_ARGUMENT` for a lease over
    /// `--max-lease-items`. A concurrency over `--max-lease-concurrency` is lowered to it.
    pub fn admit(&self, mut lease: Lease) -> Result<Lease, Status> {
        if !self.remote {
            return Ok(lease);
        }
        self.check_size(&lease)?;
        self.check_store(&lease)?;
        match &lease.work {
            Some(Work::Index(_)) => self.check_origin(&lease, "replicate_origin")?,
            Some(Work::Packuments(_)) => self.check_origin(&lease, "registry")?,
            None => {}
        }
        if lease.concurrency > self.max_concurrency {
            tracing::warn!(
                lease = %lease.lease_id, asked = lease.concurrency, cap = self.max_concurrency,
                "the lease asks for more requests at once than --max-lease-concurrency; lowered to it"
            );
            lease.concurrency = self.max_concurrency;
        }
        Ok(lease)
    }

    fn check_size(&self, lease: &Lease) -> Result<(), Status> {
        let items = match &lease.work {
            Some(Work::Packuments(p)) => p.items.len(),
            _ => 0,
        };
        if items > self.max_items {
            return Err(Status::invalid_argument(format!(
                "lease {} has {items} items, more than this fetcher's --max-lease-items {} \
                 (ALLDOCS_MAX_LEASE_ITEMS): give the coordinator a smaller --lease-size, or \
                 raise --max-lease-items on the fetcher",
                lease.lease_id, self.max_items
            )));
        }
        Ok(())
    }

    fn check_store(&self, lease: &Lease) -> Result<(), Status> {
        let url = &lease.store_url;
        let denied = |why: String| {
            Status::permission_denied(format!("lease {}: the store `{url}` {why}", lease.lease_id))
        };
        let key = StoreKey::parse(url).map_err(|reason| {
            denied(format!(
                "is refused: {reason}; give the coordinator a --store this fetcher may write \
                 (gs://, s3:// or a directory allowed by the fetcher's --allow-store / \
                 ALLDOCS_ALLOW_STORE)"
            ))
        })?;
        let Some(allowed) = &self.stores else {
            return Ok(());
        };
        if allowed.iter().any(|(_, prefix)| key.is_within(prefix)) {
            return Ok(());
        }
        Err(denied(format!(
            "is not within the stores this fetcher allows ({}); give the coordinator a \
             --store within them, or add it to the fetcher's --allow-store / ALLDOCS_ALLOW_STORE",
            list(allowed)
        )))
    }

    fn check_origin(&self, lease: &Lease, field: &str) -> Result<(), Status> {
        let url = if field == "registry" {
            &lease.registry
        } else {
            &lease.replicate_origin
        };
        let flag = if field == "registry" {
            "--registry"
        } else {
            "--replicate-origin"
        };
        let Some(allowed) = &self.origins else {
            return Ok(());
        };
        let denied = |why: String| {
            Status::permission_denied(format!(
                "lease {}: the {field} `{}` {why}; give the coordinator a {flag} within them, \
                 or add it to the fetcher's --allow-origin / ALLDOCS_ALLOW_ORIGIN",
                lease.lease_id,
                redact(url)
            ))
        };
        let key = OriginKey::parse(url).map_err(|reason| {
            denied(format!(
                "is refused ({reason}) by the origins this fetcher allows ({})",
                list(allowed)
            ))
        })?;
        if allowed.iter().any(|(_, prefix)| key.is_within(prefix)) {
            return Ok(());
        }
        Err(denied(format!(
            "is not within the origins this fetcher allows ({})",
            list(allowed)
        )))
    }
}

fn list<K>(entries: &[(String, K)]) -> String {
    entries
        .iter()
        .map(|(entry, _)| entry.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(url: &str) -> StoreKey {
        StoreKey::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn origin(url: &str) -> OriginKey {
        OriginKey::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn bucket_prefixes_match_whole_segments() {
        let allowed = store("gs://bucket/snap");
        assert!(store("gs://bucket/snap").is_within(&allowed));
        assert!(store("gs://bucket/snap/2026/").is_within(&allowed));
        assert!(store("gs://BUCKET/snap/x").is_within(&allowed));
        assert!(!store("gs://bucket/snapshot").is_within(&allowed));
        assert!(!store("gs://bucket").is_within(&allowed));
        assert!(!store("s3://bucket/snap").is_within(&allowed));
        let bucket = store("gs://bucket");
        assert!(store("gs://bucket/anything").is_within(&bucket));
        assert!(!store("gs://bucket-evil").is_within(&bucket));
        assert!(!store("gs://bucket-evil/x").is_within(&bucket));
        assert!(StoreKey::parse("gs://bucket/snap/../other").is_err());
        assert!(StoreKey::parse("gs://bucket/snap/%2e%2e/other").is_err());
        assert!(StoreKey::parse("s3://bucket/a/..%2Fb").is_err());
    }

    #[test]
    fn local_prefixes_are_canonical_paths() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let allowed = store(data.to_str().unwrap());
        let file_url = url::Url::from_directory_path(&data).unwrap();
        assert!(store(file_url.as_str()).is_within(&allowed));
        assert!(store(&format!("{}/snap/new", data.display())).is_within(&allowed));
        assert!(!store(&format!("{}2", data.display())).is_within(&allowed));
        assert!(StoreKey::parse(&format!("{}/../etc", data.display())).is_err());
        assert!(StoreKey::parse(&format!("file://{}/../etc", data.display())).is_err());
        assert!(StoreKey::parse(&format!("file://{}/%2E%2E/etc", data.display())).is_err());
        // A symlink inside the allowed directory that points outside it is outside.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        assert!(!store(&format!("{}/link/x", data.display())).is_within(&allowed));
        assert!(StoreKey::parse("memory://x").is_err());
    }

    #[test]
    fn origin_prefixes_compare_scheme_host_port_and_segments() {
        let allowed = origin("https://Registry.Example/npm/");
        assert!(origin("https://registry.example/npm").is_within(&allowed));
        assert!(origin("https://registry.example:443/npm/x").is_within(&allowed));
        assert!(!origin("http://registry.example/npm").is_within(&allowed));
        assert!(!origin("https://registry.example:8443/npm").is_within(&allowed));
        assert!(!origin("https://registry.example/npmx").is_within(&allowed));
        assert!(!origin("https://registry.example.evil/npm").is_within(&allowed));
        assert!(!origin("https://registry.example/other").is_within(&allowed));
        assert!(OriginKey::parse("https://registry.example/npm/../other").is_err());
        assert!(OriginKey::parse("https://registry.example/npm/..%2fother").is_err());
        assert!(OriginKey::parse("https://registry.example/npm?x=1").is_err());
        assert!(OriginKey::parse("ftp://registry.example/npm").is_err());
        let local = origin("http://127.0.0.1:5984");
        assert!(origin("http://127.0.0.1:5984/registry").is_within(&local));
        assert!(!origin("http://127.0.0.1:5985/registry").is_within(&local));
    }
}
