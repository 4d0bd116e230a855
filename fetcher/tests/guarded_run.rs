//! The whole chain with both sides guarded: a real `fetcher serve` that requires
//! `ALLDOCS_FETCHER_TOKEN` and writes only under its `--allow-store`, and a coordinator
//! (this crate's test process, through its library) that sends the token from the same
//! variable. A wrong token or a store outside the allow-list stops the run at once with
//! what to set, charges no attempt, and writes nothing; the right ones complete the run
//! byte-exact; no token reaches any log. (One test in its own process: the coordinator
//! reads the token from this process's environment.)

mod common;

use std::process::ExitCode;

use alldocs_coordinator::cli::{exit_code, Cli, Command};
use alldocs_tests::{
    coord::{job_args, stored_files},
    sim::SimServer,
};
use clap::Parser;
use common::Fetcher;

const TOKEN: &str = "fetcher-secret-6f1e2d";
const WRONG: &str = "not-the-secret-93ab71";

/// `coordinator run ARGV` in this process: its exit code and the error it would print.
async fn run(argv: &[String]) -> (ExitCode, String) {
    let cli =
        Cli::try_parse_from(std::iter::once("coordinator".to_string()).chain(argv.iter().cloned()))
            .expect("valid options");
    let Command::Run(args) = cli.command else {
        panic!("a run")
    };
    match alldocs_coordinator::run::job::job(args, false, std::future::pending(), None).await {
        Ok(code) => (code, String::new()),
        Err(e) => (exit_code(&e), format!("{e:#}")),
    }
}

fn attempts_charged(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| {
            c.query_row("SELECT COALESCE(SUM(attempts), 0) FROM packages", [], |r| {
                r.get(0)
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_fetcher_serves_only_the_coordinator_with_its_token_and_store(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(150, 800).await?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let allowed = format!("file://{}", data.display());
    let fetcher = Fetcher::start(
        &["--listen", "127.0.0.1:0", "--allow-store", &allowed],
        &[("ALLDOCS_FETCHER_TOKEN", TOKEN)],
    )?;
    let url = fetcher.url();
    let argv = |store: &str, db: &str| {
        let db = dir.path().join(db).display().to_string();
        let extra = [
            "--fetcher",
            &url,
            "--pivots",
            "m",
            "--store",
            store,
            "--db",
            &db,
        ];
        job_args("run", dir.path(), &sim.url(), &extra)
    };

    // A wrong token: stopped at the first lease, nothing charged, nothing fetched.
    std::env::set_var("ALLDOCS_FETCHER_TOKEN", WRONG);
    let (code, err) = run(&argv(data.to_str().unwrap(), "a.sqlite")).await;
    assert_eq!(code, ExitCode::FAILURE, "{err}");
    assert!(
        err.contains("refused the coordinator's ALLDOCS_FETCHER_TOKEN"),
        "{err}"
    );
    assert!(!err.contains(WRONG) && !err.contains(TOKEN), "{err}");
    assert_eq!(
        sim.stats().packument_requests + sim.stats().all_docs_requests,
        0
    );
    assert_eq!(attempts_charged(&dir.path().join("a.sqlite")), 0);

    // The right token, a store outside the fetcher's allow-list: the same.
    std::env::set_var("ALLDOCS_FETCHER_TOKEN", TOKEN);
    let elsewhere = dir.path().join("elsewhere");
    let (code, err) = run(&argv(elsewhere.to_str().unwrap(), "b.sqlite")).await;
    assert_eq!(code, ExitCode::FAILURE, "{err}");
    assert!(err.contains("ALLDOCS_ALLOW_STORE"), "{err}");
    assert_eq!(
        sim.stats().packument_requests + sim.stats().all_docs_requests,
        0
    );
    assert!(stored_files(&elsewhere).is_empty());

    // Both right: the run completes, byte-exact.
    let (code, err) = run(&argv(data.to_str().unwrap(), "a.sqlite")).await;
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    let stored = stored_files(&data);
    let registry = sim.registry();
    assert_eq!(
        stored.len(),
        registry.names().filter(|n| !registry.is_missing(n)).count()
    );
    for (name, bytes) in &stored {
        assert_eq!(
            Some(bytes),
            registry.document(name, false).as_ref(),
            "{name}"
        );
    }
    let ended = fetcher.terminate()?;
    assert!(ended.log.contains("lease finished"), "the log was captured");
    assert!(
        !ended.log.contains(TOKEN) && !ended.log.contains(WRONG),
        "no token in the fetcher's log"
    );
    Ok(())
}
