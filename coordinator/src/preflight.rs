//! Refusing early: before a checkpoint is created, the store the run names must be one it
//! can write to — a local directory that is writable and tells names apart by case, or a
//! bucket that answers — so a bad `--store` costs nothing and says what to change.

use std::time::Duration;

use alldocs_fetcher::{
    http::redact,
    store::{check_writable_and_case_sensitive, Store, StoreLocation},
};
use futures::StreamExt;

/// How long a bucket has to answer the first listing.
const BUCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks that the run can store objects at `url`; the error says what to change.
pub async fn check_store(url: &str) -> Result<(), String> {
    let location = StoreLocation::parse(url).map_err(|e| format!("--store: {e}"))?;
    match location {
        StoreLocation::Local(dir) => {
            check_writable_and_case_sensitive(&dir).map_err(|e| format!("--store: {e}"))
        }
        StoreLocation::Memory(_) => Ok(()),
        StoreLocation::Gcs { .. } | StoreLocation::S3 { .. } => check_bucket(url).await,
    }
}

/// Lists at most one object under the store's prefix: the bucket exists, the credentials
/// are accepted, and the endpoint answers.
async fn check_bucket(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let fail = |e: &dyn std::fmt::Display| {
        format!("--store {shown} cannot be used: {e}. Check the bucket name and that this machine's credentials may list and write it")
    };
    let store = Store::open(url).map_err(|e| fail(&e))?;
    let first = tokio::time::timeout(BUCKET_TIMEOUT, store.object_store().list(None).next())
        .await
        .map_err(|_| fail(&format!("no answer within {}s", BUCKET_TIMEOUT.as_secs())))?;
    match first {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(fail(&e)),
    }
}
