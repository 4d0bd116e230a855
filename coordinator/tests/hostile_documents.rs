//! The real `coordinator` (fetching in-process) against a hostile registry on 127.0.0.1: a
//! 10 GB gzip bomb is cut off at `--max-document-bytes` without memory growing, names npm
//! could never publish are failed without a request, and the checkpoint says why; a lease
//! cancelled mid-upload leaves no pending multipart upload in S3 (`moto_server`).

use std::{collections::BTreeMap, path::Path};

use alldocs_tests::{
    coord::{job_args, stored_files, wait_done},
    hostile_registry::{document_for, HostileRegistry, BOMB, BOMB_DECODED_BYTES, STALL},
    procs::Listening,
    s3::S3Server,
};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// A process's peak resident set size in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("a live process");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// `name → (status, last_error)` straight from the checkpoint.
fn package_rows(db: &Path) -> BTreeMap<String, (String, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT name, status, COALESCE(last_error, '') FROM packages")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every file under `dir`, recursively, as paths relative to it.
/// The store holds these packuments and nothing else but the index: each as a file of its
/// own, or in packs holding only them; no temp file, no staged name.
fn assert_only_stored(data: &Path, names: &[&str]) {
    let stored = stored_files(data);
    assert_eq!(stored.keys().collect::<Vec<_>>(), names);
    for f in files(data) {
        let ok = f.starts_with("index/")
            || (f.starts_with("packs/") && f.ends_with(".pack"))
            || names.iter().any(|n| f == format!("packuments/{n}.json"));
        assert!(ok, "an object of no stored packument: {f}");
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(
                files(&path)
                    .into_iter()
                    .map(|f| format!("{}/{f}", entry.file_name().to_string_lossy())),
            );
        } else {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_and_unpublishable_names_are_failed_and_nothing_of_them_is_stored(
) -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&[BOMB, "react", ".", "..", "@scope/"]).await?;
    let dir = tempfile::tempdir()?;
    let serve = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &origin.url(), &["--pivots", "m"]),
        &[],
    )?;
    let done = wait_done(&serve.url()).await?;
    let peak = peak_rss(serve.child.id());
    drop(serve);

    assert_eq!((done.packuments_done, done.packuments_failed), (1, 4));
    let rows = package_rows(&dir.path().join("alldocs.sqlite"));
    let (status, error) = &rows[BOMB];
    assert_eq!(status, "failed");
    assert!(
        error.contains("more than 268435456 bytes decoded")
            && error.contains("--max-document-bytes"),
        "{error}"
    );
    for name in [".", "..", "@scope/"] {
        let (status, error) = &rows[name];
        assert_eq!(status, "failed", "{name}");
        assert!(
            error.contains("is not a valid npm package name"),
            "{name}: {error}"
        );
    }
    assert_eq!(rows["react"].0, "stored");

    // The origin saw one request for the bomb (not retried) and none for invalid names.
    let packument_requests: Vec<String> = origin
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("/_all_docs"))
        .collect();
    assert_eq!(packument_requests.len(), 2, "{packument_requests:?}");
    assert_eq!(origin.requests_for(BOMB), 1);
    assert_eq!(origin.requests_for("react"), 1);
    let sent = origin.bomb_decoded_sent();
    eprintln!("bomb: {sent} of {BOMB_DECODED_BYTES} decoded bytes handed to the socket; coordinator peak RSS {} MiB", peak >> 20);

    // Only react's document is stored: no bomb object, no temp file, nothing else.
    let data = dir.path().join("data");
    assert_only_stored(&data, &["react"]);
    assert_eq!(stored_files(&data)["react"], document_for("react"));

    // The document was never held whole: the coordinator stayed far below the cap.
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_document_bytes_takes_a_human_size_and_refuses_nonsense() -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&["react", "padded-40000"]).await?;
    let dir = tempfile::tempdir()?;
    let serve = Listening::start(
        &coordinator(),
        &job_args(
            "serve",
            dir.path(),
            &origin.url(),
            &["--pivots", "m", "--max-document-bytes", "32KiB"],
        ),
        &[],
    )?;
    let done = wait_done(&serve.url()).await?;
    drop(serve);
    assert_eq!((done.packuments_done, done.packuments_failed), (1, 1));
    let rows = package_rows(&dir.path().join("alldocs.sqlite"));
    let (status, error) = &rows["padded-40000"];
    assert_eq!(status, "failed");
    assert!(error.contains("more than 32768 bytes decoded"), "{error}");
    assert_eq!(origin.requests_for("padded-40000"), 1, "not retried");
    assert_only_stored(&dir.path().join("data"), &["react"]);

    let fresh = tempfile::tempdir()?;
    let (code, _, err) = alldocs_tests::procs::run(
        &coordinator(),
        &job_args(
            "run",
            fresh.path(),
            &origin.url(),
            &["--max-document-bytes", "lots"],
        ),
        &[],
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--max-document-bytes") && err.contains("256MiB"),
        "{err}"
    );
    assert!(
        !fresh.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    Ok(())
}

/// A lease whose deadline passes while a multipart upload to S3 is in progress (the body
/// stalls after 24 MiB) aborts the upload: no pending upload and no object remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cancelled_mid_upload_leaves_no_pending_multipart_upload() -> anyhow::Result<()> {
    let s3 = tokio::task::block_in_place(S3Server::start)?;
    s3.create_bucket("snap").await?;
    for (layout, objects) in [("packs", "npm/packs/"), ("files", "npm/packuments/")] {
        cancelled_mid_upload(&s3, layout, objects)
            .await
            .map_err(|e| e.context(format!("--layout {layout}")))?;
    }
    Ok(())
}

/// One such lease in `layout`, whose objects are under `objects`.
async fn cancelled_mid_upload(s3: &S3Server, layout: &str, objects: &str) -> anyhow::Result<()> {
    let origin = HostileRegistry::start(&[STALL]).await?;
    let dir = tempfile::tempdir()?;
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let serve = Listening::start(
        &coordinator(),
        &job_args(
            "serve",
            dir.path(),
            &origin.url(),
            &[
                "--pivots",
                "m",
                "--store",
                "s3://snap/npm",
                "--lease-duration",
                "20s",
                "--max-attempts",
                "1",
                "--layout",
                layout,
            ],
        ),
        &env,
    )?;
    let count = || tokio::task::block_in_place(|| s3.uploads_and_objects("snap", objects));
    // The upload is under way before the deadline passes (boto3 sees it)…
    let started = std::time::Instant::now();
    while count()?.0 == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(18),
            "no upload began"
        );
    }
    let done = wait_done(&serve.url()).await?;
    assert_eq!(done.packuments_failed, 1);
    // …and is aborted once the lease is cancelled (the abort runs as the lease unwinds).
    let ended = std::time::Instant::now();
    while count()? != (0, 0) {
        assert!(
            ended.elapsed() < std::time::Duration::from_secs(30),
            "an upload or object remains: {:?}",
            count()?
        );
    }
    drop(serve);
    let rows = package_rows(&dir.path().join("alldocs.sqlite"));
    assert_eq!(rows[STALL].0, "failed");
    Ok(())
}
