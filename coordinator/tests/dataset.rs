//! `coordinator export --format parquet` as a user meets it: a real snapshot of the 45
//! real fixtures (and a few made-up messy packuments) in pouchdb-server, exported, then
//! read by readers nobody here wrote: DuckDB and pyarrow (tests/py/parquet_check.py).
//! What they read is compared with the fixtures' own JSON, and the docs' example queries
//! run as written.

use std::{path::Path, time::Duration};

use alldocs_tests::{
    coord::job_args,
    fixtures::{self, Fixture},
    pouch::PouchServer,
    procs::{args, run},
    py::run_py,
};
use serde_json::{json, Value};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// Made-up packuments with the oddities real ones have, each documented in docs/dataset.md.
fn messy_docs() -> Vec<Value> {
    let readme = "a huge readme ".repeat(150_000);
    vec![
        json!({
            "_id": "messy-times", "name": "messy-times", "readme": readme, "description": 42,
            "license": ["MIT", {"type": "Apache-2.0"}], "repository": "user/messy",
            "dist-tags": {"latest": "2.0.0"},
            "time": {"created": "2020-01-01T00:00:00.000Z", "modified": "2025-06-01T00:00:00.000Z",
                     "1.0.0": "2020-01-01T00:00:00.000Z"},
            "versions": {
                "1.0.0": {"name": "messy-times", "version": "1.0.0", "dependencies": {"left-pad": "^1.3.0"},
                          "scripts": {"postinstall": "node x.js"}, "engines": {"node": ">=18"},
                          "_npmUser": {"name": "alice", "email": "a@registry.example"}},
                "2.0.0": {"name": "messy-times", "version": "2.0.0", "dependencies": "left-pad ms"}
            }
        }),
        json!({
            "_id": "messy-old", "name": "messy-old",
            "maintainers": ["Bob <bob@registry.example>"],
            "time": {"modified": "last tuesday", "0.1.0": "2011-01-01T00:00:00.000Z",
                     "0.2.0": "2011-02-01T00:00:00.000Z"},
            "versions": {
                "0.1.0": "just a string",
                "0.2.0": {"version": "0.2.0", "dependencies": ["a", "b"], "devDependencies": {"c": 1},
                          "license": {"type": "ISC"}, "engines": ["node"], "deprecated": true,
                          "dist": {"unpackedSize": "big", "fileCount": 3}}
            }
        }),
        json!({"_id": "messy-versions", "name": "messy-versions", "versions": "nope"}),
    ]
}

/// What DuckDB and pyarrow read from `dir`, with `queries` run by DuckDB.
fn read_back(dir: &Path, queries: &[String]) -> anyhow::Result<Value> {
    let file = dir.join("queries.json");
    std::fs::write(&file, serde_json::to_vec(queries)?)?;
    let (d, f) = (dir.display().to_string(), file.display().to_string());
    let out = run_py(
        Path::new("parquet_check.py"),
        &[&d, &f],
        Duration::from_secs(300),
    )?;
    std::fs::remove_file(&file)?;
    Ok(serde_json::from_str(&out)?)
}

fn export(db: &str, extra: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut a = vec![
        "export",
        "--db",
        db,
        "--format",
        "parquet",
        "--progress",
        "none",
    ];
    a.extend_from_slice(extra);
    run(&coordinator(), &args(&a), &[])
}

fn fixture<'a>(all: &'a [Fixture], name: &str) -> &'a Value {
    &all.iter().find(|f| f.name == name).expect(name).doc
}

fn versions_of(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["versions"].as_object().expect("versions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_and_pyarrow_read_the_fixtures_as_exported() -> anyhow::Result<()> {
    let peer = PouchServer::start().await?;
    let all = fixtures::packuments()?;
    let mut docs = fixtures::as_couch_docs(&all);
    docs.extend(messy_docs());
    peer.load(docs).await?;
    let dir = tempfile::tempdir()?;
    let (code, out, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), &peer.db_url(), &["--page-size", "7"]),
        &[],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    let db = dir.path().join("alldocs.sqlite").display().to_string();
    let tables = dir.path().join("tables");
    let (code, summary, err) = export(&db, &["--out", tables.to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    let packages = all.len() + 3;
    assert!(
        summary.starts_with(&format!("exported {packages} packages")),
        "{summary}"
    );
    assert!(summary.contains("dependencies_list 15"), "{summary}");
    check_real(&tables, &all)?;
    check_messy(&tables)?;
    check_doc_queries(&tables, &all)?;
    check_since_and_refusals(&db, dir.path())
}

/// Row counts and known values of the real fixtures, as both readers see them.
fn check_real(tables: &Path, all: &[Fixture]) -> anyhow::Result<()> {
    let express = fixture(all, "express");
    let latest = express["dist-tags"]["latest"].as_str().unwrap();
    let underscore = fixture(all, "underscore");
    let listed: Vec<&Value> = versions_of(underscore)
        .values()
        .filter(|m| m["dependencies"].is_array())
        .collect();
    let queries = vec![
        "SELECT count(*) FROM 'packages.parquet'".to_string(),
        "SELECT count(*) FROM 'versions.parquet'".into(),
        "SELECT name, versions, latest FROM 'packages.parquet' WHERE name NOT LIKE 'messy%' ORDER BY name".into(),
        format!("SELECT range FROM 'dependencies.parquet' WHERE name = 'express' AND version = '{latest}' AND kind = 'dependencies' AND dependency = 'accepts'"),
        "SELECT integrity, tarball, epoch_ms(published) FROM 'versions.parquet' WHERE name = 'left-pad' AND version = '1.3.0'".into(),
        "SELECT count(*) FROM 'problems.parquet' WHERE name = 'underscore' AND kind = 'dependencies_list'".into(),
        "SELECT count(*) FROM 'dependencies.parquet' WHERE name = 'underscore' AND kind = 'dependencies' AND range IS NULL".into(),
        "SELECT version, license FROM 'versions.parquet' WHERE name = 'semver' ORDER BY version".into(),
        "SELECT count(*) FILTER (WHERE install_scripts) FROM 'versions.parquet' WHERE name = 'esbuild'".into(),
        "SELECT count(*) FROM 'dependencies.parquet' WHERE name = 'express' AND kind = 'dependencies'".into(),
        "SELECT sum(versions) FROM 'packages.parquet'".into(),
    ];
    let seen = read_back(tables, &queries)?;
    let (arrow, duck) = (&seen["pyarrow"], &seen["duckdb"]);
    let versions: usize = all.iter().map(|f| versions_of(&f.doc).len()).sum::<usize>() + 4;
    assert_eq!(duck[0], json!([[all.len() + 3]]));
    assert_eq!(duck[1], json!([[versions]]));
    assert_eq!(duck[10], json!([[versions]]));
    for (file, rows) in [("packages", all.len() + 3), ("versions", versions)] {
        let t = &arrow[format!("{file}.parquet")];
        assert_eq!(
            (&t["rows"], &t["read_rows"]),
            (&json!(rows), &json!(rows)),
            "{file}"
        );
    }
    for t in arrow.as_object().unwrap().values() {
        assert_eq!(t["codecs"], json!(["ZSTD"]), "{t}");
        assert_eq!(t["rows"], t["read_rows"], "{t}");
    }
    assert_eq!(arrow.as_object().unwrap().len(), 6, "{arrow}");
    let columns = &arrow["packages.parquet"]["columns"];
    assert_eq!(columns[2], json!(["created", "timestamp[ms, tz=UTC]"]));
    assert_eq!(columns[10], json!(["maintainers", "list<item: string>"]));
    let by_name: Vec<Value> = all
        .iter()
        .map(|f| {
            json!([
                f.name,
                versions_of(&f.doc).len(),
                f.doc["dist-tags"]["latest"]
            ])
        })
        .collect();
    assert_eq!(duck[2], json!(by_name));
    let accepts = &express["versions"][latest]["dependencies"]["accepts"];
    assert_eq!(duck[3], json!([[accepts]]));
    let left_pad = fixture(all, "left-pad");
    let v = &left_pad["versions"]["1.3.0"]["dist"];
    let time = left_pad["time"]["1.3.0"].as_str().unwrap();
    let published = alldocs_coordinator::cli::rows::instant_ms(time).unwrap();
    assert_eq!(duck[4], json!([[v["integrity"], v["tarball"], published]]));
    assert_eq!(duck[5], json!([[listed.len()]]));
    let listed_names: usize = listed
        .iter()
        .map(|d| d["dependencies"].as_array().unwrap().len())
        .sum();
    assert_eq!(duck[6], json!([[listed_names]]));
    // semver's licences: strings as they are, `{"type": …}` objects as their type.
    let semver: Vec<Value> = versions_of(fixture(all, "semver"))
        .iter()
        .map(|(v, m)| match &m["license"] {
            Value::Object(o) => json!([v, o["type"]]),
            other => json!([v, other]),
        })
        .collect();
    assert!(semver.len() > 10);
    let mut got = duck[7].as_array().unwrap().clone();
    got.sort_by_key(|r| r[0].as_str().unwrap().to_string());
    let mut want = semver.clone();
    want.sort_by_key(|r| r[0].as_str().unwrap().to_string());
    assert_eq!(got, want);
    let scripts = versions_of(fixture(all, "esbuild"))
        .values()
        .filter(|m| {
            ["preinstall", "install", "postinstall"]
                .iter()
                .any(|k| !m["scripts"][k].is_null())
                || m["hasInstallScript"] == json!(true)
        })
        .count();
    assert!(scripts > 0);
    assert_eq!(duck[8], json!([[scripts]]));
    let express_deps: usize = versions_of(express)
        .values()
        .map(|m| m["dependencies"].as_object().map_or(0, |d| d.len()))
        .sum();
    assert_eq!(duck[9], json!([[express_deps]]));
    Ok(())
}

/// The made-up oddities land as docs/dataset.md says.
fn check_messy(tables: &Path) -> anyhow::Result<()> {
    let queries = vec![
        "SELECT version, published IS NULL, install_scripts, engines ->> 'node', npm_user FROM 'versions.parquet' WHERE name = 'messy-times' ORDER BY version".to_string(),
        "SELECT license, repository, description, latest, epoch_ms(modified), bytes > 2000000 FROM 'packages.parquet' WHERE name = 'messy-times'".into(),
        "SELECT count(*) FROM 'dependencies.parquet' WHERE name = 'messy-times' AND version = '2.0.0'".into(),
        "SELECT kind, dependency, range FROM 'dependencies.parquet' WHERE name = 'messy-old' ORDER BY kind, dependency".into(),
        "SELECT version, license, deprecated, engines, unpacked_size, file_count FROM 'versions.parquet' WHERE name = 'messy-old' ORDER BY version".into(),
        "SELECT versions, modified, maintainers FROM 'packages.parquet' WHERE name IN ('messy-old', 'messy-versions') ORDER BY name".into(),
        "SELECT maintainer, email FROM 'maintainers.parquet' WHERE name = 'messy-old'".into(),
        "SELECT name, coalesce(version, ''), field, kind FROM 'problems.parquet' WHERE name LIKE 'messy%' ORDER BY ALL".into(),
    ];
    let duck = &read_back(tables, &queries)?["duckdb"];
    assert_eq!(
        duck[0],
        json!([
            ["1.0.0", false, true, ">=18", "alice"],
            ["2.0.0", true, false, null, null]
        ])
    );
    assert_eq!(
        duck[1],
        json!([[
            "MIT OR Apache-2.0",
            "user/messy",
            null,
            "2.0.0",
            1_748_736_000_000u64,
            true
        ]])
    );
    assert_eq!(duck[2], json!([[0]]));
    assert_eq!(
        duck[3],
        json!([
            ["dependencies", "a", null],
            ["dependencies", "b", null],
            ["devDependencies", "c", "1"]
        ])
    );
    assert_eq!(
        duck[4],
        json!([
            ["0.1.0", null, null, null, null, null],
            ["0.2.0", "ISC", "true", null, null, 3]
        ])
    );
    assert_eq!(duck[5], json!([[2, null, ["Bob"]], [0, null, []]]));
    assert_eq!(duck[6], json!([["Bob", "bob@registry.example"]]));
    let problems = json!([
        ["messy-old", "", "maintainers", "maintainer_string"],
        ["messy-old", "", "time.modified", "bad_time"],
        ["messy-old", "0.1.0", "", "version_not_an_object"],
        ["messy-old", "0.2.0", "dependencies", "dependencies_list"],
        ["messy-old", "0.2.0", "deprecated", "wrong_type"],
        [
            "messy-old",
            "0.2.0",
            "devDependencies.c",
            "range_not_string"
        ],
        ["messy-old", "0.2.0", "dist.unpackedSize", "wrong_type"],
        ["messy-old", "0.2.0", "engines", "wrong_type"],
        ["messy-old", "0.2.0", "license", "license_object"],
        ["messy-times", "", "description", "wrong_type"],
        ["messy-times", "", "license", "license_list"],
        ["messy-times", "", "repository", "repository_string"],
        [
            "messy-times",
            "2.0.0",
            "dependencies",
            "dependencies_string"
        ],
        ["messy-times", "2.0.0", "time", "no_time"],
        ["messy-versions", "", "versions", "wrong_type"]
    ]);
    assert_eq!(duck[7], problems);
    Ok(())
}

/// The three example queries of docs/dataset.md run as written (their `snapshot/` being
/// the export's directory) and answer from the fixtures.
fn check_doc_queries(tables: &Path, all: &[Fixture]) -> anyhow::Result<()> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dataset.md"))?;
    let queries: Vec<String> = doc
        .split("```sql\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().replace("'snapshot/", "'"))
        .collect();
    assert_eq!(queries.len(), 3, "three example queries");
    let duck = &read_back(tables, &queries)?["duckdb"];
    let most = all
        .iter()
        .max_by_key(|f| versions_of(&f.doc).len())
        .unwrap();
    assert_eq!(duck[0][0][0], json!(most.name), "{}", duck[0]);
    assert_eq!(duck[0][0][1], json!(versions_of(&most.doc).len()));
    assert_eq!(duck[1].as_array().unwrap().len(), 10, "{}", duck[1]);
    let installs = duck[2].as_array().unwrap();
    assert!(
        installs.iter().any(|r| r[0] == json!("esbuild")),
        "{}",
        duck[2]
    );
    Ok(())
}

/// `--since` keeps the packages modified since; bad input is refused, nothing written.
fn check_since_and_refusals(db: &str, dir: &Path) -> anyhow::Result<()> {
    let recent = dir.join("recent");
    let (code, summary, err) = export(
        db,
        &["--out", recent.to_str().unwrap(), "--since", "2025-01-01"],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(summary.starts_with("exported 1 packages"), "{summary}");
    let duck = &read_back(
        &recent,
        &["SELECT name FROM 'packages.parquet'".to_string()],
    )?["duckdb"];
    assert_eq!(duck[0], json!([["messy-times"]]));
    let none = dir.join("none");
    let out = none.to_str().unwrap();
    for (extra, says) in [
        (&[][..], "give --out DIR"),
        (
            &["--out", out, "--since", "yesterday"][..],
            "is not an instant",
        ),
        (
            &["--out", out, "--versions"][..],
            "--versions is an option of --format ndjson",
        ),
    ] {
        let (code, _, err) = export(db, extra)?;
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    assert!(!none.exists(), "nothing written");
    Ok(())
}
