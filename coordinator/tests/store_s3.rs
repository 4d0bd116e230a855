//! `--store s3://BUCKET/PREFIX` end to end, in both layouts: the real `coordinator` writes
//! a snapshot into an S3-compatible server on loopback (`moto_server`, from PyPI), large
//! documents (and large packs) as multipart uploads, and every object reads back byte for
//! byte through boto3; `export --format parquet --out s3://…` uploads tables DuckDB reads.

use alldocs_fetcher::source::packument::SPILL_BYTES;
use alldocs_tests::{
    coord::stored_files,
    procs::{args, run},
    s3::S3Server,
    sim::{Registry, SimConfig, SimServer},
};
use anyhow::{Context, Result};

/// Downloads every object under a prefix: `DOWNLOAD ENDPOINT BUCKET PREFIX DIR`.
const DOWNLOAD: &str = r#"
import os, sys, boto3
endpoint, bucket, prefix, out = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for obj in page.get("Contents", []):
        path = os.path.join(out, obj["Key"][len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, obj["Key"], path)
"#;

/// A small registry with at least one document larger than the fetcher holds in memory.
fn config_with_a_large_document() -> SimConfig {
    (1..100)
        .map(|seed| SimConfig {
            packages: 24,
            mean_bytes: 1_500_000,
            seed,
            ..Default::default()
        })
        .find(|cfg| {
            let registry = Registry::new(cfg);
            let large = registry
                .names()
                .any(|n| registry.document_len(n, false).unwrap_or(0) > SPILL_BYTES);
            large
        })
        .expect("some seed gives a document over 8 MiB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_into_s3_reads_back_byte_for_byte() -> Result<()> {
    let s3 = tokio::task::block_in_place(S3Server::start)?;
    let created = reqwest::Client::new()
        .put(format!("{}/snapshots", s3.url))
        .send()
        .await?;
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );

    let sim = SimServer::start("127.0.0.1:0".parse()?, config_with_a_large_document()).await?;
    for layout in ["packs", "files"] {
        snapshot_into_s3(&s3, &sim, layout)
            .await
            .with_context(|| format!("--layout {layout}"))?;
    }
    Ok(())
}

/// One snapshot in `layout` under its own prefix, read back with boto3.
async fn snapshot_into_s3(s3: &S3Server, sim: &SimServer, layout: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("npm/2026-11-{layout}");
    let store = format!("s3://snapshots/{prefix}");
    let job = args(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--db",
        dir.path().join("alldocs.sqlite").to_str().unwrap(),
        "--store",
        &store,
        "--replicate-origin",
        &sim.url(),
        "--registry",
        &sim.url(),
        "--pivots",
        "@,a,m",
        "--rate-limit",
        "0",
        "--progress",
        "none",
        "--layout",
        layout,
    ]);
    let env = [
        ("AWS_ENDPOINT", s3.url.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let coordinator = std::path::Path::new(env!("CARGO_BIN_EXE_coordinator"));
    a_missing_bucket_is_refused(coordinator, &job, &env, &dir.path().join("alldocs.sqlite"))?;

    let (code, out, err) = run(coordinator, &job, &env)?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    // Every object, downloaded with an independent S3 client (boto3), is the registry's
    // document byte for byte.
    let copy = download(s3, &prefix)?;
    assert_copy_is_the_registry(copy.path(), sim.registry())?;

    if layout == "packs" {
        // `unpack --to s3://…` writes the files layout into the bucket.
        let to = format!("s3://snapshots/{prefix}-unpacked");
        let db = dir.path().join("alldocs.sqlite");
        let unpack = args(&["unpack", "--db", db.to_str().unwrap(), "--to", &to]);
        let (code, out, err) = run(coordinator, &unpack, &env)?;
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        let unpacked = download(s3, &format!("{prefix}-unpacked"))?;
        assert!(
            unpacked.path().join("packuments").is_dir() && !unpacked.path().join("packs").exists(),
            "one object per packument"
        );
        assert_copy_is_the_registry(unpacked.path(), sim.registry())?;
        exported_into_s3(
            coordinator,
            s3,
            &db,
            &format!("{prefix}-tables"),
            sim.registry(),
        )?;
    }

    let conn = rusqlite::Connection::open(dir.path().join("alldocs.sqlite"))?;
    let uri: String = conn.query_row(
        "SELECT COALESCE(k.uri, p.uri) FROM packages p LEFT JOIN packs k ON k.id = p.pack
         WHERE p.status = 'stored' LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let objects = if layout == "packs" {
        "packs"
    } else {
        "packuments"
    };
    assert!(uri.starts_with(&format!("{store}/{objects}/")), "{uri}");
    Ok(())
}

/// Every object under `prefix/` of the bucket, downloaded with boto3 into a new directory.
/// `export --format parquet --out s3://…` uploads the six tables; downloaded with boto3,
/// DuckDB reads every package and version in them.
fn exported_into_s3(
    coordinator: &std::path::Path,
    s3: &S3Server,
    db: &std::path::Path,
    prefix: &str,
    registry: &Registry,
) -> Result<()> {
    let to = format!("s3://snapshots/{prefix}");
    let export = args(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "parquet",
        "--out",
        &to,
    ]);
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = run(coordinator, &export, &env)?;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(&to), "{out}");
    let tables = download(s3, prefix)?;
    let names: Vec<String> = std::fs::read_dir(tables.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(names.len(), 6, "{names:?}");
    let queries = tables.path().join("queries.json");
    std::fs::write(
        &queries,
        r#"["SELECT count(*), sum(versions) FROM 'packages.parquet'", "SELECT count(*) FROM 'versions.parquet'"]"#,
    )?;
    let seen = alldocs_tests::py::run_py(
        std::path::Path::new("parquet_check.py"),
        &[tables.path().to_str().unwrap(), queries.to_str().unwrap()],
        std::time::Duration::from_secs(300),
    )?;
    let seen: serde_json::Value = serde_json::from_str(&seen)?;
    let versions: usize = registry
        .names()
        .map(|n| {
            let doc: serde_json::Value =
                serde_json::from_slice(&registry.document(n, false).unwrap()).unwrap();
            doc["versions"].as_object().map_or(0, |v| v.len())
        })
        .sum();
    assert_eq!(
        seen["duckdb"][0],
        serde_json::json!([[registry.len(), versions]])
    );
    assert_eq!(seen["duckdb"][1], serde_json::json!([[versions]]));
    Ok(())
}

fn download(s3: &S3Server, prefix: &str) -> Result<tempfile::TempDir> {
    let copy = tempfile::tempdir()?;
    let python = alldocs_tests::py::python_env()?;
    let (code, _, err) = run(
        &python,
        &args(&[
            "-c",
            DOWNLOAD,
            &s3.url,
            "snapshots",
            &format!("{prefix}/"),
            copy.path().to_str().unwrap(),
        ]),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    Ok(copy)
}

/// A bucket that does not exist is refused before a checkpoint is made.
fn a_missing_bucket_is_refused(
    coordinator: &std::path::Path,
    job: &[String],
    env: &[(&str, &str)],
    db: &std::path::Path,
) -> Result<()> {
    let mut missing = job.to_vec();
    let at = missing.iter().position(|a| a == "--store").unwrap();
    missing[at + 1] = "s3://no-such-bucket/npm".into();
    let (code, _, err) = run(coordinator, &missing, env)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--store s3://no-such-bucket/npm cannot be used") && err.contains("bucket"),
        "{err}"
    );
    assert!(!db.exists(), "nothing written");
    Ok(())
}

/// The objects downloaded to `copy` are the registry's documents byte for byte (one over
/// 8 MiB among them), and the index objects hold every row.
fn assert_copy_is_the_registry(copy: &std::path::Path, registry: &Registry) -> Result<()> {
    let mut large = 0;
    let stored = stored_files(copy);
    for name in registry.names() {
        let body = stored
            .get(name)
            .cloned()
            .with_context(|| format!("{name} in S3"))?;
        if body.len() > SPILL_BYTES {
            large += 1;
        }
        assert!(
            Some(body) == registry.document(name, false),
            "{name} byte for byte"
        );
    }
    assert!(
        large >= 1,
        "a document over 8 MiB went through the multipart path"
    );
    let index = std::fs::read_to_string(copy.join("index/_40+a.jsonl"))?;
    let index_rows = ["+_40", "_40+a", "a+m", "m+"]
        .iter()
        .map(|p| {
            std::fs::read_to_string(copy.join(format!("index/{p}.jsonl")))
                .map(|t| t.lines().count())
        })
        .sum::<Result<usize, _>>()?;
    assert_eq!(
        index_rows,
        registry.len(),
        "the index objects hold every row: {index}"
    );
    Ok(())
}
