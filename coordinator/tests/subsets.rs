//! Parts of a snapshot with the real `coordinator` binary: `run --index-only` (the old
//! `partition refresh`) indexes every name and revision without a packument request, and a
//! later run on the same checkpoint fetches them.

use std::path::PathBuf;

use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, stored_files},
    procs::run,
    sim::{SimConfig, SimServer},
    support::parse_index,
};

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_only_requests_no_packument_and_a_later_run_fetches_them() -> anyhow::Result<()> {
    let sim = SimServer::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            packages: 600,
            mean_bytes: 600,
            ..Default::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let opts = ["--pivots", "@,A,a,m", "--page-size", "50", "--index-only"];
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("index only: 600 packages indexed, none fetched"),
        "{out}"
    );
    assert_eq!(sim.stats().packument_requests, 0, "no packument request");

    // The index objects hold `_all_docs` exactly, and the checkpoint every name with its
    // revision, none fetched yet.
    let registry = sim.registry();
    let mut expected: Vec<(String, String)> = registry
        .names()
        .map(|n| (n.to_string(), registry.rev(n).expect("a revision")))
        .collect();
    expected.sort();
    let mut indexed = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data/index"))? {
        indexed.extend(parse_index(&std::fs::read(entry?.path())?)?);
    }
    indexed.sort();
    assert_eq!(indexed, expected);
    let db = dir.path().join("alldocs.sqlite");
    let statuses = checkpoint_statuses(&db);
    assert_eq!(statuses.len(), 600);
    assert!(statuses.values().all(|s| s == "pending"), "{statuses:?}");
    assert!(stored_files(&dir.path().join("data")).is_empty());

    // A normal run on the same checkpoint fetches every packument, once.
    let opts = ["--pivots", "@,A,a,m", "--page-size", "50"];
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sim.stats().packument_requests, 600);
    let files = stored_files(&dir.path().join("data"));
    assert_eq!(files.len(), 600);
    for (name, bytes) in &files {
        assert_eq!(
            Some(bytes.clone()),
            registry.document(name, false),
            "{name}"
        );
    }
    Ok(())
}
