//! A fetcher URL is a fleet, not a connection, with the real `coordinator` binary: leases
//! to one URL go over `--fetcher-connections` HTTP/2 connections (what a per-connection
//! balancer such as Cloud Run's needs to spread them), and a saturated service rests for
//! the pause it asks for while its leases cost no item an attempt.

mod fleet;

use std::{collections::BTreeSet, path::Path, time::Duration};

use alldocs_tests::{coord::job_args, sim::SimServer};
use fleet::{attempts, envs, run_coordinator, Gate, GuardedFetcher};
use tonic::Code;

const PACKAGES: usize = 120;

fn args(dir: &Path, sim: &SimServer, fetcher: &GuardedFetcher, extra: &[&str]) -> Vec<String> {
    let url = fetcher.url();
    let mut all = vec![
        "--pivots",
        "m",
        "--lease-size",
        "10",
        "--fetcher",
        url.as_str(),
    ];
    all.extend_from_slice(extra);
    job_args("run", dir, &sim.url(), &all)
}

fn assert_complete(dir: &Path) {
    let rows = attempts(&dir.join("alldocs.sqlite"));
    assert_eq!(rows.len(), 2 + PACKAGES, "2 partitions and every package");
    for (name, status, attempts) in rows {
        assert!(
            matches!(status.as_str(), "done" | "stored"),
            "{name}: {status}"
        );
        assert_eq!(attempts, 0, "{name}: no attempt was charged");
    }
}

/// The distinct client sockets the fetcher saw calls from.
fn connections(fetcher: &GuardedFetcher) -> BTreeSet<std::net::SocketAddr> {
    fetcher
        .calls()
        .iter()
        .map(|c| c.peer.expect("peer"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_to_one_url_spread_over_several_connections() -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;

    let fleet = GuardedFetcher::start(Gate::open()).await?;
    let dir = tempfile::tempdir()?;
    let extra = ["--fetcher-connections", "3", "--max-in-flight", "4"];
    let out = run_coordinator(args(dir.path(), &sim, &fleet, &extra), envs(&[])).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_complete(dir.path());
    let seen = connections(&fleet);
    assert_eq!(fleet.calls().len(), 2 + PACKAGES / 10);
    assert_eq!(
        seen.len(),
        3,
        "leases round robin over 3 connections: {seen:?}"
    );

    // The control: one connection when asked for one.
    let single = GuardedFetcher::start(Gate::open()).await?;
    let dir = tempfile::tempdir()?;
    let extra = ["--fetcher-connections", "1", "--max-in-flight", "4"];
    let out = run_coordinator(args(dir.path(), &sim, &single, &extra), envs(&[])).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(connections(&single).len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_fetcher_rests_as_asked_and_its_leases_cost_no_attempt() -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    // The first 5 calls are answered UNAVAILABLE with a 50 ms retry hint.
    let fetcher = GuardedFetcher::start(Gate {
        unavailable_first: 5,
        ..Gate::open()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let extra = ["--max-in-flight", "1", "--max-attempts", "1"];
    let out = run_coordinator(args(dir.path(), &sim, &fetcher, &extra), envs(&[])).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // With one attempt allowed, a charged attempt would have failed an item.
    assert_complete(dir.path());
    let calls = fetcher.calls();
    let refused: Vec<_> = calls.iter().filter(|c| c.refused.is_some()).collect();
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|c| c.refused == Some(Code::Unavailable)));
    assert_eq!(
        calls.len(),
        5 + 2 + PACKAGES / 10,
        "each refused lease was sent again"
    );
    // One lease at a time: after each refusal the URL rested at least the 50 ms it asked
    // for (its own rest would have begun at --retry-base 10ms).
    for pair in calls[..6].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(50),
            "asked again after {gap:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_exhausted_with_retry_after_rests_the_url_that_long_at_no_attempt(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let fetcher = GuardedFetcher::start(Gate {
        exhausted_first: 2,
        ..Gate::open()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let extra = ["--max-in-flight", "1", "--max-attempts", "1"];
    let out = run_coordinator(args(dir.path(), &sim, &fetcher, &extra), envs(&[])).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_complete(dir.path());
    let calls = fetcher.calls();
    let refused: Vec<_> = calls.iter().filter_map(|c| c.refused).collect();
    assert_eq!(refused, vec![Code::ResourceExhausted; 2]);
    for pair in calls[..3].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "retry-after: 1 honoured, not {gap:?}"
        );
    }
    Ok(())
}
