//! `--rate-limit` as the origin sees it, with the real `coordinator` binary and the
//! registry simulator: a bound on every one-second window across short leases, a run
//! that slows down when the origin throttles and speeds up again, and values refused.

use alldocs_tests::{
    coord::{job_args, stored_files, wait_done, wait_until},
    procs::{args, run, Listening},
    sim::{SimConfig, SimServer},
};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

async fn sim(packages: usize, throttle_every: usize) -> anyhow::Result<SimServer> {
    let config = SimConfig {
        packages,
        mean_bytes: 1500,
        throttle_every,
        ..Default::default()
    };
    SimServer::start("127.0.0.1:0".parse()?, config).await
}

/// Users pointing alldocs at a registry can rely on `--rate-limit 40`: in no one-second
/// window does the origin see more than 42 requests (the limit, one tick of the grid, and
/// one of slack), even with leases of 5 packuments starting and ending all the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_never_sees_more_than_the_limit_in_any_second() -> anyhow::Result<()> {
    let sim = sim(300, 0).await?;
    let dir = tempfile::tempdir()?;
    let opts = [
        "--rate-limit",
        "40",
        "--lease-size",
        "5",
        "--max-in-flight",
        "8",
        "--pivots",
        "g,p",
    ];
    let job = job_args("run", dir.path(), &sim.url(), &opts);
    // Off the runtime's threads, so the simulator answers (and times) requests promptly.
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run(&coordinator(), &job, &[])).await??;
    assert_eq!(code, 0, "{err}");

    let stats = sim.stats();
    assert_eq!(stats.packument_requests, 300, "each packument once");
    let busiest = sim.max_requests_per_second();
    println!("busiest second: {busiest} requests");
    assert!(
        busiest <= 42,
        "the origin saw {busiest} requests within one second at --rate-limit 40"
    );
    let stored = stored_files(&dir.path().join("data"));
    assert_eq!(stored.len(), 300, "every packument is stored");
    for name in sim.registry().names() {
        assert_eq!(
            stored.get(name),
            sim.registry().document(name, false).as_ref(),
            "{name}"
        );
    }
    Ok(())
}

/// Users see a run slow down when the origin answers 429 (the current request limit drops
/// below `--rate-limit`, in GetProgress and `coordinator status`) and pick up again once
/// it stops, back to the full limit; every packument is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_lowers_the_current_rate_and_it_recovers() -> anyhow::Result<()> {
    let sim = sim(300, 4).await?;
    let dir = tempfile::tempdir()?;
    let opts = [
        "--rate-limit",
        "40",
        "--rate-recovery",
        "200ms",
        "--lease-size",
        "5",
        "--max-in-flight",
        "8",
        "--pivots",
        "g,p",
    ];
    let serve = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    let url = serve.url();
    let slowed = wait_until(&url, |p| {
        p.rate_limit_current > 0.0 && p.rate_limit_current < 40.0
    })
    .await?;
    assert!(
        slowed.rate_limit_current >= 1.0,
        "not below the floor: {slowed:?}"
    );
    assert!(sim.stats().throttled > 0);
    sim.set_throttle_every(0);

    // A tenth of the limit back every 200 ms without throttling: the full limit within
    // about 2 s, well before the remaining packuments are fetched (WatchProgress ends
    // with the run, so recovering later would fail here).
    let recovered = wait_until(&url, |p| p.rate_limit_current == 40.0).await?;
    assert_eq!(recovered.rate_limit_current, 40.0);
    let done = wait_done(&url).await?;
    assert_eq!(
        done.packuments_done, 300,
        "every packument is stored: {done:?}"
    );
    assert_eq!(stored_files(&dir.path().join("data")).len(), 300);

    let (code, out, err) = run(
        &coordinator(),
        &args(&["status", "--addr", &serve.addr]),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("request limit  40.0/s"), "{out}");
    Ok(())
}

/// Users who mistype the limit are told what `--rate-limit` accepts (exit 2) instead of
/// getting an unlimited run, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_nan_and_infinite_rate_limits_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = "http://127.0.0.1:9/registry";
    for value in ["-5", "NaN", "inf"] {
        let job = job_args("run", dir.path(), origin, &["--rate-limit", value]);
        let (code, out, err) = run(&coordinator(), &job, &[])?;
        assert_eq!(code, 2, "{value}: {out}{err}");
        assert!(
            err.contains("--rate-limit") && err.contains("0 = no limit"),
            "{value}: {err}"
        );
        assert!(err.contains(&format!("'{value}'")), "{value}: {err}");
        assert!(!dir.path().join("alldocs.sqlite").exists(), "{value}");
        assert!(!dir.path().join("data").exists(), "{value}");
    }
    // The same through the environment and the `=` form.
    let mut job = job_args("run", dir.path(), origin, &[]);
    let at = job.iter().position(|a| a == "--rate-limit").unwrap();
    job.drain(at..at + 2);
    let (code, _, err) = run(&coordinator(), &job, &[("ALLDOCS_RATE_LIMIT", "-1")])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--rate-limit"), "{err}");
    job.push("--rate-limit=-5".into());
    let (code, _, err) = run(&coordinator(), &job, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--rate-limit"), "{err}");
    assert!(!dir.path().join("alldocs.sqlite").exists());
    Ok(())
}
