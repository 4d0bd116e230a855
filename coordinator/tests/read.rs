//! `coordinator index`, `show` and `export` as real processes over a real snapshot of
//! npm's packuments in pouchdb-server, run while `coordinator serve` still holds the
//! checkpoint.

use alldocs_tests::{
    coord::{job_args, stored_files, unpack_file, wait_done},
    fixtures::{self, EDGE_NAMES},
    pouch::PouchServer,
    procs::{args, run, Listening},
    support::all_docs_unpaged,
};
use serde_json::Value;

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// `bash -c 'set -o pipefail; SCRIPT'`: (exit code, stdout, stderr).
fn piped(script: &str) -> (i32, String, String) {
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {script}")])
        .env("RUST_LOG", "warn")
        .output()
        .expect("bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Snap {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    truth: Vec<(String, String)>,
    stored: std::collections::BTreeMap<String, Vec<u8>>,
}

impl Snap {
    fn db(&self) -> String {
        self.dir
            .path()
            .join("alldocs.sqlite")
            .to_str()
            .unwrap()
            .to_string()
    }

    fn run(&self, a: &[&str]) -> (i32, String, String) {
        let mut all = a.to_vec();
        let db = self.db();
        all.extend(["--db", db.as_str()]);
        run(&self.bin, &args(&all), &[]).expect("run coordinator")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_show_and_export_read_a_snapshot_while_it_is_served() -> anyhow::Result<()> {
    let peer = PouchServer::start().await?;
    let mut docs = fixtures::as_couch_docs(&fixtures::packuments()?);
    docs.extend(EDGE_NAMES.iter().map(|n| fixtures::tiny_doc(n)));
    peer.load(docs).await?;
    let truth = all_docs_unpaged(&peer.db_url()).await?;
    let dir = tempfile::tempdir()?;
    let serve = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &peer.db_url(), &["--page-size", "7"]),
        &[],
    )?;
    wait_done(&serve.url()).await?;
    let stored = stored_files(&dir.path().join("data"));
    let snap = Snap {
        bin: coordinator(),
        dir,
        truth,
        stored,
    };
    check_index(&snap);
    check_show(&snap, &peer.db_url()).await?;
    check_export(&snap);
    drop(serve);
    // Once the last writer has closed the checkpoint cleanly (its WAL folded in and
    // removed), the snapshot still reads.
    let conn = rusqlite::Connection::open(snap.db())?;
    conn.query_row("SELECT count(*) FROM packages", [], |r| r.get::<_, i64>(0))?;
    conn.close().map_err(|(_, e)| e)?;
    assert!(!snap.dir.path().join("alldocs.sqlite-wal").exists());
    check_index(&snap);
    check_refusals(&snap)
}

/// `index` is `_all_docs` exactly, in both formats; `| head` ends quietly.
fn check_index(snap: &Snap) {
    let (code, out, err) = snap.run(&["index"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (n, r) = l.split_once('\t').expect("name<TAB>rev");
            (n.to_string(), r.to_string())
        })
        .collect();
    assert_eq!(lines, snap.truth, "index lines are _all_docs");
    let (code, out, err) = snap.run(&["index", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let json: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().into(),
                v["rev"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(json, snap.truth, "index json is _all_docs");
    let bin = snap.bin.to_str().unwrap();
    let (code, out, err) = piped(&format!("{bin} index --db {} | head -1", snap.db()));
    assert_eq!((code, out.lines().count(), err.as_str()), (0, 1, ""));
}

/// `show` is byte-equal to the origin (scoped names too); `--select`; what is wrong.
async fn check_show(snap: &Snap, origin: &str) -> anyhow::Result<()> {
    let truth = &snap.truth;
    let http = reqwest::Client::new();
    let scoped = truth
        .iter()
        .find(|(n, _)| n.starts_with('@'))
        .expect("a scoped fixture");
    for name in [
        &scoped.0,
        &truth[0].0,
        &truth[truth.len() / 2].0,
        &truth[truth.len() - 1].0,
    ] {
        let served = http
            .get(format!("{origin}/{}", name.replace('/', "%2f")))
            .header("accept", "application/json")
            .send()
            .await?
            .bytes()
            .await?;
        let out = std::process::Command::new(&snap.bin)
            .args(["show", name, "--db", &snap.db()])
            .output()?;
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == served,
            "show {name} is byte-equal to the origin"
        );
    }
    let latest_of = |n: &str| -> Option<String> {
        let doc: Value = serde_json::from_slice(&snap.stored[n]).unwrap();
        doc["dist-tags"]["latest"].as_str().map(str::to_string)
    };
    let name = truth
        .iter()
        .map(|(n, _)| n)
        .find(|n| latest_of(n).is_some())
        .unwrap();
    let (code, out, err) = snap.run(&["show", name, "--select", "dist-tags.latest"]);
    let want = format!("{}\n", latest_of(name).unwrap());
    assert_eq!((code, out.as_str(), err.as_str()), (0, want.as_str(), ""));
    // A key with dots in it (a version) is matched whole; non-strings print as JSON.
    let edge = EDGE_NAMES[0];
    let (code, out, err) = snap.run(&["show", edge, "--select", "versions.1.0.0"]);
    let want = format!("{{\"name\":\"{edge}\",\"version\":\"1.0.0\"}}\n");
    assert_eq!((code, out.as_str(), err.as_str()), (0, want.as_str(), ""));
    let (code, out, err) = snap.run(&["show", "no-such-pkg-xyz"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("`no-such-pkg-xyz` is not in the snapshot"),
        "{err}"
    );
    assert!(err.contains("coordinator index | grep"), "{err}");
    let (code, out, err) = snap.run(&["show", name, "--select", "dist-tags.nope"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("no field `dist-tags.nope`"), "{err}");
    Ok(())
}

/// `export` parses back to the stored documents; `--versions` rows match them.
fn check_export(snap: &Snap) {
    let (code, out, err) = snap.run(&["export", "--format", "ndjson"]);
    assert_eq!(code, 0, "{err}");
    let exported: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), snap.truth.len());
    for (((name, _), doc), line) in snap.truth.iter().zip(&exported).zip(out.lines()) {
        let want: Value = serde_json::from_slice(&snap.stored[name]).unwrap();
        assert!(*doc == want, "export of {name} is the stored document");
        // The origin serves compact JSON and a newline: the line is its bytes, in order.
        let bytes = snap.stored[name].trim_ascii_end();
        assert!(line.as_bytes() == bytes, "{name} exported byte for byte");
    }
    let (code, out, err) = snap.run(&["export", "--versions"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: usize = exported
        .iter()
        .map(|d| d["versions"].as_object().map_or(0, |v| v.len()))
        .sum();
    assert!(want > 100, "the fixtures have many versions");
    assert_eq!(rows.len(), want, "one row per version");
    for row in &rows {
        let at = snap
            .truth
            .iter()
            .position(|(n, _)| *n == row["name"])
            .unwrap();
        let doc = &exported[at];
        let v = row["version"].as_str().unwrap();
        assert_eq!(row["published"], doc["time"][v]);
        assert_eq!(row["tarball"], doc["versions"][v]["dist"]["tarball"]);
        assert_eq!(row["integrity"], doc["versions"][v]["dist"]["integrity"]);
        assert_eq!(row["dependencies"], doc["versions"][v]["dependencies"]);
    }
    // A closed pipe (the 21 MB fixture overflows any pipe buffer) ends quietly.
    let bin = snap.bin.to_str().unwrap();
    let (code, out, err) = piped(&format!("{bin} export --db {} | head -c 100", snap.db()));
    assert_eq!((code, out.len(), err.as_str()), (0, 100, ""));
}

/// Names that are not stored, an object gone from the store, a newer checkpoint.
fn check_refusals(snap: &Snap) -> anyhow::Result<()> {
    let names: Vec<&String> = snap.truth.iter().map(|(n, _)| n).take(3).collect();
    let conn = rusqlite::Connection::open(snap.db())?;
    conn.execute(
        "UPDATE packages SET status = 'missing', last_error = 'HTTP 404' WHERE name = ?1",
        [names[0]],
    )?;
    conn.execute(
        "UPDATE packages SET status = 'failed', last_error = 'HTTP 500' WHERE name = ?1",
        [names[1]],
    )?;
    let (code, out, err) = snap.run(&["show", names[0]]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(
        err.contains("is missing") && err.contains("answered HTTP 404"),
        "{err}"
    );
    let (code, _, err) = snap.run(&["show", names[1]]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed to fetch (HTTP 500)") && err.contains("coordinator run"));
    let (_, out, _) = snap.run(&["export"]);
    assert_eq!(
        out.lines().count(),
        snap.truth.len() - 2,
        "export: stored packages only"
    );
    let (_, out, _) = snap.run(&["index"]);
    assert_eq!(
        out.lines().count(),
        snap.truth.len(),
        "index: every indexed name"
    );
    // The object holding the third name: its own file, or the pack it is in.
    let data = snap.dir.path().join("data");
    let gone = walk(&data).into_iter().find(|p| {
        std::fs::read(p).is_ok_and(|b| snap.stored.get(names[2]) == Some(&b))
            || (p.extension().is_some_and(|e| e == "pack")
                && unpack_file(p).iter().any(|(n, _)| n == names[2]))
    });
    std::fs::remove_file(gone.expect("the third name's object"))?;
    let (code, _, err) = snap.run(&["show", names[2]]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(names[2]) && err.contains("is not in the store"),
        "{err}"
    );
    conn.pragma_update(None, "user_version", 99)?;
    drop(conn);
    let (code, out, err) = snap.run(&["index"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("99"), "a newer checkpoint is refused: {err}");
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_missing_db_is_refused_and_not_created() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("nope.sqlite");
    for cmd in [vec!["index"], vec!["show", "react"], vec!["export"]] {
        let mut a = cmd.clone();
        a.extend(["--db", db.to_str().unwrap()]);
        let (code, out, err) = run(&coordinator(), &args(&a), &[])?;
        assert_eq!((code, out.as_str()), (2, ""), "{cmd:?}: {err}");
        assert!(err.contains("no checkpoint at --db"), "{err}");
        assert!(!db.exists(), "{cmd:?} created nothing");
    }
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
    Ok(())
}
