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
        StoreLocation::Gcs { .. } => check_bucket(url).await.map_err(|e| with_google_hint(&e)),
        StoreLocation::S3 { .. } => check_bucket(url).await,
    }
}

/// For gs://, an error that came from getting a token (not from the bucket) says where
/// Google credentials come from: object_store reports it only as a failed token request,
/// usually to a metadata server that exists on Google Cloud alone.
fn with_google_hint(error: &str) -> String {
    if error.contains("token request") {
        format!(
            "{error}. No Google credentials could be had: on Google Cloud the metadata server \
             did not give a token; elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service \
             account key file, or run `gcloud auth application-default login`"
        )
    } else {
        error.to_string()
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
