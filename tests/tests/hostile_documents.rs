//! The fetcher over a real gRPC socket against a hostile registry on 127.0.0.1: names that
//! used to share one object, names npm could never publish, an origin that ignores the
//! abbreviated Accept header, a store that cannot be opened, and leases cancelled while a
//! multipart upload is in progress.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use alldocs_fetcher::source::npmrc::Credentials;
use alldocs_proto::v1::{fetch_event::Event, Accept, ItemFailed, LeaseSummary};
use alldocs_tests::{
    hostile_registry::{document_for, HostileRegistry, STALL},
    support::{fetch_all, packument_lease, FetcherServer},
};

/// A safety net for conditions that should hold within moments.
const PATIENCE: Duration = Duration::from_secs(60);

fn items(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), "1-hostile".to_string()))
        .collect()
}

fn failures(events: &[Event]) -> Vec<&ItemFailed> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Failed(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn summary(events: &[Event]) -> &LeaseSummary {
    match events.last() {
        Some(Event::Summary(s)) => s,
        other => panic!("the stream ends with a summary, not {other:?}"),
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Staged files (on a file system without `O_TMPFILE`) are `<object>#<n>`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#'))
        .collect()
}

/// Files this process holds open under `dir` that have no name: the fetcher's unfinished
/// objects, written as `O_TMPFILE` files (`/proc/self/fd` shows them as `…/#N (deleted)`).
fn unnamed_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|p| p.starts_with(dir) && p.to_string_lossy().ends_with(" (deleted)"))
        .collect()
}

/// An unfinished object under `dir`: an unnamed file, or (on a file system without
/// `O_TMPFILE`) a staged one.
fn unfinished(dir: &Path) -> Vec<PathBuf> {
    let mut all = unnamed_files(dir);
    all.extend(temp_files(dir));
    all
}

/// Waits (checking every 20 ms) until `cond` holds; the file system offers no event.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_shared_one_object_are_stored_apart_with_their_own_bytes() -> anyhow::Result<()>
{
    let names = [
        "nul%00name",
        "new%0Aline",
        "a/../x",
        "a/%2E%2E/x",
        "/abs/path",
        "abs/path",
        "b//c",
        "b/c",
        "@scope/a/b",
        "@scope/a%2Fb",
        "@types",
        "@types/node",
        "LiveScript",
        "livescript",
        "100%",
        "100%25",
        "react",
    ];
    let origin = HostileRegistry::start(&[]).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().to_str().unwrap();
    let events = fetch_all(
        &mut fetcher.client().await?,
        packument_lease(&origin.url(), store, &items(&names)),
    )
    .await?;
    assert!(failures(&events).is_empty(), "{:?}", failures(&events));
    let mut uris = std::collections::HashSet::new();
    for event in &events {
        let Event::Stored(s) = event else { continue };
        assert!(uris.insert(s.uri.clone()), "{} shares {}", s.name, s.uri);
        let path = url::Url::parse(&s.uri)?.to_file_path().expect("a file URI");
        assert!(path.starts_with(dir.path()), "{} escaped the store", s.uri);
        assert_eq!(
            std::fs::read(&path)?,
            document_for(&s.name),
            "{} holds its own document",
            s.name
        );
    }
    assert_eq!(uris.len(), names.len(), "one stored object per name");
    let on_disk = files(dir.path());
    assert_eq!(on_disk.len(), names.len(), "{on_disk:#?}");
    for name in names {
        assert_eq!(origin.requests_for(name), 1, "{name}");
    }
    // Ordinary names keep today's layout.
    for (name, file) in [
        ("react", "packuments/react.json"),
        ("@types/node", "packuments/@types/node.json"),
        ("LiveScript", "packuments/LiveScript.json"),
    ] {
        assert_eq!(std::fs::read(dir.path().join(file))?, document_for(name));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_npm_could_never_publish_fail_without_any_request() -> anyhow::Result<()> {
    let long = "x".repeat(215);
    let names = [
        ".",
        "..",
        "",
        "nul\0name",
        "new\nline",
        "@scope/",
        "@/x",
        &long,
    ];
    let origin = HostileRegistry::start(&[]).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let events = fetch_all(
        &mut fetcher.client().await?,
        packument_lease(&origin.url(), dir.path().to_str().unwrap(), &items(&names)),
    )
    .await?;
    let failed = failures(&events);
    assert_eq!(failed.len(), names.len(), "{events:?}");
    for f in &failed {
        assert!(!f.retryable, "{f:?}");
        assert!(
            f.reason.contains("is not a valid npm package name"),
            "{f:?}"
        );
    }
    let mut failed_names: Vec<&str> = failed.iter().map(|f| f.name.as_str()).collect();
    failed_names.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(failed_names, expected);
    assert_eq!(origin.requests(), Vec::<String>::new(), "no request at all");
    let s = summary(&events);
    assert_eq!((s.failed, s.requests, s.unfinished), (8, 0, 0));
    assert_eq!(files(dir.path()), Vec::<PathBuf>::new(), "nothing stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_ignoring_the_abbreviated_accept_header_fails_the_items() -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&[]).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let mut lease = packument_lease(
        &origin.url(),
        dir.path().to_str().unwrap(),
        &items(&["react", "@types/node"]),
    );
    lease.accept = Accept::Abbreviated as i32;
    let events = fetch_all(&mut fetcher.client().await?, lease).await?;
    let failed = failures(&events);
    assert_eq!(failed.len(), 2, "{events:?}");
    for f in failed {
        assert!(!f.retryable, "{f:?}");
        assert!(
            f.reason
                .contains("ignored the abbreviated Accept header (it answered Content-Type `application/json`")
                && f.reason.contains("use --accept full"),
            "{f:?}"
        );
        assert_eq!(origin.requests_for(&f.name), 1, "not retried: {f:?}");
    }
    assert_eq!(files(dir.path()), Vec::<PathBuf>::new(), "nothing stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_opened_fails_every_item_with_its_reason() -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&[]).await?;
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x")?;
    let names = ["react", "left-pad", "@types/node"];
    let events = fetch_all(
        &mut fetcher.client().await?,
        packument_lease(&origin.url(), file.to_str().unwrap(), &items(&names)),
    )
    .await?;
    let failed = failures(&events);
    let mut failed_names: Vec<&str> = failed.iter().map(|f| f.name.as_str()).collect();
    failed_names.sort();
    assert_eq!(failed_names, ["@types/node", "left-pad", "react"]);
    for f in failed {
        assert!(!f.retryable, "{f:?}");
        assert!(
            f.reason.contains("is a file, not a directory") && f.reason.contains("--store"),
            "{f:?}"
        );
    }
    let s = summary(&events);
    assert_eq!((s.failed, s.unfinished), (3, 0));
    assert!(origin.requests().is_empty());
    assert_eq!(std::fs::read(&file)?, b"x", "the file is left alone");
    Ok(())
}

/// A lease over the stalling name, started once a multipart upload (a temp file) exists.
async fn stalled_upload(
    fetcher: &FetcherServer,
    origin: &HostileRegistry,
    dir: &Path,
) -> anyhow::Result<tonic::Streaming<alldocs_proto::v1::FetchEvent>> {
    let lease = packument_lease(&origin.url(), dir.to_str().unwrap(), &items(&[STALL]));
    let stream = fetcher.client().await?.fetch(lease).await?.into_inner();
    until("the upload's unfinished file", || {
        !unfinished(dir).is_empty()
    })
    .await;
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cancelled_mid_upload_leaves_no_object_and_no_upload() -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&[]).await?;

    // The client goes away.
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let stream = stalled_upload(&fetcher, &origin, dir.path()).await?;
    let mut active = fetcher.service.active_leases();
    drop(stream);
    tokio::time::timeout(PATIENCE, active.wait_for(|n| *n == 0)).await??;
    until("the unfinished file to go", || {
        unfinished(dir.path()).is_empty()
    })
    .await;
    assert_eq!(files(dir.path()), Vec::<PathBuf>::new(), "no object");

    // The fetcher is told to stop (SIGTERM): the lease ends with its item unfinished.
    let fetcher = FetcherServer::start(Credentials::new()).await?;
    let dir = tempfile::tempdir()?;
    let mut stream = stalled_upload(&fetcher, &origin, dir.path()).await?;
    fetcher.service.stop();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await? {
        events.extend(ev.event);
    }
    assert_eq!(summary(&events).unfinished, 1);
    until("the unfinished file to go", || {
        unfinished(dir.path()).is_empty()
    })
    .await;
    assert_eq!(files(dir.path()), Vec::<PathBuf>::new(), "no object");
    assert_eq!(origin.requests_for(STALL), 2);
    Ok(())
}
