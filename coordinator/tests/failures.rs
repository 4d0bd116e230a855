//! When things go wrong, with the real `coordinator` binary: a second coordinator on a
//! checkpoint in use, a checkpoint from a newer alldocs, a password in a registry URL, a
//! disk that fills under the checkpoint, and a replication origin that cannot be reached.
//! Each says what is wrong and what to do, exits non-zero, and loses nothing.

use std::path::{Path, PathBuf};

use alldocs_tests::{
    coord::{checkpoint_dump, checkpoint_statuses, job_args, stored_files, wait_done},
    procs::{free_port, run, Listening},
    sim::{SimConfig, SimServer},
};

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

async fn sim(packages: usize, latency_ms: u64) -> anyhow::Result<SimServer> {
    SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages,
            mean_bytes: 800,
            latency_ms,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_a_checkpoint_in_use_is_refused_and_names_the_first(
) -> anyhow::Result<()> {
    let sim = sim(300, 3).await?;
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "m",
        "--lease-size",
        "20",
        "--max-in-flight",
        "2",
    ];
    let first = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    let (code, _, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("in use by another coordinator")
            && err.contains(&format!("listening on {}", first.addr))
            && err.contains("another --db"),
        "{err}"
    );
    // The first one was not disturbed: every packument fetched exactly once.
    let p = wait_done(&first.url()).await?;
    assert_eq!((p.packuments_done, p.packuments_failed), (300, 0));
    assert_eq!(sim.stats().packument_requests, 300, "nothing fetched twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_a_newer_alldocs_is_refused_and_left_as_it_is() -> anyhow::Result<()> {
    let sim = sim(40, 0).await?;
    let dir = tempfile::tempdir()?;
    let args = job_args("run", dir.path(), &sim.url(), &["--pivots", "m"]);
    let (code, _, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 0, "{err}");
    let db = dir.path().join("alldocs.sqlite");
    rusqlite::Connection::open(&db)?.pragma_update(None, "user_version", 99)?;
    let before = checkpoint_dump(&db);
    let (code, _, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("newer alldocs") && err.contains("version 99") && err.contains("--db"),
        "{err}"
    );
    assert_eq!(checkpoint_dump(&db), before, "the checkpoint is untouched");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_registry_url_is_never_written_or_shown() -> anyhow::Result<()> {
    let sim = sim(40, 0).await?;
    let dir = tempfile::tempdir()?;
    let secret = "s3cr3t-pa55";
    let registry = sim
        .url()
        .replace("http://", &format!("http://reader:{secret}@"));
    let mut args = job_args("run", dir.path(), &sim.url(), &["--pivots", "m"]);
    let at = args.iter().position(|a| a == "--registry").unwrap();
    args[at + 1] = registry.clone();
    let (code, out, err) = run(&coordinator(), &args, &[("RUST_LOG", "debug")])?;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path.is_file() {
            let bytes = std::fs::read(&path)?;
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the password",
                path.display()
            );
        }
    }
    // Carrying on with the same URL is no configuration change.
    let (code, _, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

/// Runs `coordinator ARGS…` with its checkpoint on a tiny filesystem of its own (a tmpfs in
/// a private mount namespace, so no root is needed), then copies the checkpoint out to
/// `out`. Returns (exit code, stderr).
fn run_on_tiny_disk(args: &[String], tiny: &Path, out: &Path) -> anyhow::Result<(i32, String)> {
    let script = r#"
        set -u
        mount -t tmpfs -o size=192k tmpfs "$1" || exit 97
        bin="$2"; out="$3"; shift 3
        "$bin" "$@"
        rc=$?
        cp "$1"/alldocs.sqlite* "$out"/ 2>/dev/null
        exit $rc
    "#;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(tiny)
    .arg(coordinator())
    .arg(out)
    .args(args)
    .env("RUST_LOG", "error")
    .env_remove("NPM_TOKEN")
    .stdin(std::process::Stdio::null());
    let output = cmd.output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_checkpoint_stops_the_run_clearly_and_loses_nothing(
) -> anyhow::Result<()> {
    let sim = sim(3000, 0).await?;
    let dir = tempfile::tempdir()?;
    let (tiny, out) = (dir.path().join("tiny"), dir.path().join("out"));
    std::fs::create_dir_all(&tiny)?;
    std::fs::create_dir_all(&out)?;
    let mut args = job_args("run", dir.path(), &sim.url(), &["--pivots", "m"]);
    let at = args.iter().position(|a| a == "--db").unwrap();
    args[at + 1] = tiny.join("alldocs.sqlite").display().to_string();
    let (code, err) = run_on_tiny_disk(&args, &tiny, &out)?;
    assert_ne!(
        code, 97,
        "could not mount a tmpfs in a private namespace: {err}"
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("could not be updated")
            && err.contains("full")
            && err.contains("run the same command again"),
        "{err}"
    );
    // What it had committed is intact and carries on elsewhere to exact totals.
    let db = out.join("alldocs.sqlite");
    let check: String =
        rusqlite::Connection::open(&db)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    assert_eq!(check, "ok");
    args[at + 1] = db.display().to_string();
    let (code, out_text, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 0, "{out_text}{err}");
    let statuses = checkpoint_statuses(&db);
    assert_eq!(statuses.len(), 3000);
    assert!(statuses.values().all(|s| s == "stored"), "{statuses:?}");
    let registry = sim.registry();
    let files = stored_files(&dir.path().join("data"));
    assert_eq!(files.len(), 3000);
    for (name, bytes) in &files {
        assert_eq!(
            Some(bytes.clone()),
            registry.document(name, false),
            "{name}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replication_origin_fails_its_partitions_and_names_the_option(
) -> anyhow::Result<()> {
    let sim = sim(40, 0).await?;
    let dir = tempfile::tempdir()?;
    let dead = format!("http://127.0.0.1:{}", free_port()?);
    let mut args = job_args(
        "run",
        dir.path(),
        &sim.url(),
        &[
            "--pivots",
            "m",
            "--max-retries",
            "1",
            "--max-attempts",
            "2",
            "--progress",
            "lines",
            "--progress-interval",
            "50ms",
        ],
    );
    let at = args.iter().position(|a| a == "--replicate-origin").unwrap();
    args[at + 1] = dead.clone();
    let (code, out, err) = run(&coordinator(), &args, &[("RUST_LOG", "info")])?;
    assert_eq!(code, 3, "finished with failed items: {out}{err}");
    assert!(
        out.contains(&format!(
            "2 partition(s) could not be indexed from --replicate-origin {dead}"
        )),
        "{out}"
    );
    assert!(
        err.contains("is --replicate-origin right and reachable from here?"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("progress") && l.contains("failed=2")),
        "the progress line counts the failed partitions: {err}"
    );
    assert_eq!(sim.stats().packument_requests, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_hold_a_snapshot_is_refused_before_anything_is_written(
) -> anyhow::Result<()> {
    let sim = sim(40, 0).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x")?;
    let mut args = job_args("run", dir.path(), &sim.url(), &["--pivots", "m"]);
    let at = args.iter().position(|a| a == "--store").unwrap();
    args[at + 1] = file.display().to_string();
    let (code, _, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--store") && err.contains("is a file, not a directory"),
        "{err}"
    );
    assert!(!dir.path().join("alldocs.sqlite").exists(), "no checkpoint");
    assert_eq!(std::fs::read(&file)?, b"x", "the file is left as it was");
    assert_eq!(sim.stats().packument_requests, 0);
    Ok(())
}
