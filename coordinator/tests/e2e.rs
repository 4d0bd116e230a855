//! `coordinator` end to end, as real processes: against pouchdb-server holding npm's real
//! packuments, against the registry simulator, killed with SIGKILL and resumed, rerun
//! incrementally, and fed bad input. (Runs with remote `fetcher serve` processes are in
//! the fetcher crate's tests, which own that binary.)

use std::time::Duration;

use alldocs_proto::v1::{
    coordinator_client::CoordinatorClient, GetProgressRequest, ListFailuresRequest,
    ListPartitionsRequest,
};
use alldocs_tests::{
    coord::{
        checkpoint_dump, checkpoint_statuses, job_args, pack_files, stored_files, wait_done,
        wait_until,
    },
    fixtures::{self, EDGE_NAMES},
    pouch::PouchServer,
    procs::{args, run, Listening},
    py::{json_u64, reflect_call},
    sim::{SimConfig, SimServer},
    support::{all_docs_unpaged, parse_index},
};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_against_pouchdb_stores_every_real_packument_exactly() -> anyhow::Result<()> {
    let peer = PouchServer::start().await?;
    let fx = fixtures::packuments()?;
    let mut docs = fixtures::as_couch_docs(&fx);
    docs.extend(EDGE_NAMES.iter().map(|n| fixtures::tiny_doc(n)));
    peer.load(docs).await?;
    let truth = all_docs_unpaged(&peer.db_url()).await?;
    for layout in ["packs", "files"] {
        run_against_pouchdb(&peer, &truth, layout)
            .await
            .map_err(|e| e.context(format!("--layout {layout}")))?;
    }
    Ok(())
}

/// One snapshot of the peer in `layout`, checked byte for byte against what it serves.
async fn run_against_pouchdb(
    peer: &PouchServer,
    truth: &[(String, String)],
    layout: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Pivots equal to existing ids; names before the first pivot and after the last; a
    // page size of 3 forces paging everywhere.
    let pivots = "1,@types/node,A,JSONStream,a,left-pad,react,zzz-last";
    let serve = Listening::start(
        &coordinator(),
        &job_args(
            "serve",
            dir.path(),
            &peer.db_url(),
            &[
                "--pivots",
                pivots,
                "--page-size",
                "3",
                "--lease-size",
                "7",
                "--layout",
                layout,
            ],
        ),
        &[],
    )?;
    let done = wait_done(&serve.url()).await?;

    // Every document is stored byte for byte as the registry serves it, in the layout
    // asked for: many per pack, or one object each.
    let data = dir.path().join("data");
    let stored = stored_files(&data);
    assert_eq!(stored.len(), truth.len(), "every package stored once");
    let packs = pack_files(&data);
    match layout {
        "packs" => {
            assert!(!packs.is_empty() && !data.join("packuments").exists());
            assert!(packs.len() < truth.len(), "{} packs", packs.len());
        }
        _ => assert!(packs.is_empty() && data.join("packuments").is_dir()),
    }
    let bytes = assert_shown_as_served(peer, truth, dir.path(), &stored).await?;

    assert_index_is_all_docs(&serve.url(), truth).await?;

    // GetProgress is exact, read through an independent reflection client (as grpcurl
    // would), over both reflection versions.
    let n = truth.len() as u64;
    assert_progress_through_reflection(&serve.addr, n, bytes)?;
    assert_eq!(done.packuments_done, n);

    // `coordinator status` tells a person the same.
    assert_status_says_done(&serve.addr, n)?;
    Ok(())
}

/// Each name's stored bytes and `show` of it are what `peer` serves; the bytes served.
async fn assert_shown_as_served(
    peer: &PouchServer,
    truth: &[(String, String)],
    dir: &std::path::Path,
    stored: &std::collections::BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<u64> {
    let http = reqwest::Client::new();
    let mut bytes = 0u64;
    for (name, _) in truth {
        let served = http
            .get(format!("{}/{}", peer.db_url(), name.replace('/', "%2f")))
            .header("accept", "application/json")
            .send()
            .await?
            .bytes()
            .await?;
        bytes += served.len() as u64;
        assert!(stored[name] == served, "{name} is stored byte-exact");
        let (code, shown, err) = run(
            &coordinator(),
            &args(&[
                "show",
                name,
                "--db",
                dir.join("alldocs.sqlite").to_str().unwrap(),
            ]),
            &[],
        )?;
        assert_eq!(code, 0, "{err}");
        assert!(
            shown.as_bytes() == served,
            "show {name} gives the bytes served"
        );
    }
    Ok(bytes)
}

/// The index, read partition by partition in plan order, is `_all_docs` exactly.
async fn assert_index_is_all_docs(url: &str, truth: &[(String, String)]) -> anyhow::Result<()> {
    let mut client = CoordinatorClient::connect(url.to_string()).await?;
    let partitions = client
        .list_partitions(ListPartitionsRequest {})
        .await?
        .into_inner()
        .partitions;
    assert_eq!(partitions.len(), 9);
    let mut index = Vec::new();
    for p in &partitions {
        assert_eq!(p.status, "done", "{}", p.name);
        let path = p.uri.strip_prefix("file://").expect("a file URI");
        index.extend(parse_index(&std::fs::read(path)?)?);
    }
    assert_eq!(
        index.as_slice(),
        truth,
        "the union of index objects is _all_docs, each id once"
    );
    Ok(())
}

/// The packages the checkpoint in `dir` has committed as stored, each of them readable:
/// no stored row points at a pack that is not whole (packs are written whole, then
/// reported), so `export` gives every one.
fn stored_and_readable(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let db = dir.join("alldocs.sqlite");
    let stored: Vec<String> = checkpoint_statuses(&db)
        .into_iter()
        .filter(|(_, s)| s == "stored")
        .map(|(n, _)| n)
        .collect();
    let (code, exported, err) = run(
        &coordinator(),
        &args(&["export", "--db", db.to_str().unwrap()]),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(exported.lines().count(), stored.len());
    Ok(stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_then_resume_finishes_without_refetching() -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 1500,
            mean_bytes: 1500,
            latency_ms: 3,
            missing_every: 97,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "@,A,a,h,p",
        "--lease-size",
        "40",
        "--max-in-flight",
        "4",
        "--concurrency",
        "2",
        "--page-size",
        "250",
    ];
    let mut first = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    wait_until(&first.url(), |p| p.packuments_done >= 300).await?;
    first.kill()?; // SIGKILL: no chance to tidy up

    let stored_before = stored_and_readable(dir.path())?;
    assert!(
        stored_before.len() >= 300,
        "{} stored before the kill",
        stored_before.len()
    );
    assert!(stored_before.len() < 1500, "killed mid-run");

    let second = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    let p = wait_done(&second.url()).await?;
    let registry = sim.registry();
    let missing = registry.names().filter(|n| registry.is_missing(n)).count() as u64;
    assert_eq!(p.packuments_total, 1500);
    assert_eq!(p.rows_indexed, 1500);
    assert_eq!(p.packuments_done, 1500 - missing);
    assert_eq!(p.packuments_missing, missing);
    assert_eq!(p.packuments_failed, 0);
    assert_eq!(p.partitions_done, 6);
    for name in &stored_before {
        assert_eq!(
            sim.requests_for(name),
            1,
            "{name} was stored before the kill and not fetched again"
        );
    }
    let files = stored_files(&dir.path().join("data"));
    assert_eq!(files.len() as u64, 1500 - missing);
    for (name, bytes) in files.iter().step_by(37) {
        assert_eq!(
            Some(bytes.clone()),
            registry.document(name, false),
            "{name}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reruns_fetch_only_what_changed() -> anyhow::Result<()> {
    let config = SimConfig {
        packages: 600,
        mean_bytes: 2000,
        ..Default::default()
    };
    let sim = SimServer::start("127.0.0.1:0".parse()?, config.clone()).await?;
    let addr = sim.addr();
    let dir = tempfile::tempdir()?;
    let opts = ["--pivots", "@,a,n", "--lease-size", "100"];
    let job = job_args("run", dir.path(), &sim.url(), &opts);
    let (code, _, err) = run(&coordinator(), &job, &[])?;
    assert_eq!(code, 0, "{err}");
    let after_first = sim.stats();
    assert_eq!(after_first.packument_requests, 600);

    // Unchanged origin: the index is read again, no packument is requested.
    let (code, out, err) = run(&coordinator(), &job, &[])?;
    assert_eq!(code, 0, "{err}");
    let after_second = sim.stats();
    assert_eq!(
        after_second.packument_requests, after_first.packument_requests,
        "no packument refetched"
    );
    assert!(
        after_second.all_docs_requests > after_first.all_docs_requests,
        "the index was read again"
    );
    assert!(out.contains("0 this run"), "{out}");

    // The registry moves on a generation: exactly the changed revisions are fetched.
    let old = sim.registry().clone();
    sim.shutdown().await;
    let sim = SimServer::start(
        addr,
        SimConfig {
            generation: 1,
            ..config
        },
    )
    .await?;
    let changed: Vec<&str> = old
        .names()
        .filter(|n| old.rev(n) != sim.registry().rev(n))
        .collect();
    assert!(!changed.is_empty());
    let (code, _, err) = run(&coordinator(), &job, &[])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(sim.stats().packument_requests, changed.len() as u64);
    let stored = stored_files(&dir.path().join("data"));
    for name in changed {
        assert_eq!(
            sim.requests_for(name),
            1,
            "{name} changed and was fetched again"
        );
        assert_eq!(
            stored.get(name).cloned(),
            sim.registry().document(name, false)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_writes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = "http://127.0.0.1:9/registry";
    let cases: &[(&[&str], &str)] = &[
        (&["--pivots", "a,c,b"], "`b`"),
        (&["--pivots", "a,b,b"], "strictly increasing"),
        (
            &["--store", "ftp://host/x"],
            "unknown store scheme `ftp://`",
        ),
        (&["--replicate-origin", "not a url"], "--replicate-origin"),
    ];
    for (extra, expected) in cases {
        let (code, out, err) = run(
            &coordinator(),
            &job_args("run", dir.path(), origin, extra),
            &[],
        )?;
        assert_eq!(code, 2, "{extra:?}: {out}{err}");
        assert!(
            err.contains(expected),
            "{extra:?}: the error names the problem: {err}"
        );
        assert!(
            !dir.path().join("alldocs.sqlite").exists(),
            "{extra:?}: nothing written"
        );
        assert!(
            !dir.path().join("data").exists(),
            "{extra:?}: nothing written"
        );
    }

    // With no registry configured anywhere, a clear error and nothing written.
    let home = tempfile::tempdir()?;
    let mut a = job_args("run", dir.path(), origin, &[]);
    let at = a.iter().position(|x| x == "--registry").unwrap();
    a.drain(at..at + 2);
    let (code, _, err) = run(
        &coordinator(),
        &a,
        &[
            ("HOME", home.path().to_str().unwrap()),
            ("PATH", "/nonexistent"),
            ("npm_config_registry", ""),
        ],
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no npm registry is configured"), "{err}");
    assert!(!dir.path().join("alldocs.sqlite").exists());

    // A checkpoint made with other settings is refused and left as it was.
    a_checkpoint_of_other_settings_is_refused_and_untouched(dir.path()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_and_retry_failed_fetches_them() -> anyhow::Result<()> {
    // Every packument fails with 503 more often than the retries allow.
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 30,
            mean_bytes: 500,
            fail_first: 4,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let opts = ["--pivots", "m", "--max-retries", "1", "--max-attempts", "1"];
    let serve = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    let p = wait_done(&serve.url()).await?;
    assert_eq!(p.packuments_failed, 30);
    let failures = reflect_call(
        &serve.addr,
        "alldocs.v1.Coordinator/ListFailures",
        "{}",
        "v1",
    )?;
    assert_eq!(json_u64(&failures, "total").ok(), Some(30));
    assert!(
        failures["failures"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{failures}"
    );
    // Paged, 12 at a time: every failure exactly once, in name order, and the last page
    // says there is no next one.
    let mut client = CoordinatorClient::connect(serve.url()).await?;
    assert_failures_page_through(&mut client, 30).await?;

    // Each name has now been asked for twice; two more tries succeed.
    let retried = reflect_call(
        &serve.addr,
        "alldocs.v1.Coordinator/RetryFailed",
        "{}",
        "v1",
    )?;
    assert_eq!(json_u64(&retried, "packuments").ok(), Some(30));
    let retry_twice = async {
        for _ in 0..2 {
            let p = wait_done(&serve.url()).await?;
            if p.packuments_done == 30 {
                return anyhow::Ok(p);
            }
            client
                .retry_failed(alldocs_proto::v1::RetryFailedRequest { names: vec![] })
                .await?;
        }
        wait_done(&serve.url()).await
    };
    let p = tokio::time::timeout(Duration::from_secs(60), retry_twice).await??;
    assert_eq!((p.packuments_done, p.packuments_failed), (30, 0));
    let p = client
        .get_progress(GetProgressRequest {})
        .await?
        .into_inner();
    assert_eq!(p.packuments_done, 30);

    // `run` with failures exits 3 and its summary says what failed and how to retry.
    run_with_failures_exits_3_and_says_how_to_retry(&opts).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_progress_sends_consistent_snapshots_at_the_interval_and_on_state_changes(
) -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 300,
            mean_bytes: 500,
            latency_ms: 20,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let opts = [
        "--pivots",
        "m",
        "--max-in-flight",
        "2",
        "--concurrency",
        "2",
        "--lease-size",
        "5",
    ];
    let serve = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    let mut client = CoordinatorClient::connect(serve.url()).await?;
    let started = std::time::Instant::now();
    let mut stream = client
        .watch_progress(alldocs_proto::v1::WatchProgressRequest { interval_ms: 400 })
        .await?
        .into_inner();
    let (mut messages, mut states) = (0u64, Vec::new());
    while let Some(p) = stream.message().await? {
        messages += 1;
        // Every message is one consistent snapshot.
        assert_eq!(
            p.packuments_done
                + p.packuments_missing
                + p.packuments_failed
                + p.packuments_pending
                + p.packuments_leased,
            p.packuments_total,
            "{p:?}"
        );
        assert!(
            p.packuments_fetched_this_run <= p.packuments_done + p.packuments_missing,
            "{p:?}"
        );
        if states.last() != Some(&p.state) {
            states.push(p.state);
        }
    }
    let elapsed = started.elapsed().as_millis() as u64;
    assert!(
        elapsed > 800,
        "the run is long enough to tell: {elapsed} ms"
    );
    // One now, one per interval, and one per change of state (planning, indexing,
    // fetching, done) at most.
    let bound = 1 + elapsed / 400 + states.len() as u64;
    assert!(
        messages <= bound,
        "{messages} messages in {elapsed} ms at 400 ms ({} states): more than {bound}",
        states.len()
    );
    assert_eq!(
        states.last(),
        Some(&(alldocs_proto::v1::RunState::Done as i32))
    );
    Ok(())
}

/// Reads every failure 12 at a time: `total` of them over three pages, each once, in name
/// order; a page token the coordinator never gave out is refused.
async fn assert_failures_page_through(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    total: u64,
) -> anyhow::Result<()> {
    let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = client
            .list_failures(ListFailuresRequest {
                limit: 12,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        assert_eq!(page.total, total);
        pages += 1;
        names.extend(page.failures.into_iter().map(|f| f.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((pages, names.len()), (3, total as usize));
    assert_eq!(names, sorted);
    let err = client
        .list_failures(ListFailuresRequest {
            limit: 5,
            page_token: "made-up".into(),
        })
        .await
        .expect_err("a token it never gave out");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    Ok(())
}

/// GetProgress through the independent reflection client, over both reflection versions:
/// a done run of `n` packuments and `bytes` stored, in 9 partitions.
fn assert_progress_through_reflection(addr: &str, n: u64, bytes: u64) -> anyhow::Result<()> {
    for reflection in ["v1", "v1alpha"] {
        let p = reflect_call(addr, "alldocs.v1.Coordinator/GetProgress", "{}", reflection)?;
        assert_eq!(p["state"], "RUN_STATE_DONE");
        assert_eq!(json_u64(&p, "partitions_total").ok(), Some(9), "{p}");
        assert_eq!(json_u64(&p, "partitions_done").ok(), Some(9));
        assert_eq!(json_u64(&p, "partitions_failed").ok(), Some(0));
        assert_eq!(json_u64(&p, "rows_indexed").ok(), Some(n));
        assert_eq!(json_u64(&p, "packuments_total").ok(), Some(n));
        assert_eq!(json_u64(&p, "packuments_done").ok(), Some(n));
        assert_eq!(json_u64(&p, "packuments_missing").ok(), Some(0));
        assert_eq!(json_u64(&p, "packuments_failed").ok(), Some(0));
        assert_eq!(json_u64(&p, "bytes_stored").ok(), Some(bytes));
        assert_eq!(json_u64(&p, "packuments_rev_mismatch").ok(), Some(0));
    }
    Ok(())
}

/// A checkpoint made with `--pivots m` is refused to a run with `--pivots n`, untouched.
async fn a_checkpoint_of_other_settings_is_refused_and_untouched(
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(50, 500).await?;
    let (code, _, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &["--pivots", "m"]),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    let db = dir.join("alldocs.sqlite");
    let before = checkpoint_dump(&db);
    let (code, _, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &["--pivots", "n"]),
        &[],
    )?;
    assert_eq!(code, 2);
    assert!(
        err.contains("was made with --pivots `m`") && err.contains("--db"),
        "{err}"
    );
    assert!(
        checkpoint_dump(&db) == before,
        "the checkpoint is untouched"
    );
    Ok(())
}

/// `run` with failures exits 3 and its summary says what failed and how to retry.
async fn run_with_failures_exits_3_and_says_how_to_retry(opts: &[&str]) -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 12,
            mean_bytes: 500,
            fail_first: 4,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let (code, out, _) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), opts),
        &[],
    )?;
    assert_eq!(code, 3, "finished with failed items: {out}");
    assert!(out.contains("12 failed"), "{out}");
    assert!(
        out.contains("HTTP 503") && out.contains("RetryFailed"),
        "{out}"
    );
    Ok(())
}

/// `coordinator status`, as a table and as JSON, says the run is done with `n` stored.
fn assert_status_says_done(addr: &str, n: u64) -> anyhow::Result<()> {
    let (code, out, err) = run(&coordinator(), &args(&["status", "--addr", addr]), &[])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("done") && out.contains(&format!("{n} stored")),
        "{out}"
    );
    let (_, json, _) = run(
        &coordinator(),
        &args(&["status", "--addr", addr, "--json"]),
        &[],
    )?;
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["packuments_done"].as_u64(), Some(n));
    Ok(())
}
