//! The coordinator's identity towards fetchers, with the real `coordinator` binary and a
//! real fetcher behind a gate that checks the bearer token itself: the token reaches every
//! lease and never the logs; a fetcher that refuses the coordinator (its token, or the
//! store a lease names) stops the run at once with what to set on which side, and the same
//! command carries on once that is fixed.

mod fleet;

use std::path::Path;

use alldocs_tests::{coord::job_args, sim::SimServer};
use fleet::{attempts, envs, run_coordinator, Check, Gate, GuardedFetcher};
use tonic::Code;

const PACKAGES: usize = 60;
const TOKEN: &str = "fetcher-token-5f0c9a1e7d3b";

fn args(dir: &Path, sim: &SimServer, fetcher: &GuardedFetcher) -> Vec<String> {
    job_args(
        "run",
        dir,
        &sim.url(),
        &[
            "--pivots",
            "m",
            "--lease-size",
            "10",
            "--max-in-flight",
            "1",
            "--fetcher",
            &fetcher.url(),
        ],
    )
}

/// Every partition and package of the checkpoint as (status, attempts).
fn rows(dir: &Path) -> Vec<(String, String, i64)> {
    attempts(&dir.join("alldocs.sqlite"))
}

fn assert_complete(dir: &Path) {
    let rows = rows(dir);
    assert_eq!(rows.len(), 2 + PACKAGES, "2 partitions and every package");
    for (name, status, attempts) in rows {
        assert!(
            matches!(status.as_str(), "done" | "stored"),
            "{name}: {status}"
        );
        assert_eq!(attempts, 0, "{name}");
    }
}

/// Nothing was indexed and no attempt was charged: the run stopped at its first lease.
fn assert_untouched(dir: &Path) {
    let rows = rows(dir);
    assert_eq!(rows.len(), 2, "no package indexed: {rows:?}");
    for (name, status, attempts) in rows {
        assert_eq!((status.as_str(), attempts), ("pending", 0), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetcher_token_reaches_every_lease_and_never_the_output() -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let fetcher = GuardedFetcher::start(Gate::check(Check::Token(TOKEN.into()))).await?;
    let dir = tempfile::tempdir()?;
    let out = run_coordinator(
        args(dir.path(), &sim, &fetcher),
        envs(&[("ALLDOCS_FETCHER_TOKEN", TOKEN), ("RUST_LOG", "trace")]),
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_complete(dir.path());
    let calls = fetcher.calls();
    assert_eq!(calls.len(), 2 + PACKAGES / 10, "one call a lease");
    for call in calls {
        assert_eq!(call.authorization, Some(format!("Bearer {TOKEN}")));
        assert_eq!(call.refused, None);
    }
    assert!(
        !out.all().contains(TOKEN),
        "the token leaked into the output"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_run_at_once_and_the_same_command_carries_on(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let fetcher = GuardedFetcher::start(Gate::check(Check::Token(TOKEN.into()))).await?;
    let dir = tempfile::tempdir()?;
    let args = args(dir.path(), &sim, &fetcher);

    let wrong = "not-the-fetcher-token-88e1";
    let env = envs(&[("ALLDOCS_FETCHER_TOKEN", wrong), ("RUST_LOG", "trace")]);
    let out = run_coordinator(args.clone(), env).await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "fetcher {} refused the coordinator's ALLDOCS_FETCHER_TOKEN",
            fetcher.url()
        )) && out
            .stderr
            .contains("set the same ALLDOCS_FETCHER_TOKEN on the coordinator and on the fetcher"),
        "{}",
        out.stderr
    );
    assert_eq!(fetcher.calls().len(), 1, "no retry loop: the run stopped");
    assert_untouched(dir.path());
    assert!(
        !out.all().contains(wrong),
        "the token leaked into the output"
    );

    // No token at all: the message says to set one.
    let out = run_coordinator(args.clone(), envs(&[])).await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "set ALLDOCS_FETCHER_TOKEN on the coordinator to the fetcher's ALLDOCS_FETCHER_TOKEN"
        ),
        "{}",
        out.stderr
    );
    let calls = fetcher.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].authorization, None);
    assert_untouched(dir.path());

    // The same command, with the token fixed, finishes the job.
    let out = run_coordinator(args, envs(&[("ALLDOCS_FETCHER_TOKEN", TOKEN)])).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_complete(dir.path());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outside_the_fetchers_allow_list_stops_the_run_naming_allow_store(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("data");
    let store = store.to_str().unwrap();
    let fetcher = GuardedFetcher::start(Gate {
        deny: Some((
            Code::PermissionDenied,
            format!("store {store} is not under ALLDOCS_ALLOW_STORE"),
        )),
        ..Gate::check(Check::Token(TOKEN.into()))
    })
    .await?;
    let out = run_coordinator(
        args(dir.path(), &sim, &fetcher),
        envs(&[("ALLDOCS_FETCHER_TOKEN", TOKEN)]),
    )
    .await?;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "fetcher {} refused the lease's store {store}: add it (or a prefix of it) to the fetcher's ALLDOCS_ALLOW_STORE (--allow-store)",
            fetcher.url()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(fetcher.calls().len(), 1, "no retry loop: the run stopped");
    assert_untouched(dir.path());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_without_the_token_is_refused_before_anything_is_written() -> anyhow::Result<()>
{
    let sim = SimServer::loopback(10, 500).await?;
    let fetcher = GuardedFetcher::start(Gate::open()).await?;
    let dir = tempfile::tempdir()?;
    let mut args = args(dir.path(), &sim, &fetcher);
    args.extend(["--fetcher-auth".to_string(), "token".to_string()]);
    let out = run_coordinator(args, envs(&[])).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--fetcher-auth token sends ALLDOCS_FETCHER_TOKEN, which is not set"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    assert!(fetcher.calls().is_empty());
    Ok(())
}

/// What Cloud Run's IAM check answers a caller it refuses: a plain HTTP 403 (or 401) with
/// an HTML page, no gRPC status. Served here by an HTTP/2 front on loopback.
async fn iam_front(status: u16) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    alldocs_tests::loopback::serve_http(listener, move |_req| async move {
        let page = "<html><head><title>403 Forbidden</title></head><body><h1>Error: Forbidden</h1><h2>Your client does not have permission to get URL from this server.</h2></body></html>";
        hyper::Response::builder()
            .status(status)
            .header("content-type", "text/html; charset=UTF-8")
            .body(http_body_util::Full::new(bytes::Bytes::from(page)))
            .expect("a valid response")
    });
    Ok(url)
}

/// A Cloud Run service whose IAM check refuses the coordinator (403 for an identity without
/// roles/run.invoker, 401 for none) stops the run at once saying what to set (here: the
/// token was sent where IAM decides, so --fetcher-auth google), charging nothing, instead
/// of resting the fetcher until the run gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_run_iam_refusal_stops_the_run_saying_what_to_grant() -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 600).await?;
    let says = "refused the coordinator's ALLDOCS_FETCHER_TOKEN";
    for status in [403, 401] {
        let front = iam_front(status).await?;
        let dir = tempfile::tempdir()?;
        let args = job_args(
            "run",
            dir.path(),
            &sim.url(),
            &["--pivots", "m", "--fetcher", &front],
        );
        let out = run_coordinator(args, envs(&[("ALLDOCS_FETCHER_TOKEN", TOKEN)])).await?;
        assert_eq!(out.code, 1, "HTTP {status}: {}", out.all());
        assert!(out.stderr.contains(says), "HTTP {status}: {}", out.stderr);
        assert!(
            out.stderr.contains("--fetcher-auth google"),
            "{}",
            out.stderr
        );
        assert!(!out.all().contains(TOKEN));
        assert_untouched(dir.path());
    }
    Ok(())
}
