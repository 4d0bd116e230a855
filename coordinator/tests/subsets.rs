//! Parts of a snapshot with the real `coordinator` binary: `run --index-only` (the old
//! `partition refresh`) indexes every name and revision without a packument request, and a
//! later run on the same checkpoint fetches them.

use std::path::PathBuf;

use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, stored_files},
    procs::run,
    sim::SimServer,
    support::parse_index,
};

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_only_requests_no_packument_and_a_later_run_fetches_them() -> anyhow::Result<()> {
    let sim = SimServer::loopback(600, 600).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_names_run_fetches_just_those_and_leaves_the_rest_of_the_snapshot_alone(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(300, 600).await?;
    let registry = sim.registry();
    let picked: Vec<String> = registry.names().step_by(50).map(str::to_string).collect();
    assert!(picked.len() >= 4);
    let dir = tempfile::tempdir()?;

    // A JSON array as the old tool wrote it, a `name@range`, a duplicate, an unknown name.
    let list = dir.path().join("packages.json");
    let mut entries: Vec<String> = picked.clone();
    entries.push(format!("{}@^1.2.3", picked[0]));
    entries.push("no-such-package-here".into());
    std::fs::write(&list, serde_json::to_string(&entries)?)?;
    let names = format!("@{}", list.display());
    let opts = ["--pivots", "@,a,m", "--names", names.as_str()];
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    let want = picked.len();
    assert!(
        out.contains(&format!(
            "names: {} listed: {want} stored, 1 missing",
            want + 1
        )),
        "{out}"
    );
    let stats = sim.stats();
    assert_eq!(stats.all_docs_requests, 0, "no index pass");
    assert_eq!(stats.packument_requests, want as u64 + 1, "each name once");
    let files = stored_files(&dir.path().join("data"));
    assert_eq!(files.len(), want);
    for name in &picked {
        assert_eq!(
            files.get(name).cloned(),
            registry.document(name, false),
            "{name}"
        );
    }
    let db = dir.path().join("alldocs.sqlite");
    assert_eq!(
        checkpoint_statuses(&db)
            .get("no-such-package-here")
            .map(String::as_str),
        Some("missing")
    );

    // A full snapshot on the same checkpoint, then a names run of two (a lines file with a
    // comment): only those two are fetched again, every other row stays as it was.
    nightly_names_run_on_a_full_snapshot(&sim, dir.path(), &picked[..2])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_names_list_is_refused_before_anything_is_written() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let origin = "http://127.0.0.1:9";
    let cases: &[(&[&str], &str)] = &[
        (&["--names", "react,..,lodash"], "entry 2 `..`"),
        (
            &["--names", "@/nonexistent/list.json"],
            "cannot read the list",
        ),
        (&["--names", "react", "--index-only"], "cannot be used with"),
    ];
    for (extra, expected) in cases {
        let (code, _, err) = run(
            &coordinator(),
            &job_args("run", dir.path(), origin, extra),
            &[],
        )?;
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!dir.path().join("alldocs.sqlite").exists(), "{extra:?}");
    }
    Ok(())
}

/// Every package row but those of `names`, as text.
fn rows_except(db: &std::path::Path, names: &[String]) -> anyhow::Result<Vec<String>> {
    let conn = rusqlite::Connection::open(db)?;
    let mut stmt = conn.prepare(
        "SELECT name, status, indexed_rev, stored_rev, uri, bytes, attempts, fetched_run
         FROM packages ORDER BY name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok((0..8)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect::<Vec<_>>()
                .join("|"))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter(|row| {
            !names
                .iter()
                .any(|n| row.starts_with(&format!("Text({:?})", n.as_bytes())))
        })
        .collect())
}

/// A full run, then a names run of `two` on the same checkpoint: only those are fetched
/// again, and the rest of the snapshot (other rows, the partitions' index) stays as it was.
fn nightly_names_run_on_a_full_snapshot(
    sim: &SimServer,
    dir: &std::path::Path,
    two: &[String],
) -> anyhow::Result<()> {
    let db = dir.join("alldocs.sqlite");
    let full = ["--pivots", "@,a,m"];
    let (code, _, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &full),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    let before = rows_except(&db, two)?;
    let requests = sim.stats().packument_requests;
    let lines = dir.join("nightly.txt");
    std::fs::write(&lines, format!("# ours\n{}\n\n{}\n", two[0], two[1]))?;
    let names = format!("@{}", lines.display());
    let opts = ["--pivots", "@,a,m", "--names", names.as_str()];
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir, &sim.url(), &opts),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(sim.stats().packument_requests, requests + 2);
    assert_eq!(rows_except(&db, two)?, before, "the rest is untouched");
    let partitions: Vec<String> = rusqlite::Connection::open(&db)?
        .prepare("SELECT status FROM partitions")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert!(
        partitions.iter().all(|s| s == "done"),
        "the snapshot's index is kept: {partitions:?}"
    );
    Ok(())
}

/// A list of names against the CouchDB peer (the registry is pouchdb-server, through a
/// proxy that counts requests): the listed ones are stored as served, a scoped one too, an
/// unknown name is `missing`, and nothing else is asked for (no index pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_names_run_against_the_couchdb_peer_marks_an_unknown_name_missing() -> anyhow::Result<()>
{
    use alldocs_tests::{fixtures::tiny_doc, pouch::PouchServer, proxy::CountingProxy};
    let peer = PouchServer::start().await?;
    let all = ["express", "lodash", "react", "@types/node", "left-pad"];
    peer.load(all.iter().map(|n| tiny_doc(n)).collect()).await?;
    let proxy = CountingProxy::start(&peer.db_url()).await?;
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("packages.txt");
    std::fs::write(
        &list,
        "# ours\nexpress\nreact@^18\n@types/node\nnot-published-anywhere\n",
    )?;
    let names = format!("@{}", list.display());
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &proxy.url(), &["--names", &names]),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("names: 4 listed: 3 stored, 1 missing"),
        "{out}"
    );
    let files = stored_files(&dir.path().join("data"));
    for name in ["express", "react", "@types/node"] {
        let served = reqwest::get(format!("{}/{}", peer.db_url(), name.replace('/', "%2f")))
            .await?
            .bytes()
            .await?;
        assert_eq!(
            files.get(name).map(Vec::as_slice),
            Some(&served[..]),
            "{name}"
        );
    }
    assert_eq!(files.len(), 3);
    let statuses = checkpoint_statuses(&dir.path().join("alldocs.sqlite"));
    assert_eq!(statuses["not-published-anywhere"], "missing");
    let asked: Vec<String> = proxy.counts().into_keys().collect();
    assert_eq!(
        asked,
        [
            "/@types/node",
            "/express",
            "/not-published-anywhere",
            "/react"
        ],
        "only the listed packuments, no _all_docs"
    );
    Ok(())
}
