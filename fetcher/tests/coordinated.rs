//! Real `fetcher serve` processes (this crate's binary) leased to by a coordinator running
//! in this test process through its library, over real gRPC sockets: two fetchers share a
//! run (and one rate limit), one killed with SIGKILL mid-run costs nothing, and none at all
//! is a clear error.

use std::{net::SocketAddr, path::Path, process::ExitCode};

use alldocs_coordinator::{
    cli::{exit_code, Cli, Command},
    run::args::JobArgs,
};
use alldocs_tests::{
    coord::{job_args, stored_files, wait_done, wait_until},
    procs::{args, free_port, Listening},
    sim::{SimConfig, SimServer},
};
use clap::Parser;
use tokio::sync::oneshot;

/// A `fetcher serve` process on a port of its choosing.
fn fetcher() -> anyhow::Result<Listening> {
    Listening::start(
        Path::new(env!("CARGO_BIN_EXE_fetcher")),
        &args(&["serve", "--listen", "127.0.0.1:0"]),
        &[],
    )
}

/// The options of `coordinator <argv…>`, parsed as the binary parses them.
fn parse(argv: &[String]) -> JobArgs {
    let cli =
        Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(argv.iter().cloned()))
            .expect("valid options");
    match cli.command {
        Command::Run(a) | Command::Serve(a) => a,
        _ => panic!("not a job"),
    }
}

/// `coordinator run …` in this process: its exit code, and the error it would print.
async fn run(argv: &[String]) -> (ExitCode, Option<String>) {
    match alldocs_coordinator::run::job::job(parse(argv), false, std::future::pending(), None).await
    {
        Ok(code) => (code, None),
        Err(e) => (exit_code(&e), Some(format!("{e:#}"))),
    }
}

/// `coordinator serve …` in this process until `stop` fires; returns its API URL.
async fn serve(
    argv: &[String],
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<ExitCode>>)> {
    let (tx, rx) = oneshot::channel::<SocketAddr>();
    let args = parse(argv);
    let job = tokio::spawn(alldocs_coordinator::run::job::job(
        args,
        true,
        async move {
            let _ = stop.await;
            alldocs_fetcher::serve::telemetry::Signal::Terminate
        },
        Some(tx),
    ));
    let addr = rx.await?;
    Ok((format!("http://{addr}"), job))
}

fn leases_by_fetcher(db: &Path) -> anyhow::Result<Vec<String>> {
    let conn = rusqlite::Connection::open(db)?;
    let fetchers = conn
        .prepare("SELECT DISTINCT fetcher FROM leases ORDER BY fetcher")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(fetchers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remote_fetchers_share_the_run() -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 800,
            mean_bytes: 3000,
            prefix: "/registry".into(),
            missing_every: 40,
            ..Default::default()
        },
    )
    .await?;
    let (f1, f2) = (fetcher()?, fetcher()?);
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "@,A,a,m",
        "--lease-size",
        "50",
        "--fetcher",
        &f1.url(),
        "--fetcher",
        &f2.url(),
    ];
    let (code, err) = run(&job_args("run", dir.path(), &sim.url(), &opts)).await;
    assert_eq!((code, err), (ExitCode::SUCCESS, None));
    let registry = sim.registry();
    let files = stored_files(&dir.path().join("data"));
    let mut expected: Vec<&str> = registry
        .names()
        .filter(|n| !registry.is_missing(n))
        .collect();
    expected.sort();
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    for (name, bytes) in &files {
        assert_eq!(
            Some(bytes.clone()),
            registry.document(name, false),
            "{name}"
        );
    }
    // Both fetchers were given leases.
    let mut urls = vec![f1.url(), f2.url()];
    urls.sort();
    assert_eq!(leases_by_fetcher(&dir.path().join("alldocs.sqlite"))?, urls);
    // Each fetcher's /metrics, on its gRPC port, counts what it did; together, the run.
    let (mut stored, mut missing) = (0.0, 0.0);
    for f in [&f1, &f2] {
        let text = reqwest::get(format!("{}/metrics", f.url()))
            .await?
            .text()
            .await?;
        alldocs_tests::prom::promtool_accepts(&text);
        stored += sample(
            &text,
            "alldocs_fetcher_packuments_total{outcome=\"stored\"}",
        );
        missing += sample(
            &text,
            "alldocs_fetcher_packuments_total{outcome=\"missing\"}",
        );
        assert!(sample(&text, "alldocs_origin_requests_total{class=\"2xx\"}") > 0.0);
        assert_eq!(sample(&text, "alldocs_fetcher_leases_open"), 0.0);
    }
    assert_eq!(stored, expected.len() as f64);
    assert_eq!(missing, 20.0);
    Ok(())
}

/// The value of the sample `name`, which must be there.
fn sample(text: &str, name: &str) -> f64 {
    alldocs_tests::prom::sample(text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Users running several fetcher processes get one rate limit for all of them: at
/// `--rate-limit 40`, two `fetcher serve` processes with 5-packument leases never send the
/// origin more than 42 requests in any second, and every packument is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_fetchers_share_one_rate_limit() -> anyhow::Result<()> {
    let sim = SimServer::loopback(240, 1500).await?;
    let (f1, f2) = (fetcher()?, fetcher()?);
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "g,p",
        "--rate-limit",
        "40",
        "--lease-size",
        "5",
        "--max-in-flight",
        "8",
        "--fetcher",
        &f1.url(),
        "--fetcher",
        &f2.url(),
    ];
    let (code, err) = run(&job_args("run", dir.path(), &sim.url(), &opts)).await;
    assert_eq!((code, err), (ExitCode::SUCCESS, None));
    let busiest = sim.max_requests_per_second();
    assert!(
        busiest <= 42,
        "the origin saw {busiest} requests in one second"
    );
    assert_eq!(sim.stats().packument_requests, 240);
    assert_eq!(stored_files(&dir.path().join("data")).len(), 240);
    let mut urls = vec![f1.url(), f2.url()];
    urls.sort();
    assert_eq!(leases_by_fetcher(&dir.path().join("alldocs.sqlite"))?, urls);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetcher_killed_mid_run_costs_nothing() -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 1200,
            mean_bytes: 1500,
            latency_ms: 2,
            ..Default::default()
        },
    )
    .await?;
    let (f1, mut f2) = (fetcher()?, fetcher()?);
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "@,a,m",
        "--lease-size",
        "30",
        "--max-in-flight",
        "4",
        "--fetcher",
        &f1.url(),
        "--fetcher",
        &f2.url(),
    ];
    let (stop, stopped) = oneshot::channel();
    let (url, job) = serve(&job_args("serve", dir.path(), &sim.url(), &opts), stopped).await?;
    wait_until(&url, |p| p.packuments_done >= 200).await?;
    f2.kill()?;
    // Its broken leases are handed out again (the attempt counted, as for any stream that
    // ends early) and the other fetcher finishes the run.
    let p = wait_done(&url).await?;
    assert_eq!(
        (p.packuments_done, p.packuments_failed, p.partitions_failed),
        (1200, 0, 0)
    );
    let _ = stop.send(());
    assert_eq!(job.await??, ExitCode::SUCCESS);
    assert_eq!(stored_files(&dir.path().join("data")).len(), 1200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fetcher_answering_is_a_clear_error_that_spends_no_attempt() -> anyhow::Result<()> {
    let sim = SimServer::loopback(300, 1500).await?;
    let dead = format!("http://127.0.0.1:{}", free_port()?);
    let dir = tempfile::tempdir()?;
    let opts = ["--pivots", "m", "--fetcher", &dead];
    let (code, err) = run(&job_args("run", dir.path(), &sim.url(), &opts)).await;
    let err = err.expect("an error");
    assert_eq!(code, ExitCode::FAILURE, "{err}");
    assert!(
        err.contains("no fetcher answered") && err.contains(&dead),
        "{err}"
    );
    let conn = rusqlite::Connection::open(dir.path().join("alldocs.sqlite"))?;
    let partitions: Vec<(String, i64)> = conn
        .prepare("SELECT status, attempts FROM partitions")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        partitions,
        vec![("pending".to_string(), 0); 2],
        "nothing failed, no attempt spent"
    );
    drop(conn);
    // Fetchers hold no state: the same checkpoint carries on with another one.
    let f1 = fetcher()?;
    let opts = ["--pivots", "m", "--fetcher", &f1.url()];
    let (code, err) = run(&job_args("run", dir.path(), &sim.url(), &opts)).await;
    assert_eq!((code, err), (ExitCode::SUCCESS, None));
    assert_eq!(stored_files(&dir.path().join("data")).len(), 300);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_lease_a_coordinator_sends_reaches_a_fetcher() -> anyhow::Result<()> {
    use alldocs_coordinator::{
        checkpoint::Work, fleet::budget::Pace, fleet::lease::Settings, run::args::MAX_LEASE_SIZE,
    };
    use alldocs_proto::v1::{fetch_event::Event, fetcher_client::FetcherClient, Accept};

    // MAX_LEASE_SIZE names of npm's longest (214 bytes) with long revisions.
    let items: Vec<(String, String)> = (0..MAX_LEASE_SIZE)
        .map(|i| (format!("{i:0>214}"), format!("1-{i:0>254}")))
        .collect();
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        replicate_origin: "http://127.0.0.1:9".into(),
        registry: "http://127.0.0.1:9".into(),
        store: dir.path().display().to_string(),
        accept: Accept::Full,
        page_size: 100,
        lease_size: MAX_LEASE_SIZE as usize,
        lease_duration: std::time::Duration::from_secs(1),
        answer_grace: std::time::Duration::from_secs(1),
        max_in_flight: 1,
        concurrency: 1,
        rate_limit: 0.0,
        max_retries: 0,
        retry_base_ms: 10,
        rate_recovery: std::time::Duration::from_secs(10),
        max_document_bytes: 0,
        layout: alldocs_coordinator::checkpoint::Layout::Files,
        snapshot_id: String::new(),
        pack_bytes: 0,
        pack_interval: std::time::Duration::ZERO,
    };
    // Already past its deadline: the fetcher takes it and ends it at once.
    let lease = settings.lease(1, &Work::Packuments(items), 1, Pace::default());
    assert!(
        prost::Message::encoded_len(&lease) > 4 << 20,
        "larger than gRPC's default 4 MiB limit"
    );
    let server = fetcher()?;
    let mut client = FetcherClient::connect(server.url()).await?;
    let mut stream = client.fetch(lease).await?.into_inner();
    let mut summary = None;
    while let Some(ev) = stream.message().await? {
        if let Some(Event::Summary(s)) = ev.event {
            summary = Some(s);
        }
    }
    let summary = summary.expect("a summary");
    assert!(summary.deadline_exceeded, "{summary:?}");
    assert_eq!(summary.unfinished, u64::from(MAX_LEASE_SIZE));
    Ok(())
}
