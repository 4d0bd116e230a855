//! The checkpoint's own tests: leases and fencing, events, counts, migrations, and the plans
//! of its hot statements.

use alldocs_proto::v1::{
    fetch_event::Event, IndexDone, IndexRow, IndexRows, ItemFailed, PackumentStored,
};

use super::{leases::*, progress::*, runs::*, *};
use crate::plan::Partition;

fn identity(store: &str) -> RunIdentity {
    RunIdentity {
        replicate_origin: "http://127.0.0.1:1/db".into(),
        registry: "http://127.0.0.1:1/db".into(),
        store: store.into(),
        pivots: vec!["m".into()],
        accept: "full".into(),
        layout: None,
    }
}

fn plan() -> Vec<Partition> {
    crate::plan::partitions(&["m".to_string()])
}

fn rows(partition: &str, rows: &[(&str, &str)]) -> Event {
    Event::IndexRows(IndexRows {
        partition: partition.into(),
        rows: rows
            .iter()
            .map(|(id, rev)| IndexRow {
                id: id.to_string(),
                rev: rev.to_string(),
            })
            .collect(),
    })
}

fn done(partition: &str, n: u64) -> Event {
    Event::IndexDone(IndexDone {
        partition: partition.into(),
        rows: n,
        ..Default::default()
    })
}

fn stored(name: &str, rev: &str) -> Event {
    Event::Stored(PackumentStored {
        name: name.into(),
        rev: rev.into(),
        uri: format!("memory://x/packuments/{name}.json"),
        bytes: 10,
        ..Default::default()
    })
}

/// Indexes both partitions of the plan with the given rows (all in the first).
async fn index(ck: &Checkpoint, names: &[(&'static str, &'static str)]) {
    let names = names.to_vec();
    ck.call(move |db| {
        for _ in 0..2 {
            let token = db.next_token()?;
            let p = db.lease_partition(token)?.expect("a pending partition");
            let these: Vec<_> = names
                .iter()
                .copied()
                .filter(|(n, _)| {
                    alldocs_fetcher::store::keys::in_range(n, p.start.as_deref(), p.end.as_deref())
                })
                .collect();
            db.apply(
                token,
                &[rows(&p.name, &these), done(&p.name, these.len() as u64)],
            )?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn index_rows_over_the_bounds_fail_the_attempt_and_are_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 2).unwrap();
    let long_id = "a".repeat(215);
    let long_rev = format!("1-{}", "f".repeat(255));
    let (first, second, packages) = ck
        .call(move |db| {
            let mut states = Vec::new();
            for bad in [(long_id.as_str(), "1-x"), ("ab", long_rev.as_str())] {
                let token = db.next_token()?;
                let p = db.lease_partition(token)?.expect("the first partition");
                assert_eq!(p.name, "+m");
                db.apply(
                    token,
                    &[rows(&p.name, &[("aa", "1-a"), bad]), done(&p.name, 2)],
                )?;
                states.push(db.conn.query_row(
                    "SELECT status, attempts, last_error FROM partitions WHERE name = '+m'",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    },
                )?);
            }
            let packages: i64 = db
                .conn
                .query_row("SELECT COUNT(*) FROM packages", [], |r| r.get(0))?;
            Ok((states[0].clone(), states[1].clone(), packages))
        })
        .await
        .unwrap();
    assert_eq!(
        first,
        (
            "pending".to_string(),
            1,
            "protocol error: the fetcher sent an index row (#2 of a batch) whose id is 215 \
             bytes, over 214; none of the batch was kept"
                .to_string()
        ),
        "the attempt is counted, the IndexDone after it ignored"
    );
    assert_eq!((second.0.as_str(), second.1), ("failed", 2));
    assert!(
        second.2.contains("whose rev is 257 bytes, over 256"),
        "{}",
        second.2
    );
    assert_eq!(packages, 0, "no row of a refused batch is stored");
}

#[tokio::test]
async fn events_of_a_superseded_lease_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
    index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
    let counts = ck
        .call(|db| {
            let old = db.next_token()?;
            assert_eq!(db.lease_packuments(old, 10)?.len(), 2);
            // The old lease's stream broke: its work goes back and is leased anew.
            assert_eq!(db.end_lease(old, "stream broke", true)?, 2);
            let new = db.next_token()?;
            assert_eq!(db.lease_packuments(new, 10)?.len(), 2);
            // The stale fetcher's late events are ignored...
            assert_eq!(db.apply(old, &[stored("a", "1-a"), stored("b", "1-b")])?, 0);
            // ...the current attempt's are not.
            assert_eq!(db.apply(new, &[stored("a", "1-a")])?, 1);
            db.counts_now()
        })
        .await
        .unwrap();
    assert_eq!((counts.packuments_done, counts.packuments_leased), (1, 1));
}

#[tokio::test]
async fn unfinished_work_fails_after_the_attempt_limit_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 2).unwrap();
    index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
    let (counts, failures) = ck
        .call(|db| {
            for _ in 0..2 {
                let t = db.next_token()?;
                db.lease_packuments(t, 1)?; // "a" first
                db.end_lease(t, "lease deadline passed", true)?;
            }
            // A non-retryable failure fails at once.
            let t = db.next_token()?;
            assert_eq!(
                db.lease_packuments(t, 10)?,
                vec![("b".to_string(), "1-b".to_string())]
            );
            db.apply(
                t,
                &[Event::Failed(ItemFailed {
                    name: "b".into(),
                    reason: "HTTP 401".into(),
                    retryable: false,
                    http_status: 401,
                })],
            )?;
            Ok((db.counts_now()?, db.list_failures(100, None)?))
        })
        .await
        .unwrap();
    assert!(counts.is_done());
    assert_eq!(counts.packuments_failed, 2);
    let reasons: Vec<_> = failures
        .failures
        .iter()
        .map(|f| (f.name.as_str(), f.reason.as_str(), f.attempts))
        .collect();
    assert_eq!(
        reasons,
        vec![("a", "lease deadline passed", 2), ("b", "HTTP 401", 1)]
    );
}

#[tokio::test]
async fn a_finished_run_is_followed_by_an_incremental_one_and_an_unfinished_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    assert_eq!((opened.run, opened.resumed), (1, false));
    index(&ck, &[("a", "1-a"), ("b", "1-b")]).await;
    ck.call(|db| {
        let t = db.next_token()?;
        db.lease_packuments(t, 10)?;
        db.apply(t, &[stored("a", "1-a"), stored("b", "1-b")])?;
        db.end_lease(t, "finished", true)?;
        assert!(!db.has_open_work(Mode::Full)?);
        db.set_run_complete(true)
    })
    .await
    .unwrap();
    drop(ck);

    // A new run: "a" is unchanged, "b" has a new revision, "c" is new.
    let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    assert_eq!((opened.run, opened.resumed), (2, false));
    index(&ck, &[("a", "1-a"), ("b", "2-b"), ("c", "1-c")]).await;
    let pending = ck
        .call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)
        })
        .await
        .unwrap();
    assert_eq!(
        pending,
        vec![
            ("b".to_string(), "2-b".to_string()),
            ("c".to_string(), "1-c".to_string())
        ]
    );
    drop(ck);

    // Killed mid-run: the next start resumes run 2 and hands the leased work out again.
    let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    assert_eq!((opened.run, opened.resumed), (2, true));
    let counts = ck.call(|db| db.counts_now()).await.unwrap();
    assert_eq!(
        (
            counts.packuments_done,
            counts.packuments_pending,
            counts.partitions_done
        ),
        (1, 2, 2)
    );
}

#[tokio::test]
async fn documents_whose_rev_lags_the_index_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
    index(&ck, &[("a", "2-new"), ("b", "1-b")]).await;
    let counts = ck
        .call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)?;
            let mut lagging = stored("a", "2-new");
            if let Event::Stored(s) = &mut lagging {
                s.doc_rev = "1-old".into(); // the registry still served the previous revision
            }
            let mut current = stored("b", "1-b");
            if let Event::Stored(s) = &mut current {
                s.doc_rev = "1-b".into();
            }
            db.apply(t, &[lagging, current])?;
            db.counts_now()
        })
        .await
        .unwrap();
    assert_eq!(
        (counts.packuments_done, counts.packuments_rev_mismatch),
        (2, 1)
    );
}

#[test]
fn a_checkpoint_of_another_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    drop(Checkpoint::open(&path, &identity("a"), &plan(), 3).unwrap());
    let Err(err) = Checkpoint::open(&path, &identity("b"), &plan(), 3) else {
        panic!("a different --store must be refused");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("--store `a`") && msg.contains("`b`") && msg.contains("new --db"),
        "{msg}"
    );
}

#[test]
fn a_first_layout_checkpoint_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    {
        // The first layout, as coordinators before schema versions wrote it.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE partitions (name TEXT PRIMARY KEY, ord INTEGER NOT NULL, start_key TEXT,
                 end_key TEXT, status TEXT NOT NULL DEFAULT 'pending', rows INTEGER NOT NULL DEFAULT 0,
                 uri TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, lease_token INTEGER);
             CREATE TABLE packages (name TEXT PRIMARY KEY, partition TEXT NOT NULL,
                 indexed_rev TEXT NOT NULL, stored_rev TEXT, doc_rev TEXT, status TEXT NOT NULL,
                 uri TEXT, bytes INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
                 last_error TEXT, lease_token INTEGER, seen_run INTEGER NOT NULL);
             CREATE TABLE leases (token INTEGER PRIMARY KEY, kind TEXT NOT NULL, items INTEGER NOT NULL,
                 fetcher TEXT NOT NULL, started_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
                 ended_ms INTEGER, outcome TEXT);
             INSERT INTO meta VALUES ('--registry', 'http://user:hunter2@127.0.0.1:1/db'),
                 ('run', '1'), ('run_complete', '1');
             INSERT INTO packages (name, partition, indexed_rev, stored_rev, doc_rev, status, seen_run)
                 VALUES ('lagging', '+m', '2-new', '2-new', '1-old', 'stored', 1),
                        ('current', '+m', '1-c', '1-c', '1-c', 'stored', 1),
                        ('gone', '+m', '1-g', '1-g', NULL, 'missing', 1);",
        )
        .unwrap();
    }
    let mut id = identity("s");
    id.registry = "http://user:hunter2@127.0.0.1:1/db".into();
    let (ck, opened) = Checkpoint::open(&path, &id, &plan(), 3).unwrap();
    assert_eq!((opened.run, opened.resumed), (2, false));
    drop(ck);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::checkpoint::schema::VERSION);
    let stored: Vec<(String, Option<String>)> = conn
        .prepare("SELECT name, stored_rev FROM packages ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        stored,
        vec![
            ("current".to_string(), Some("1-c".to_string())),
            ("gone".to_string(), None),
            ("lagging".to_string(), Some("1-old".to_string())),
        ],
        "the revision actually stored; none for a missing name"
    );
    let registry: String = conn
        .query_row("SELECT value FROM meta WHERE key = '--registry'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(!registry.contains("hunter2"), "{registry}");
}

#[tokio::test]
async fn a_stale_document_or_a_brief_404_is_fetched_again_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    let names = [("a", "2-new"), ("b", "1-b"), ("c", "1-c")];
    index(&ck, &names).await;
    ck.call(|db| {
        let t = db.next_token()?;
        db.lease_packuments(t, 10)?;
        let mut stale = stored("a", "2-new");
        if let Event::Stored(s) = &mut stale {
            s.doc_rev = "1-old".into(); // the registry still served the previous revision
        }
        let missing = Event::Missing(alldocs_proto::v1::PackumentMissing {
            name: "b".into(),
            http_status: 404,
        });
        db.apply(t, &[stale, missing, stored("c", "1-c")])?;
        db.end_lease(t, "finished", true)?;
        db.set_run_complete(true)
    })
    .await
    .unwrap();
    drop(ck);
    // The index is unchanged; only what was not really stored is asked for again.
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    index(&ck, &names).await;
    let again = ck
        .call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)
        })
        .await
        .unwrap();
    let again: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(again, vec!["a", "b"]);
}

#[tokio::test]
async fn an_oversized_revision_from_a_fetcher_is_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
    index(&ck, &[("a", "1-a")]).await;
    let (stored, row) = ck
        .call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 10)?;
            let mut huge = stored("a", "1-a");
            if let Event::Stored(s) = &mut huge {
                s.doc_rev = "9".repeat(300);
            }
            let n = db.apply(t, &[huge])?;
            let row: (String, i64, Option<String>, String) = db.conn.query_row(
                "SELECT status, attempts, doc_rev, last_error FROM packages WHERE name = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            Ok((n, row))
        })
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!((row.0.as_str(), row.1, row.2), ("pending", 1, None));
    assert!(row.3.contains("300 bytes, over 256"), "{}", row.3);
}

#[tokio::test]
async fn events_arriving_together_are_committed_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, _) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity("s"), &plan(), 3).unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
    let indexed: Vec<(&'static str, &'static str)> =
        names.iter().map(|n| (&*n.clone().leak(), "1-x")).collect();
    index(&ck, &indexed).await;
    let token = ck
        .call(|db| {
            let t = db.next_token()?;
            assert_eq!(db.lease_packuments(t, 100)?.len(), 50);
            Ok(t)
        })
        .await
        .unwrap();
    let before = ck.call(|db| Ok(db.commits())).await.unwrap();
    // The checkpoint thread is held in a job while 50 leases' events arrive...
    let (release, held) = std::sync::mpsc::channel::<()>();
    let mut blocker = Box::pin(ck.call(move |_| {
        held.recv().unwrap();
        Ok(())
    }));
    assert!(futures::poll!(&mut blocker).is_pending());
    let mut events = Box::pin(futures::future::join_all(names.iter().map(|n| {
        let event = stored(n, "1-x");
        ck.call_grouped(move |db| db.apply(token, &[event]))
    })));
    assert!(futures::poll!(&mut events).is_pending());
    release.send(()).unwrap();
    blocker.await.unwrap();
    let stored: u64 = events.await.into_iter().map(Result::unwrap).sum();
    assert_eq!(stored, 50);
    let (after, counts) = ck
        .call(|db| Ok((db.commits(), db.counts_now()?)))
        .await
        .unwrap();
    // ...and all of them are committed with it: one WAL sync, not 51.
    assert_eq!(
        after - before,
        1 + 1,
        "the held job's transaction and the count's"
    );
    assert_eq!(counts.packuments_done, 50);
}

#[tokio::test]
async fn a_lone_event_is_committed_within_the_group_commit_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    index(&ck, &[("a", "1-a")]).await;
    let token = ck
        .call(|db| {
            let t = db.next_token()?;
            db.lease_packuments(t, 1)?;
            Ok(t)
        })
        .await
        .unwrap();
    // Nothing else arrives: the transaction still commits, and then it is on disk for
    // any other reader.
    let stored = tokio::time::timeout(
        Duration::from_secs(5),
        ck.call_grouped(move |db| db.apply(token, &[stored("a", "1-a")])),
    )
    .await
    .expect("a lone event does not wait for company")
    .unwrap();
    assert_eq!(stored, 1);
    let status: String = Connection::open(&path)
        .unwrap()
        .query_row("SELECT status FROM packages WHERE name = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(status, "stored");
}

#[test]
fn the_hot_queries_of_a_large_checkpoint_use_the_state_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    drop(Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap());
    let conn = Connection::open(&path).unwrap();
    let plan_of = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("; ")
    };
    // The statements the checkpoint runs, so that one of millions of stored packages
    // never makes a lease, its end or a question about the run scan them all.
    let cases = [
        (LEASE_PACKUMENTS.to_string(), "packages_pending"),
        (give_back_sql("packages", false), "packages_leased"),
        (
            give_back_sql("packages", true),
            "sqlite_autoindex_packages_1",
        ),
        (UNLEASE_PACKAGES.to_string(), "packages_leased"),
        (OPEN_WORK.to_string(), "packages_pending"),
        (OPEN_WORK.to_string(), "packages_leased"),
        (FAILURES_TOTAL.to_string(), "packages_failed"),
    ];
    for (sql, index) in cases {
        let plan = plan_of(&sql);
        assert!(plan.contains(index), "{sql}: {plan}");
        let full_scan = plan
            .split("; ")
            .any(|step| step.starts_with("SCAN packages") && !step.contains(" USING "));
        assert!(!full_scan, "{sql}: {plan}");
    }
    // The counts read every package once, holding nothing but the sums.
    let counts = plan_of(COUNT_PACKAGES);
    assert!(!counts.contains("TEMP B-TREE"), "{counts}");
    // The walks of `export` and `show` go in key order without sorting.
    for walk in [STORED_NAMES, STORED_LOCATIONS, STORED_FILES] {
        let export = plan_of(walk);
        assert!(!export.contains("TEMP B-TREE"), "{export}");
    }
}

#[test]
fn a_version_4_checkpoint_with_work_in_flight_is_migrated_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    drop(ck);
    {
        // Back to version 4's indexes, mid-run: one package stored, one leased, one
        // failed, one pending.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX packages_pending; DROP INDEX packages_leased; DROP INDEX packages_failed;
             CREATE INDEX packages_by_status ON packages(status, partition, name);
             PRAGMA user_version = 4;
             UPDATE partitions SET status = 'done';
             INSERT INTO packages (name, partition, indexed_rev, stored_rev, status, seen_run, lease_token, attempts)
                 VALUES ('s', '+m', '1-s', '1-s', 'stored', 1, NULL, 0),
                        ('l', '+m', '1-l', NULL, 'leased', 1, 4, 0),
                        ('f', '+m', '1-f', NULL, 'failed', 1, NULL, 3),
                        ('p', '+m', '1-p', NULL, 'pending', 1, NULL, 0);",
        )
        .unwrap();
    }
    let (ck, opened) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    assert!(opened.resumed, "the unfinished run carries on");
    let conn = Connection::open(&path).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'packages' AND sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        indexes,
        [
            "packages_by_partition_run",
            "packages_failed",
            "packages_leased",
            "packages_pending"
        ]
    );
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::checkpoint::schema::VERSION);
    let (leased, counts, failures) = futures::executor::block_on(ck.call(|db| {
        let t = db.next_token()?;
        let mut leased = db.lease_packuments(t, 10)?;
        leased.sort();
        Ok((leased, db.counts_now()?, db.list_failures(10, None)?))
    }))
    .unwrap();
    // The lease the crash left open went back to pending with the pending one.
    assert_eq!(
        leased,
        [
            ("l".to_string(), "1-l".to_string()),
            ("p".to_string(), "1-p".to_string())
        ]
    );
    assert_eq!(
        (
            counts.packuments_done,
            counts.packuments_failed,
            counts.packuments_leased
        ),
        (1, 1, 2)
    );
    assert_eq!(failures.failures.len(), 1);
    assert_eq!(failures.failures[0].name, "f");
}

#[test]
fn a_version_5_checkpoint_becomes_a_files_snapshot_whose_stored_rows_have_no_digest_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    drop(ck);
    {
        // Back to version 5: no pack columns, no packs table, no layout; one stored row.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE packages DROP COLUMN pack; ALTER TABLE packages DROP COLUMN pack_offset;
             ALTER TABLE packages DROP COLUMN pack_length; ALTER TABLE packages DROP COLUMN sha256;
             DROP TABLE packs; DELETE FROM meta WHERE key IN ('layout', 'snapshot_id');
             PRAGMA user_version = 5;
             INSERT INTO packages (name, partition, indexed_rev, stored_rev, status, uri, bytes, seen_run)
                 VALUES ('old', '+m', '1-o', '1-o', 'stored', 'file:///s/packuments/old.json', 9, 1);",
        )
        .unwrap();
    }
    let packs = RunIdentity {
        layout: Some(Layout::Packs),
        ..identity("s")
    };
    let refused = Checkpoint::open(&path, &packs, &plan(), 3).err().unwrap();
    assert!(
        matches!(
            refused,
            CheckpointError::LayoutMismatch {
                recorded: "files",
                given: "packs",
                ..
            }
        ),
        "{refused}"
    );
    let (ck, _) = Checkpoint::open(&path, &identity("s"), &plan(), 3).unwrap();
    let (layout, counts) =
        futures::executor::block_on(ck.call(|db| Ok((db.layout()?.0, db.counts_now()?)))).unwrap();
    assert_eq!(
        layout,
        Layout::Files,
        "a migrated checkpoint keeps its files"
    );
    assert_eq!(counts.packuments_done, 1);
    assert_eq!(
        counts.packuments_without_digest, 1,
        "and says which have no digest"
    );
}
