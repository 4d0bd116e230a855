//! `coordinator serve --follow` against pouchdb-server's real `_changes` feed, through a
//! proxy that counts every packument request: documents published, updated and deleted
//! while following are stored, refetched byte-exact and marked; a follower killed in the
//! middle of the feed and started again misses nothing and fetches nothing twice.

use std::{collections::BTreeMap, path::Path};

use alldocs_proto::v1::{Progress, RunState};
use alldocs_tests::{
    coord::{checkpoint_statuses, job_args, stored_files, wait_until},
    fixtures::tiny_doc,
    pouch::PouchServer,
    procs::{args, run, Listening},
    proxy::CountingProxy,
};
use serde_json::{json, Value};

fn coordinator() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

fn seq_of(p: &Progress) -> u64 {
    p.feed_seq.parse().unwrap_or(0)
}

fn following(p: &Progress) -> bool {
    p.state == RunState::Following as i32
}

/// The database's `update_seq` now.
async fn head(peer: &PouchServer) -> anyhow::Result<u64> {
    let info: Value = reqwest::get(format!("{}/", peer.db_url()))
        .await?
        .json()
        .await?;
    Ok(info["update_seq"].as_u64().expect("a numeric update_seq"))
}

/// The document as the database serves it now.
async fn served(peer: &PouchServer, name: &str) -> anyhow::Result<Vec<u8>> {
    Ok(reqwest::get(format!("{}/{name}", peer.db_url()))
        .await?
        .bytes()
        .await?
        .to_vec())
}

/// A new revision of `name` (its `_rev` now is `rev`).
fn updated(name: &str, rev: &str, version: &str) -> Value {
    let mut doc = tiny_doc(name);
    doc["_rev"] = json!(rev);
    doc["dist-tags"]["latest"] = json!(version);
    doc["versions"][version] = json!({ "name": name, "version": version });
    doc
}

fn deleted(name: &str, rev: &str) -> Value {
    json!({ "_id": name, "_rev": rev, "_deleted": true })
}

/// Every live document is stored exactly as the database serves it now.
async fn assert_current(peer: &PouchServer, data: &Path, names: &[String]) -> anyhow::Result<()> {
    let stored = stored_files(data);
    for name in names {
        let want = served(peer, name).await?;
        assert_eq!(
            stored
                .get(name)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            Some(String::from_utf8_lossy(&want).into_owned()),
            "{name} is stored as served now"
        );
    }
    Ok(())
}

/// One follower's world: the peer, the counting proxy in front of it, the follower's
/// directory, and the revision of each document now.
struct World {
    peer: PouchServer,
    proxy: CountingProxy,
    dir: tempfile::TempDir,
    revs: BTreeMap<String, String>,
}

impl World {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("alldocs.sqlite")
    }

    /// `serve --follow`: two changes per feed request at 10 requests per second, so
    /// catching up on 41 changes takes about two seconds, long enough to be stopped in the
    /// middle.
    fn serve(&self, extra: &[&str]) -> anyhow::Result<Listening> {
        let mut a = vec![
            "--follow",
            "--follow-interval",
            "100ms",
            "--page-size",
            "2",
            "--pivots",
            "pkg-1",
            "--rate-limit",
            "10",
            "--max-in-flight",
            "1",
        ];
        a.extend_from_slice(extra);
        let argv = job_args("serve", self.dir.path(), &self.proxy.url(), &a);
        Listening::start(&coordinator(), &argv, &[])
    }

    async fn load(&mut self, docs: Vec<Value>) -> anyhow::Result<()> {
        self.revs.extend(self.peer.load(docs).await?);
        Ok(())
    }

    /// Published, updated and deleted while following: returns the live names.
    async fn live_changes(
        &mut self,
        serve: &Listening,
        first: &[String],
    ) -> anyhow::Result<Vec<String>> {
        self.load(vec![
            tiny_doc("new-one"),
            updated("pkg-03", &self.revs["pkg-03"], "2.0.0"),
            deleted("pkg-07", &self.revs["pkg-07"]),
        ])
        .await?;
        let target = head(&self.peer).await?;
        let p = wait_until(&serve.url(), |p| following(p) && seq_of(p) == target).await?;
        assert_eq!(
            (p.packuments_done, p.packuments_deleted, p.packuments_total),
            (30, 1, 30),
            "one new, one refetched, one deleted: {p:?}"
        );
        let live: Vec<String> = first
            .iter()
            .filter(|n| *n != "pkg-07")
            .cloned()
            .chain(["new-one".to_string()])
            .collect();
        assert_current(&self.peer, &self.data(), &live).await?;
        assert_eq!(checkpoint_statuses(&self.db())["pkg-07"], "deleted");
        assert!(
            stored_files(&self.data()).contains_key("pkg-07"),
            "a deleted package's object is kept by default"
        );
        let proxy = &self.proxy;
        assert_eq!(
            (proxy.fetches_of("new-one"), proxy.fetches_of("pkg-03")),
            (1, 2)
        );
        assert_eq!(proxy.fetches_of("pkg-07"), 1, "a deletion needs no request");
        Ok(live)
    }

    /// 41 changes: 20 updates, 20 new packages, one deletion last; the follower is killed
    /// while it applies them. Returns the new names and the feed's head.
    async fn kill_mid_feed(&mut self, mut serve: Listening) -> anyhow::Result<(Vec<String>, u64)> {
        let before = head(&self.peer).await?;
        let mut batch: Vec<Value> = (10..30)
            .map(|i| {
                let n = format!("pkg-{i:02}");
                updated(&n, &self.revs[&n], "3.0.0")
            })
            .collect();
        let added: Vec<String> = (0..20).map(|i| format!("added-{i:02}")).collect();
        batch.extend(added.iter().map(|n| tiny_doc(n)));
        batch.push(deleted("pkg-00", &self.revs["pkg-00"]));
        self.load(batch).await?;
        let target = head(&self.peer).await?;
        assert_eq!(target, before + 41);
        let p = wait_until(&serve.url(), |p| seq_of(p) > before).await?;
        assert!(
            seq_of(&p) <= target - 10,
            "stopped while applying the feed: {p:?}"
        );
        serve.kill()?;
        let recorded = rusqlite::Connection::open(self.db())?.query_row(
            "SELECT value FROM meta WHERE key = 'follow_seq'",
            [],
            |r| r.get::<_, String>(0),
        )?;
        let recorded: u64 = recorded.parse()?;
        assert!(
            recorded > before && recorded < target,
            "the kill came mid-feed at {recorded}"
        );
        Ok((added, target))
    }

    /// `status` shows the feed; `index` leaves deleted packages out; `show` says why.
    fn check_reads(&self, serve: Listening, target: u64, live: &[String]) -> anyhow::Result<()> {
        let (code, out, err) = run(
            &coordinator(),
            &args(&["status", "--addr", &serve.url()]),
            &[],
        )?;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("following"), "{out}");
        let feed = format!("seq {target} of {target} (caught up), 2 deleted");
        assert!(out.contains(&feed), "{out}");
        drop(serve);
        let db = self.db();
        let db_arg = db.to_str().unwrap();
        let (code, out, _) = run(&coordinator(), &args(&["index", "--db", db_arg]), &[])?;
        assert_eq!(code, 0);
        let names: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
        assert_eq!(names.len(), live.len());
        assert!(!names.contains(&"pkg-00") && !names.contains(&"pkg-07"));
        let (code, _, err) = run(
            &coordinator(),
            &args(&["show", "pkg-07", "--db", db_arg]),
            &[],
        )?;
        assert_eq!(code, 1);
        assert!(
            err.contains("the _changes feed said it was deleted"),
            "{err}"
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_keeps_the_snapshot_current_and_a_restart_resumes_the_feed() -> anyhow::Result<()> {
    let peer = PouchServer::start().await?;
    let first: Vec<String> = (0..30).map(|i| format!("pkg-{i:02}")).collect();
    let revs = peer
        .load(first.iter().map(|n| tiny_doc(n)).collect())
        .await?;
    let proxy = CountingProxy::start(&peer.db_url()).await?;
    let mut world = World {
        peer,
        proxy,
        dir: tempfile::tempdir()?,
        revs: revs.into_iter().collect(),
    };
    let serve = world.serve(&[])?;
    let p = wait_until(&serve.url(), |p| following(p) && p.feed_lag == 0).await?;
    assert_eq!(
        (p.packuments_done, &p.feed_head_seq),
        (30, &p.feed_seq),
        "{p:?}"
    );
    assert_current(&world.peer, &world.data(), &first).await?;
    let live = world.live_changes(&serve, &first).await?;
    let (added, target) = world.kill_mid_feed(serve).await?;

    // Started again with --delete-objects.
    let serve = world.serve(&["--delete-objects"])?;
    let p = wait_until(&serve.url(), |p| following(p) && seq_of(p) == target).await?;
    assert_eq!((p.packuments_done, p.packuments_deleted), (49, 2), "{p:?}");
    let live: Vec<String> = live
        .into_iter()
        .filter(|n| n != "pkg-00")
        .chain(added)
        .collect();
    assert_current(&world.peer, &world.data(), &live).await?;
    // --delete-objects: the checkpoint refers to no object of it any more (a file of its
    // own is removed; a copy in a pack is dead, for `coordinator compact` to reclaim).
    let conn = rusqlite::Connection::open(world.db())?;
    let (uri, pack): (Option<String>, Option<i64>) = conn.query_row(
        "SELECT uri, pack FROM packages WHERE name = 'pkg-00'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    assert_eq!(
        (uri, pack),
        (None, None),
        "--delete-objects let go of its object"
    );
    drop(conn);
    // Nothing missed, nothing fetched twice: each package as often as it changed.
    for name in &live {
        let want = match name.as_str() {
            "pkg-03" => 2,
            n if n.starts_with("pkg-1") || n.starts_with("pkg-2") => 2,
            _ => 1,
        };
        assert_eq!(world.proxy.fetches_of(name), want, "requests for {name}");
    }
    world.check_reads(serve, target, &live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_follow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (code, _, err) = run(
        &coordinator(),
        &job_args("run", dir.path(), "http://127.0.0.1:9", &["--follow"]),
        &[],
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("coordinator serve --follow"), "{err}");
    assert!(
        !dir.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    Ok(())
}

/// The feed is reset under the follower (npm did so in 2016, 2021 and 2025): the endpoint
/// now serves a database whose sequence restarted. The follower notices its head is behind
/// the position it applied, indexes everything again (names gone are no longer listed),
/// fetches what is new or changed, and follows the new feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_feed_is_answered_by_a_full_reindex() -> anyhow::Result<()> {
    let old = PouchServer::start().await?;
    let names: Vec<String> = (0..20).map(|i| format!("pkg-{i:02}")).collect();
    old.load(names.iter().map(|n| tiny_doc(n)).collect())
        .await?;
    let new = PouchServer::start().await?;
    let kept = ["pkg-00", "pkg-01", "pkg-02", "fresh"];
    let after_reset = |n: &&str| {
        let mut doc = tiny_doc(n);
        doc["description"] = json!("published again after the reset");
        doc
    };
    new.load(kept.iter().map(after_reset).collect()).await?;
    let proxy = CountingProxy::start(&old.db_url()).await?;
    let dir = tempfile::tempdir()?;
    let serve = Listening::start(
        &coordinator(),
        &job_args(
            "serve",
            dir.path(),
            &proxy.url(),
            &[
                "--follow",
                "--follow-interval",
                "100ms",
                "--pivots",
                "pkg-1",
            ],
        ),
        &[],
    )?;
    wait_until(&serve.url(), |p| following(p) && p.feed_lag == 0).await?;
    proxy.switch_to(&new.db_url());
    let p = wait_until(&serve.url(), |p| {
        following(p) && p.feed_seq == "4" && p.packuments_total == 4
    })
    .await?;
    assert_eq!((p.packuments_done, p.feed_lag), (4, 0), "{p:?}");
    assert_current(&new, &dir.path().join("data"), &kept.map(String::from)).await?;
    for name in &names[3..] {
        assert_eq!(proxy.fetches_of(name), 1, "{name} is not fetched again");
    }
    // The kept names have new revisions in the new database: fetched again, once.
    assert_eq!(kept.map(|n| proxy.fetches_of(n)), [2, 2, 2, 1]);
    drop(serve);
    let db = dir.path().join("alldocs.sqlite");
    let (code, out, err) = run(
        &coordinator(),
        &args(&["index", "--db", db.to_str().unwrap()]),
        &[],
    )?;
    assert_eq!(code, 0, "{err}");
    let listed: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(listed, ["fresh", "pkg-00", "pkg-01", "pkg-02"]);
    Ok(())
}
