//! The container contract, as Cloud Run runs a fetcher: `$PORT` set and no `--listen`, so
//! it binds every interface (allowed because the platform authenticates callers and the
//! stores are named), answers gRPC health over h2c, takes leases from a coordinator, and
//! on SIGTERM ends its leases cleanly and exits well inside Cloud Run's 10 s, while the
//! run carries on with another fetcher and ends with every packument stored exactly.

mod common;

use std::{net::SocketAddr, path::Path, process::ExitCode, time::Duration};

use alldocs_coordinator::cli::{Cli, Command};
use alldocs_tests::{
    coord::{job_args, stored_files, wait_done, wait_until},
    procs::free_port,
    sim::{SimConfig, SimServer},
};
use clap::Parser;
use common::Fetcher;
use tokio::sync::oneshot;

/// `coordinator serve …` in this process until `stop` fires; returns its API URL.
async fn serve(
    argv: &[String],
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<ExitCode>>)> {
    let cli = Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(argv.to_vec()))?;
    let (Command::Run(args) | Command::Serve(args)) = cli.command else {
        anyhow::bail!("not a job");
    };
    let (tx, rx) = oneshot::channel::<SocketAddr>();
    let stopped = async move {
        let _ = stop.await;
        alldocs_fetcher::serve::telemetry::Signal::Terminate
    };
    let job = tokio::spawn(alldocs_coordinator::run::job::job(
        args,
        true,
        stopped,
        Some(tx),
    ));
    Ok((format!("http://{}", rx.await?), job))
}

/// Whether the kernel has a socket listening on `0.0.0.0:port` (`/proc/net/tcp`).
fn listens_on_all_interfaces(port: u16) -> anyhow::Result<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let wanted = format!("00000000:{port:04X}");
    Ok(table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.get(1) == Some(&wanted.as_str()) && cols.get(3) == Some(&"0A")
    }))
}

/// `(fetcher, outcome)` of every lease in the checkpoint.
fn leases(db: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let conn = rusqlite::Connection::open(db)?;
    let rows = conn
        .prepare("SELECT fetcher, COALESCE(outcome, '') FROM leases ORDER BY token")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

async fn health_serving(url: &str) -> anyhow::Result<i32> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(answer.into_inner().status)
}

/// A fetcher started as Cloud Run starts it (`PORT`, platform auth, allow-lists for this
/// run), checked to listen on every interface and answer h2c health.
async fn cloud_run_fetcher(
    sim: &SimServer,
    data: &std::path::Path,
    port: &str,
) -> anyhow::Result<Fetcher> {
    let cloud_run = Fetcher::start(
        &[
            "--allow-store",
            data.to_str().unwrap(),
            "--allow-origin",
            &sim.url(),
        ],
        &[
            ("PORT", port),
            ("ALLDOCS_TRUST_PLATFORM_AUTH", "1"),
            ("RUST_LOG", "info"),
        ],
    )?;
    assert_eq!(cloud_run.proc.addr, format!("0.0.0.0:{port}"));
    assert!(
        listens_on_all_interfaces(port.parse()?)?,
        "bound to 0.0.0.0:{port}"
    );
    assert_eq!(
        health_serving(&cloud_run.url()).await?,
        1,
        "SERVING over h2c"
    );
    Ok(cloud_run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_run_fetcher_stopped_mid_lease_costs_nothing() -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 1200,
            mean_bytes: 1500,
            latency_ms: 10,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let port = free_port()?.to_string();
    let cloud_run = cloud_run_fetcher(&sim, &data, &port).await?;
    let other = Fetcher::start(&["--listen", "127.0.0.1:0"], &[("RUST_LOG", "info")])?;

    let opts = [
        "--pivots",
        "@,a,m",
        "--lease-size",
        "30",
        "--concurrency",
        "2",
        "--max-in-flight",
        "4",
        "--fetcher",
        &cloud_run.url(),
        "--fetcher",
        &other.url(),
    ];
    let (stop, stopped) = oneshot::channel();
    let (url, job) = serve(&job_args("serve", dir.path(), &sim.url(), &opts), stopped).await?;
    wait_until(&url, |p| p.packuments_done >= 200).await?;
    let ended = cloud_run.terminate()?;
    eprintln!("SIGTERM to exit: {:?}", ended.took);
    assert_eq!(ended.code, 0, "{ended:?}");
    assert!(ended.took < Duration::from_secs(10), "{ended:?}");
    assert!(ended.log.contains("shutting down"), "{}", ended.log);

    let p = wait_done(&url).await?;
    assert_eq!(
        (p.packuments_done, p.packuments_failed, p.partitions_failed),
        (1200, 0, 0)
    );
    let _ = stop.send(());
    assert_eq!(job.await??, ExitCode::SUCCESS);
    let registry = sim.registry();
    let files = stored_files(&data);
    assert_eq!(files.len(), registry.len());
    for name in registry.names() {
        assert_eq!(
            files.get(name),
            registry.document(name, false).as_ref(),
            "{name}"
        );
    }
    taken_on_by_the_other(&dir.path().join("alldocs.sqlite"), &port, &other.url())
}

/// It was stopped mid-lease: that lease's rest went back without an attempt counted, and
/// the other fetcher took the work on.
fn taken_on_by_the_other(db: &std::path::Path, port: &str, other: &str) -> anyhow::Result<()> {
    let leases = leases(db)?;
    let stopped_at = leases
        .iter()
        .position(|(f, o)| {
            *f == format!("http://127.0.0.1:{port}") && o.starts_with("fetcher stopped with")
        })
        .unwrap_or_else(|| panic!("no lease of the stopped fetcher ended early: {leases:#?}"));
    assert!(
        leases[stopped_at..]
            .iter()
            .any(|(f, o)| *f == other && o == "finished"),
        "{leases:#?}"
    );
    Ok(())
}
