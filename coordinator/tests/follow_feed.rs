//! The follower against a scripted `_changes` endpoint on loopback, driving the library's
//! `Tail` and a real checkpoint: the head recorded before indexing, a page and its
//! sequence committed together, a feed that repeats itself applied once, and a reset (the
//! head behind us, or our `since` refused) answered by a new run.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use alldocs_coordinator::{
    checkpoint::{Checkpoint, RunIdentity},
    fleet::budget::Budget,
    fleet::rates::Stats,
    follow::changes::Feed,
    follow::{Caught, FollowSettings, Tail},
    plan,
};
use alldocs_fetcher::{source::http::RetryPolicy, source::npmrc::Credentials};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

/// What the endpoint answers: its head, and the `_changes` answers in turn (status, body).
#[derive(Default)]
struct Script {
    head: u64,
    answers: VecDeque<(u16, serde_json::Value)>,
    /// The `since` of every `_changes` request.
    asked: Vec<String>,
}

async fn endpoint(script: Arc<Mutex<Script>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    alldocs_tests::loopback::serve_http(listener, move |req: hyper::Request<_>| {
        let script = script.clone();
        async move { answer(&script, req.uri()) }
    });
    format!("http://{addr}")
}

fn answer(script: &Mutex<Script>, uri: &hyper::Uri) -> Response<Full<Bytes>> {
    let mut s = script.lock().unwrap();
    let (status, body) = if uri.path() == "/" {
        (200, json!({ "db_name": "registry", "update_seq": s.head }))
    } else {
        let since = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        s.asked.push(since.clone());
        s.answers.pop_front().unwrap_or_else(|| {
            (
                200,
                json!({ "results": [], "last_seq": since.parse::<u64>().unwrap_or(0) }),
            )
        })
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn change(seq: u64, id: &str, rev: &str) -> serde_json::Value {
    json!({ "seq": seq, "id": id, "changes": [{ "rev": rev }] })
}

struct Setup {
    tail: Tail,
    dir: tempfile::TempDir,
}

async fn setup(origin: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pivots = vec!["m".to_string()];
    let identity = RunIdentity {
        replicate_origin: origin.into(),
        registry: origin.into(),
        store: "memory://follow".into(),
        pivots: pivots.clone(),
        accept: "full".into(),
        layout: None,
    };
    let partitions = plan::partitions(&pivots);
    let (checkpoint, opened) =
        Checkpoint::open(&dir.path().join("c.sqlite"), &identity, &partitions, 3).unwrap();
    let policy = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    let tail = Tail {
        checkpoint,
        feed: Feed::new(origin, Arc::new(Credentials::default()), policy),
        plan: Arc::new(partitions),
        budget: Arc::new(Budget::new(0.0, 1, Duration::from_secs(10))),
        stats: Arc::new(Stats::default()),
        store: None,
        settings: FollowSettings {
            interval: Duration::from_millis(10),
            page_size: 2,
            batch: 1000,
        },
    };
    tail.begin(opened).await.unwrap();
    Setup { tail, dir }
}

/// (follow_seq, run, pending names) as the checkpoint file holds them (committed).
fn recorded(s: &Setup) -> (String, i64, Vec<String>) {
    let conn = rusqlite::Connection::open(s.dir.path().join("c.sqlite")).unwrap();
    let meta = |key: &str| -> String {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .unwrap()
    };
    let pending = conn
        .prepare("SELECT name FROM packages WHERE status = 'pending' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap();
    (meta("follow_seq"), meta("run").parse().unwrap(), pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_apply_with_their_sequence_and_a_repeating_feed_is_applied_once() {
    let script = Arc::new(Mutex::new(Script {
        head: 10,
        ..Script::default()
    }));
    let origin = endpoint(script.clone()).await;
    let s = setup(&origin).await;
    assert_eq!(
        recorded(&s),
        ("10".into(), 1, vec![]),
        "the head before indexing"
    );

    // Two full pages and a short one: read back to back until the short one.
    script.lock().unwrap().answers.extend([
        (200, json!({ "results": [change(11, "a", "1-a"), change(12, "b", "1-b")], "last_seq": 12 })),
        (200, json!({ "results": [change(13, "_design/app", "1-x"), change(14, "zed", "1-z")], "last_seq": 14 })),
        (200, json!({ "results": [change(15, "a", "2-a")], "last_seq": 15 })),
    ]);
    script.lock().unwrap().head = 15;
    assert_eq!(s.tail.catch_up().await.unwrap(), Caught::Pending(4));
    assert_eq!(script.lock().unwrap().asked, ["10", "12", "14"]);
    let (seq, run, pending) = recorded(&s);
    assert_eq!((seq.as_str(), run), ("15", 1));
    assert_eq!(
        pending,
        ["a", "b", "zed"],
        "design documents are not packages"
    );

    // A feed that answers changes without moving on is applied once, not in a loop.
    script.lock().unwrap().asked.clear();
    script.lock().unwrap().answers.extend([(
        200,
        json!({ "results": [change(15, "a", "2-a"), change(15, "b", "1-b")], "last_seq": 15 }),
    )]);
    assert_eq!(s.tail.catch_up().await.unwrap(), Caught::Current);
    assert_eq!(script.lock().unwrap().asked, ["15"]);
    assert_eq!(recorded(&s).0, "15");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_feed_starts_a_new_run_at_the_new_head() {
    let script = Arc::new(Mutex::new(Script {
        head: 500,
        ..Script::default()
    }));
    let origin = endpoint(script.clone()).await;
    let s = setup(&origin).await;

    // The head went behind us: a new run, following from the new head.
    script.lock().unwrap().head = 7;
    assert_eq!(s.tail.catch_up().await.unwrap(), Caught::Reset);
    let (seq, run, _) = recorded(&s);
    assert_eq!((seq.as_str(), run), ("7", 2));
    assert!(
        script.lock().unwrap().asked.is_empty(),
        "no page asked past a reset head"
    );

    // The endpoint refuses our position: the same.
    script.lock().unwrap().head = 9;
    script
        .lock()
        .unwrap()
        .answers
        .push_back((400, json!({ "error": "bad since" })));
    assert_eq!(s.tail.catch_up().await.unwrap(), Caught::Reset);
    let (seq, run, _) = recorded(&s);
    assert_eq!((seq.as_str(), run), ("9", 3));

    // A failing endpoint is an error to retry later; nothing is recorded.
    script
        .lock()
        .unwrap()
        .answers
        .push_back((500, json!({ "error": "down" })));
    assert!(s.tail.catch_up().await.is_err());
    assert_eq!(recorded(&s).0, "9");
}
