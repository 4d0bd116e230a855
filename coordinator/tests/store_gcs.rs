//! `--store gs://BUCKET/PREFIX` end to end: the real `coordinator` writes a snapshot into a
//! Google Cloud Storage emulator on loopback (`gcp-storage-emulator` from PyPI, with the XML
//! API calls `object_store` makes: `tests/py/gcs_emulator.py`), documents over 8 MiB as XML
//! multipart uploads. Every object reads back byte for byte through the emulator's JSON
//! API; a rerun after the registry moved rewrites exactly the changed packuments; a missing
//! bucket is refused before anything is written; and a lease cancelled mid-upload aborts
//! its multipart upload.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use alldocs_fetcher::{
    source::packument::SPILL_BYTES,
    store::{object::REMOTE_BUFFER, packument_path},
};
use alldocs_tests::{
    coord::{job_args, unpack_bytes, wait_done},
    gcs::{GcsObject, GcsServer, GcsStats},
    hostile_registry::{HostileRegistry, STALL},
    procs::{free_port, run, Listening},
    sim::{Registry, SimConfig, SimServer},
};
use anyhow::{Context, Result};

const STORE: &str = "gs://snapshots/npm/2026-11";
const BUCKET: &str = "snapshots";
const PREFIX: &str = "npm/2026-11/";
/// The index objects of `--pivots @,a,m`.
const PARTITIONS: [&str; 4] = ["+_40", "_40+a", "a+m", "m+"];

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// The first of a few small registries (served without gzip: nothing here is about gzip,
/// and preparing it for documents this large takes the simulator most of a minute in a
/// debug build) that has a document for which `large` holds.
fn config_with(what: &str, large: impl Fn(&Registry, &str) -> bool) -> SimConfig {
    (1..100)
        .map(|seed| SimConfig {
            packages: 24,
            mean_bytes: 1_500_000,
            seed,
            gzip: false,
            ..Default::default()
        })
        .find(|cfg| {
            let registry = Registry::new(cfg);
            let found = registry.names().any(|n| large(&registry, n));
            found
        })
        .unwrap_or_else(|| panic!("some seed gives {what}"))
}

/// A registry with at least one document larger than the fetcher holds in memory.
fn config_with_a_large_document() -> SimConfig {
    config_with("a document over 8 MiB", |registry, n| {
        registry.document_len(n, false).unwrap_or(0) > SPILL_BYTES
    })
}

/// A registry with a document that, compressed as in a pack, is still over the size at
/// which an upload goes multipart: its pack goes up in parts.
fn config_with_a_large_pack() -> SimConfig {
    config_with("a document over 8 MiB compressed", |registry, n| {
        registry.document_len(n, false).unwrap_or(0) > 2 * REMOTE_BUFFER
            && registry.document(n, false).is_some_and(|doc| {
                zstd::bulk::compress(&doc, 1).is_ok_and(|c| c.len() > REMOTE_BUFFER)
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_into_gcs_reads_back_byte_for_byte_and_a_rerun_rewrites_only_what_changed(
) -> Result<()> {
    let gcs = tokio::task::block_in_place(GcsServer::start)?;
    gcs.create_bucket(BUCKET).await?;
    let env = gcs.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = config_with_a_large_document();
    let sim = SimServer::start("127.0.0.1:0".parse()?, config.clone()).await?;
    let addr = sim.addr();
    let dir = tempfile::tempdir()?;
    let job = job_args(
        "run",
        dir.path(),
        &sim.url(),
        &["--store", STORE, "--pivots", "@,a,m", "--layout", "files"],
    );
    let db = dir.path().join("alldocs.sqlite");
    a_missing_bucket_is_refused(&gcs, &job, &env, &db).await?;

    let (code, out, err) = run(&coordinator(), &job, &env)?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let first = assert_bucket_is_the_registry(&gcs, sim.registry()).await?;
    let stats = gcs.stats().await?;
    assert!(
        stats.multipart_completed >= 1,
        "a document over 8 MiB went up as a multipart upload: {stats:?}"
    );
    assert_eq!(stats.multipart_pending, 0, "no upload left pending");
    assert_checkpoint_uris_name_the_objects(&db, sim.registry())?;

    // The registry moves on (the first generation that changes a revision of so few
    // packages): the rerun overwrites exactly the changed packuments in place, and the
    // index objects (overwrites, which is why fetchers need more than object create).
    let old = sim.registry().clone();
    sim.shutdown().await;
    let generation = (1..100)
        .find(|&generation| {
            let moved = Registry::new(&SimConfig {
                generation,
                ..config.clone()
            });
            old.names().any(|n| old.rev(n) != moved.rev(n))
        })
        .expect("some generation changes a revision");
    let sim = SimServer::start(
        addr,
        SimConfig {
            generation,
            ..config
        },
    )
    .await?;
    let changed: BTreeSet<String> = old
        .names()
        .filter(|n| old.rev(n) != sim.registry().rev(n))
        .map(|n| format!("{PREFIX}{}", packument_path(n)))
        .collect();
    assert!(!changed.is_empty(), "generation 1 changes some revisions");
    let (code, out, err) = run(&coordinator(), &job, &env)?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let second = assert_bucket_is_the_registry(&gcs, sim.registry()).await?;
    let rewritten: BTreeSet<String> = second
        .iter()
        .filter(|(key, o)| key.contains("/packuments/") && first[*key].generation != o.generation)
        .map(|(key, _)| key.clone())
        .collect();
    assert_eq!(
        rewritten, changed,
        "only the changed packuments were written"
    );
    Ok(())
}

/// A bucket that does not exist is refused before a checkpoint is made, naming `--store`.
async fn a_missing_bucket_is_refused(
    gcs: &GcsServer,
    job: &[String],
    env: &[(&str, &str)],
    db: &Path,
) -> Result<()> {
    let mut missing = job.to_vec();
    let at = missing.iter().position(|a| a == "--store").unwrap();
    missing[at + 1] = "gs://no-such-bucket/npm".into();
    let (code, _, err) = run(&coordinator(), &missing, env)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--store gs://no-such-bucket/npm cannot be used") && err.contains("bucket"),
        "{err}"
    );
    assert!(!db.exists(), "no checkpoint written");
    assert_eq!(gcs.stats().await?.puts, 0, "no object written");
    Ok(())
}

/// Lists the bucket through the JSON API: exactly one object per document and one per
/// partition, nothing else under the prefix; each document byte for byte (one over 8 MiB
/// among them), and the index objects hold every row. Returns the listing.
async fn assert_bucket_is_the_registry(
    gcs: &GcsServer,
    registry: &Registry,
) -> Result<BTreeMap<String, GcsObject>> {
    let objects = gcs.objects(BUCKET, PREFIX).await?;
    let documents: BTreeMap<String, &str> = registry
        .names()
        .map(|n| (format!("{PREFIX}{}", packument_path(n)), n))
        .collect();
    let expected: BTreeSet<String> = documents
        .keys()
        .cloned()
        .chain(
            PARTITIONS
                .iter()
                .map(|p| format!("{PREFIX}index/{p}.jsonl")),
        )
        .collect();
    assert_eq!(
        objects.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "one object per document and per partition, nothing else"
    );
    let mut large = 0;
    for (key, name) in &documents {
        let body = gcs.download(BUCKET, key).await?;
        large += usize::from(body.len() > SPILL_BYTES);
        assert_eq!(objects[key].size, body.len() as u64, "{key}: listed size");
        assert!(
            Some(body.as_ref()) == registry.document(name, false).as_deref(),
            "{name} byte for byte"
        );
    }
    assert!(large >= 1, "a document over 8 MiB is among them");
    let mut rows = 0;
    for p in PARTITIONS {
        let index = gcs
            .download(BUCKET, &format!("{PREFIX}index/{p}.jsonl"))
            .await?;
        rows += std::str::from_utf8(&index)?.lines().count();
    }
    assert_eq!(rows, registry.len(), "the index objects hold every row");
    Ok(objects)
}

/// Every stored row's `uri` is the gs:// URI of its object.
fn assert_checkpoint_uris_name_the_objects(db: &Path, registry: &Registry) -> Result<()> {
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt = conn.prepare("SELECT name, uri FROM packages WHERE status = 'stored'")?;
    let uris: BTreeMap<String, String> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(uris.len(), registry.len(), "every document stored");
    for (name, uri) in uris {
        assert_eq!(uri, format!("{STORE}/{}", packument_path(&name)), "{name}");
    }
    Ok(())
}

/// With no Google credentials at all (no key, no application default credentials, and a
/// metadata server that does not answer: here a closed loopback port), a gs:// store is
/// refused before anything is written, saying where credentials come from.
#[test]
fn without_google_credentials_a_gs_store_is_refused_saying_where_they_come_from() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let closed = format!("127.0.0.1:{}", free_port()?);
    let mut job = job_args(
        "run",
        dir.path(),
        "http://127.0.0.1:9/",
        &["--store", "gs://snapshots/npm"],
    );
    job.remove(0);
    let out = std::process::Command::new(coordinator())
        .arg("run")
        .args(&job)
        .env_clear()
        .env("HOME", dir.path())
        .env("GCE_METADATA_HOST", &closed)
        .env("GCE_METADATA_IP", &closed)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--store gs://snapshots/npm cannot be used")
            && err.contains("No Google credentials could be had")
            && err.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{err}"
    );
    assert!(
        !dir.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    Ok(())
}

/// The packuments of every pack in the bucket, read through the emulator's JSON API, and
/// how many packs are over 8 MiB (each holding one document); the bucket holds only packs
/// and the index.
async fn packed_bucket(gcs: &GcsServer) -> Result<(BTreeMap<String, Vec<u8>>, u64)> {
    let objects = gcs.objects(BUCKET, PREFIX).await?;
    let mut unpacked = BTreeMap::new();
    let mut large_packs = 0u64;
    for (key, object) in &objects {
        let rest = key.strip_prefix(PREFIX).unwrap_or(key);
        assert!(
            rest.starts_with("index/") || (rest.starts_with("packs/") && rest.ends_with(".pack")),
            "only packs and the index: {key}"
        );
        if rest.starts_with("packs/") {
            let body = gcs.download(BUCKET, key).await?;
            let entries = unpack_bytes(&body, key);
            if body.len() > REMOTE_BUFFER {
                large_packs += 1;
                assert_eq!(
                    entries.len(),
                    1,
                    "{key}: a document over --pack-bytes is alone in its pack"
                );
            }
            assert_eq!(object.size, body.len() as u64, "{key}");
            unpacked.extend(entries);
        }
    }
    Ok((unpacked, large_packs))
}

/// With packs, the bucket holds packs and the index only: every pack, downloaded through
/// the emulator's JSON API and decoded frame by frame, holds the registry's documents
/// byte for byte (the large one in a pack of its own, uploaded in parts), and `show` and
/// `export` read them back through ranged reads and whole-pack reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packed_snapshot_into_gcs_reads_back_byte_for_byte() -> Result<()> {
    let gcs = tokio::task::block_in_place(GcsServer::start)?;
    gcs.create_bucket(BUCKET).await?;
    let env = gcs.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sim = SimServer::start("127.0.0.1:0".parse()?, config_with_a_large_pack()).await?;
    let dir = tempfile::tempdir()?;
    let job = job_args(
        "run",
        dir.path(),
        &sim.url(),
        &[
            "--store",
            STORE,
            "--pivots",
            "@,a,m",
            "--pack-bytes",
            "2MiB",
        ],
    );
    let (code, out, err) = run(&coordinator(), &job, &env)?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let (unpacked, large_packs) = packed_bucket(&gcs).await?;
    let registry = sim.registry();
    assert_eq!(
        unpacked.len(),
        registry.len(),
        "every document in a pack, once"
    );
    for name in registry.names() {
        assert!(
            unpacked.get(name) == registry.document(name, false).as_ref(),
            "{name} byte for byte"
        );
    }
    let stats = gcs.stats().await?;
    assert!(large_packs >= 1, "a pack over 8 MiB");
    assert_eq!(
        stats.multipart_completed, large_packs,
        "each pack over 8 MiB went up in parts, the others in one PUT: {stats:?}"
    );
    assert_eq!(stats.multipart_pending, 0, "no upload left pending");

    let db = dir.path().join("alldocs.sqlite").display().to_string();
    let large = registry
        .names()
        .find(|n| registry.document_len(n, false).unwrap_or(0) > SPILL_BYTES)
        .expect("a large document");
    let (code, shown, err) = run(
        &coordinator(),
        &alldocs_tests::procs::args(&["show", large, "--db", &db]),
        &env,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        Some(shown.into_bytes()) == registry.document(large, false),
        "show {large}"
    );
    for order in ["key", "packs"] {
        let (code, out, err) = run(
            &coordinator(),
            &alldocs_tests::procs::args(&["export", "--db", &db, "--order", order]),
            &env,
        )?;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out.lines().count(),
            registry.len(),
            "export --order {order}"
        );
    }
    Ok(())
}

/// A lease whose deadline passes while a multipart upload to GCS is in progress (the body
/// stalls after 24 MiB) aborts the upload: no pending upload and no object remain, in
/// either layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cancelled_mid_upload_leaves_no_pending_gcs_upload() -> Result<()> {
    for (layout, objects) in [("packs", "npm/packs/"), ("files", "npm/packuments/")] {
        cancelled_mid_upload(layout, objects)
            .await
            .with_context(|| format!("--layout {layout}"))?;
    }
    Ok(())
}

async fn cancelled_mid_upload(layout: &str, objects: &str) -> Result<()> {
    let gcs = tokio::task::block_in_place(GcsServer::start)?;
    gcs.create_bucket("snap").await?;
    let origin = HostileRegistry::start(&[STALL]).await?;
    let dir = tempfile::tempdir()?;
    let env = gcs.env();
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
                "gs://snap/npm",
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
    // The upload is under way before the deadline passes…
    poll(&gcs, Duration::from_secs(18), |s| s.multipart_pending == 1)
        .await
        .context("no multipart upload began")?;
    let done = wait_done(&serve.url()).await?;
    assert_eq!(done.packuments_failed, 1);
    // …and is aborted once the lease is cancelled (the abort runs as the lease unwinds).
    let stats = poll(&gcs, Duration::from_secs(30), |s| s.multipart_pending == 0)
        .await
        .context("the upload was left pending")?;
    assert_eq!(stats.multipart_aborted, 1, "{stats:?}");
    assert_eq!(stats.multipart_completed, 0, "{stats:?}");
    assert!(
        gcs.objects("snap", objects).await?.is_empty(),
        "no object of the stalled document"
    );
    Ok(())
}

/// Asks the emulator for its counts every 50 ms (it has no way to push them) until `done`
/// holds, for at most `limit`.
async fn poll(
    gcs: &GcsServer,
    limit: Duration,
    done: impl Fn(&GcsStats) -> bool,
) -> Result<GcsStats> {
    let started = Instant::now();
    loop {
        let stats = gcs.stats().await?;
        if done(&stats) {
            return Ok(stats);
        }
        anyhow::ensure!(started.elapsed() < limit, "after {limit:?}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
