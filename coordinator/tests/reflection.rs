//! The independent reflection client (`tests/py/grpc_reflect.py`, a tiny grpcurl) against
//! real servers: it finds services and messages through reflection v1 and v1alpha alone,
//! and reads the coordinator's progress with the field names of the contract.

use std::{collections::BTreeSet, time::Duration};

use alldocs_fetcher::source::npmrc::Credentials;
use alldocs_tests::{
    procs::{self, Listening},
    py::{json_u64, python_env, reflect_call, reflect_list, reflect_stream},
    sim::{SimConfig, SimServer},
    support::FetcherServer,
};
use anyhow::{ensure, Context, Result};
use serde_json::Value;

const VERSIONS: [&str; 2] = ["v1", "v1alpha"];

/// Every field of `alldocs.v1.Progress`, by its proto name.
const PROGRESS_FIELDS: [&str; 31] = [
    "state",
    "partitions_total",
    "partitions_done",
    "partitions_failed",
    "rows_indexed",
    "packuments_total",
    "packuments_done",
    "packuments_missing",
    "packuments_failed",
    "bytes_stored",
    "packuments_pending",
    "leases_in_flight",
    "packuments_per_second",
    "rows_per_second",
    "bytes_per_second",
    "eta_seconds",
    "elapsed_ms",
    "packuments_fetched_this_run",
    "packuments_rev_mismatch",
    "packuments_leased",
    "rate_limit_current",
    "feed_head_seq",
    "feed_seq",
    "feed_lag",
    "packuments_deleted",
    "layout",
    "packs",
    "pack_bytes",
    "pack_bytes_live",
    "pack_bytes_dead",
    "packuments_without_digest",
];

/// Runs blocking work (the client is a subprocess) off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetcher_reflection_v1_and_v1alpha_list_services_and_health_serves() -> Result<()> {
    let server = FetcherServer::start(Credentials::new()).await?;
    let addr = server.addr.to_string();
    blocking(move || {
        python_env()?;
        for version in VERSIONS {
            let services = reflect_list(&addr, version)?;
            for expected in [
                "alldocs.v1.Fetcher",
                "grpc.health.v1.Health",
                &format!("grpc.reflection.{version}.ServerReflection"),
            ] {
                ensure!(
                    services.iter().any(|s| s == expected),
                    "reflection {version} lists {services:?}, without {expected}"
                );
            }
            let health = reflect_call(&addr, "grpc.health.v1.Health/Check", "{}", version)?;
            ensure!(
                health == serde_json::json!({"status": "SERVING"}),
                "health through {version}: {health}"
            );
            let fetcher = reflect_call(
                &addr,
                "grpc.health.v1.Health/Check",
                r#"{"service": "alldocs.v1.Fetcher"}"#,
                version,
            )?;
            ensure!(fetcher["status"] == "SERVING", "Fetcher health: {fetcher}");
        }
        Ok(())
    })
    .await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fails_clearly_on_unknown_services_methods_and_bad_requests() -> Result<()> {
    let server = FetcherServer::start(Credentials::new()).await?;
    let addr = server.addr.to_string();
    blocking(move || {
        python_env()?;
        let cases = [
            (
                "alldocs.v1.Nope/Fetch",
                "{}",
                "service `alldocs.v1.Nope` is not served",
            ),
            ("alldocs.v1.Fetcher/Nope", "{}", "has no method `Nope`"),
            (
                "grpc.health.v1.Health/Check",
                r#"{"no_such_field": 1}"#,
                "not a valid grpc.health.v1.HealthCheckRequest",
            ),
            (
                "grpc.health.v1.Health/Check",
                r#"{"service": "unknown.Service"}"#,
                "NOT_FOUND",
            ),
        ];
        for (method, request, expected) in cases {
            let err = reflect_call(&addr, method, request, "v1")
                .err()
                .with_context(|| format!("{method} {request} should fail"))?;
            let msg = format!("{err:#}");
            ensure!(msg.contains(expected), "{method} {request}: {msg}");
        }
        // Nothing listening: a clear failure, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let err = reflect_list(&closed, "v1")
            .err()
            .context("listing a closed port should fail")?;
        ensure!(format!("{err:#}").contains("UNAVAILABLE"), "{err:#}");
        Ok(())
    })
    .await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_progress_through_reflection_only() -> Result<()> {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_coordinator"));
    let python = tokio::task::spawn_blocking(python_env);
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 200,
            mean_bytes: 2000,
            ..Default::default()
        },
    )
    .await?;
    python.await??;
    let tmp = tempfile::tempdir()?;
    let (db, data) = (tmp.path().join("db.sqlite"), tmp.path().join("data"));
    let args = procs::args(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db.to_str().context("a UTF-8 temp path")?,
        "--store",
        data.to_str().context("a UTF-8 temp path")?,
        "--replicate-origin",
        &sim.url(),
        "--registry",
        &sim.url(),
        "--rate-limit",
        "0",
        "--pivots",
        "@,A,a,m",
        "--progress",
        "none",
    ]);
    let mut coordinator = tokio::task::block_in_place(|| Listening::start(&bin, &args, &[]))?;
    let addr = coordinator.addr.clone();

    let result = check_progress(&addr, &sim).await;
    ensure!(
        coordinator.is_running(),
        "`coordinator serve` must stay up when done"
    );
    coordinator.kill()?;
    sim.shutdown().await;
    result
}

async fn check_progress(addr: &str, sim: &SimServer) -> Result<()> {
    let last = check_watch_stream(addr).await?;
    check_get_progress(addr, sim, &last).await
}

/// WatchProgress until done: the last message is the done state, and no count goes down.
async fn check_watch_stream(addr: &str) -> Result<Value> {
    // The server's own stream: a Progress now, then every interval until done (and once
    // more when it is), so it ends by itself; the limit bounds a stuck run.
    let watched = {
        let addr = addr.to_string();
        blocking(move || {
            reflect_stream(
                &addr,
                "alldocs.v1.Coordinator/WatchProgress",
                r#"{"interval_ms": 50}"#,
                "v1alpha",
                None,
                Duration::from_secs(120),
            )
        })
        .await?
    };
    let last = watched.last().context("WatchProgress sent nothing")?;
    ensure!(
        last["state"] == "RUN_STATE_DONE",
        "WatchProgress ended before done: {last}"
    );
    let done_at = watched.iter().position(|p| p["state"] == "RUN_STATE_DONE");
    ensure!(
        done_at == Some(watched.len() - 1),
        "WatchProgress went on after done: {watched:?}"
    );
    for pair in watched.windows(2) {
        for field in [
            "rows_indexed",
            "packuments_done",
            "partitions_done",
            "bytes_stored",
        ] {
            ensure!(
                json_u64(&pair[0], field)? <= json_u64(&pair[1], field)?,
                "{field} went down: {} then {}",
                pair[0],
                pair[1]
            );
        }
    }

    Ok(last.clone())
}

/// GetProgress over both reflection versions: every contract field, exact counts, and the
/// same bytes stored as the stream's last message said.
async fn check_get_progress(addr: &str, sim: &SimServer, last: &Value) -> Result<()> {
    let registry = sim.registry().clone();
    let expected_bytes: u64 = registry
        .names()
        .map(|name| registry.document_len(name, false).map(|n| n as u64))
        .sum::<Option<u64>>()
        .context("every listed package has a document")?;
    for version in VERSIONS {
        let addr = addr.to_string();
        let p = blocking(move || {
            reflect_call(&addr, "alldocs.v1.Coordinator/GetProgress", "{}", version)
        })
        .await?;
        let fields: BTreeSet<&str> = p
            .as_object()
            .context("Progress is a JSON object")?
            .keys()
            .map(String::as_str)
            .collect();
        ensure!(
            fields == PROGRESS_FIELDS.into_iter().collect(),
            "Progress through {version} has fields {fields:?}, the contract {PROGRESS_FIELDS:?}"
        );
        ensure!(p["state"] == "RUN_STATE_DONE", "{version}: {p}");
        let n = |field: &str| json_u64(&p, field);
        for (field, want) in [
            ("partitions_total", 5),
            ("partitions_done", 5),
            ("partitions_failed", 0),
            ("rows_indexed", 200),
            ("packuments_total", 200),
            ("packuments_done", 200),
            ("packuments_missing", 0),
            ("packuments_failed", 0),
            ("packuments_pending", 0),
            ("packuments_leased", 0),
            ("leases_in_flight", 0),
            ("bytes_stored", expected_bytes),
        ] {
            ensure!(
                n(field)? == want,
                "{version}: {field} is {}, not {want}: {p}",
                n(field)?
            );
        }
        let last_value: &Value = last;
        ensure!(
            json_u64(last_value, "bytes_stored")? == expected_bytes,
            "the stream's last Progress disagrees: {last_value}"
        );
    }
    Ok(())
}
