//! The registry simulator over real loopback HTTP: listing, packuments, faults and counters.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use alldocs_tests::sim::{Registry, SimConfig, SimServer, StatsSnapshot};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::{header, Client, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;

const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

#[derive(Debug, Deserialize)]
struct Page {
    total_rows: usize,
    offset: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    key: String,
    value: RowValue,
}

#[derive(Debug, Deserialize)]
struct RowValue {
    rev: String,
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A small registry with small documents (fast in debug builds).
fn small(packages: usize) -> SimConfig {
    SimConfig {
        packages,
        mean_bytes: 4_000,
        ..SimConfig::default()
    }
}

async fn start(cfg: SimConfig) -> SimServer {
    SimServer::start(any_port(), cfg)
        .await
        .expect("the simulator starts")
}

/// A client that neither asks for nor decodes gzip, so bodies are what the server sent.
fn raw_client() -> Client {
    Client::builder().no_gzip().build().unwrap()
}

fn key(name: &str) -> String {
    serde_json::to_string(name).unwrap()
}

/// GETs `{url}/_all_docs` with the given query parameters.
async fn all_docs(client: &Client, url: &str, query: &[(&str, String)]) -> reqwest::Response {
    client
        .get(format!("{url}/_all_docs"))
        .query(query)
        .send()
        .await
        .unwrap()
}

async fn page(client: &Client, url: &str, query: &[(&str, String)]) -> Page {
    let response = all_docs(client, url, query).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The URL path segment npm clients use for `name` (`@scope%2fname`).
fn encoded(name: &str) -> String {
    name.replace('/', "%2f")
}

async fn get_doc(client: &Client, url: &str, name: &str) -> reqwest::Response {
    client
        .get(format!("{url}/{}", encoded(name)))
        .send()
        .await
        .unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn names(registry: &Registry) -> Vec<String> {
    registry.names().map(str::to_owned).collect()
}

#[tokio::test]
async fn paging_with_startkey_lists_every_name_once_in_byte_order() {
    let sim = start(small(2_500)).await;
    let client = Client::new();
    let mut listed = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        if let Some(last) = &start {
            query.push(("startkey", key(last)));
        }
        let page = page(&client, &sim.url(), &query).await;
        assert_eq!(page.total_rows, 2_500);
        assert_eq!(
            page.offset,
            listed.len().saturating_sub(1),
            "offset is the first row's index"
        );
        let mut rows = page.rows.into_iter();
        if start.is_some() {
            assert_eq!(rows.next().map(|r| r.id), start, "startkey is inclusive");
        }
        let before = listed.len();
        for row in rows {
            assert_eq!(row.id, row.key);
            assert_eq!(Some(row.value.rev), sim.registry().rev(&row.id));
            listed.push(row.id);
        }
        if listed.len() == before {
            break;
        }
        start = listed.last().cloned();
    }
    assert_eq!(listed, names(sim.registry()));
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    sorted.dedup();
    assert_eq!(listed, sorted, "unique and in raw byte order");
    assert_eq!(sim.stats().all_docs_requests, 4);
}

#[tokio::test]
async fn endkey_is_inclusive_unless_inclusive_end_is_false() {
    let sim = start(small(300)).await;
    let client = Client::new();
    let all = names(sim.registry());
    let (first, last) = (&all[10], &all[20]);
    let ids = |page: Page| page.rows.into_iter().map(|r| r.id).collect::<Vec<_>>();

    let inclusive = page(
        &client,
        &sim.url(),
        &[("startkey", key(first)), ("endkey", key(last))],
    )
    .await;
    assert_eq!(inclusive.offset, 10);
    assert_eq!(ids(inclusive), &all[10..=20]);

    let explicit = [
        ("startkey", key(first)),
        ("endkey", key(last)),
        ("inclusive_end", "true".into()),
    ];
    assert_eq!(
        ids(page(&client, &sim.url(), &explicit).await),
        &all[10..=20]
    );

    let exclusive = [
        ("start_key", key(first)),
        ("end_key", key(last)),
        ("inclusive_end", "false".into()),
    ];
    assert_eq!(
        ids(page(&client, &sim.url(), &exclusive).await),
        &all[10..20]
    );

    // Keys need not be names: rows are those between them in byte order.
    let between = [
        ("startkey", key(&format!("{first}\u{0}"))),
        ("limit", "3".into()),
    ];
    assert_eq!(ids(page(&client, &sim.url(), &between).await), &all[11..14]);
    let reversed = [("startkey", key(last)), ("endkey", key(first))];
    assert!(page(&client, &sim.url(), &reversed).await.rows.is_empty());
    let past_end = page(&client, &sim.url(), &[("startkey", key("\u{7f}"))]).await;
    assert_eq!((past_end.offset, past_end.rows.len()), (300, 0));
}

#[tokio::test]
async fn bad_all_docs_queries_are_rejected_with_couchdb_errors() {
    let sim = start(small(200)).await;
    let client = Client::new();
    let url = sim.url();
    for query in [
        vec![("skip", "1".to_owned())],
        vec![("limit", "10001".to_owned())],
        vec![("limit", "-1".to_owned())],
        vec![("startkey", "not-json".to_owned())],
        vec![("endkey", "\"unterminated".to_owned())],
        vec![("inclusive_end", "maybe".to_owned())],
    ] {
        let response = all_docs(&client, &url, &query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{query:?}");
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{query:?}"
        );
    }
    let max = page(&client, &url, &[("limit", "10000".to_owned())]).await;
    assert_eq!(max.rows.len(), 200);
    let default = page(&client, &url, &[]).await;
    assert_eq!(
        (default.total_rows, default.offset, default.rows.len()),
        (200, 0, 200)
    );
    let none = page(&client, &url, &[("limit", "0".to_owned())]).await;
    assert!(none.rows.is_empty());
}

#[tokio::test]
async fn default_limit_is_1000() {
    let sim = start(small(1_500)).await;
    let page = page(&Client::new(), &sim.url(), &[]).await;
    assert_eq!(page.rows.len(), 1_000);
}

#[test]
fn names_mix_npm_classes_in_raw_byte_order() {
    let registry = Registry::new(&small(5_000));
    let all = names(&registry);
    assert_eq!(all.len(), 5_000);
    let class = |name: &str| match name.as_bytes()[0] {
        b'0'..=b'9' => 0,
        b'@' => 1,
        b'A'..=b'Z' => 2,
        b'a'..=b'z' => 3,
        other => panic!("unexpected first byte {other} in {name:?}"),
    };
    let classes: Vec<u8> = all.iter().map(|n| class(n)).collect();
    assert!(
        classes.is_sorted(),
        "digits < @scopes < Uppercase < lowercase"
    );
    let count = |c: u8| classes.iter().filter(|&&x| x == c).count();
    let (digits, scoped, upper, lower) = (count(0), count(1), count(2), count(3));
    assert!(
        (50..=200).contains(&digits),
        "~2% digit-leading, got {digits}"
    );
    assert!((500..=1_000).contains(&scoped), "~15% scoped, got {scoped}");
    assert!((20..=120).contains(&upper), "~1% uppercase, got {upper}");
    assert!(lower > 3_500);

    let scopes: std::collections::HashSet<&str> = all
        .iter()
        .filter_map(|n| n.strip_prefix('@')?.split_once('/').map(|(s, _)| s))
        .collect();
    assert!(
        scopes.len() > 10 && scopes.len() * 3 < scoped,
        "many packages per scope"
    );
    let first_letters: std::collections::HashSet<u8> = all
        .iter()
        .filter(|n| class(n) == 3)
        .map(|n| n.as_bytes()[0])
        .collect();
    assert_eq!(first_letters.len(), 26);
    for sep in ['-', '.', '_'] {
        assert!(
            all.iter().any(|n| n.contains(sep)),
            "some names contain {sep:?}"
        );
    }
    assert!(all
        .iter()
        .all(|n| n.len() <= 214 && !n.contains(['"', '\\', ' ', '%'])));

    let same = Registry::new(&small(5_000));
    assert!(same.names().eq(registry.names()), "deterministic");
    let other = Registry::new(&SimConfig {
        seed: 2,
        ..small(5_000)
    });
    assert!(!other.names().eq(registry.names()), "the seed matters");
}

#[test]
fn generations_change_a_few_revisions() {
    let before = Registry::new(&small(4_000));
    let after = Registry::new(&SimConfig {
        generation: 1,
        ..small(4_000)
    });
    assert!(before.names().eq(after.names()));
    let changed: Vec<&str> = before
        .names()
        .filter(|n| before.rev(n) != after.rev(n))
        .collect();
    assert!(
        (100..=320).contains(&changed.len()),
        "~5% change, got {}",
        changed.len()
    );
    for name in changed {
        let number = |rev: Option<String>| {
            rev.unwrap()
                .split_once('-')
                .unwrap()
                .0
                .parse::<u64>()
                .unwrap()
        };
        assert!(
            number(after.rev(name)) > number(before.rev(name)),
            "{name}: the rev number bumps"
        );
        assert_ne!(before.document(name, false), after.document(name, false));
        assert_ne!(before.etag(name, false), after.etag(name, false));
    }
    let rev = before.rev(before.name(0)).unwrap();
    let (number, hash) = rev.split_once('-').unwrap();
    assert!(number.parse::<u64>().is_ok());
    assert!(
        hash.len() == 32
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

#[tokio::test]
async fn packuments_are_the_registry_documents() {
    let sim = start(small(1_000)).await;
    let client = raw_client();
    let registry = sim.registry();
    let scoped = registry
        .names()
        .find(|n| n.starts_with('@'))
        .unwrap()
        .to_owned();
    let upper = registry
        .names()
        .find(|n| n.as_bytes()[0].is_ascii_uppercase())
        .unwrap()
        .to_owned();
    for name in [registry.name(0), registry.name(500), &scoped, &upper] {
        let response = get_doc(&client, &sim.url(), name).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "max-age=300");
        assert!(response.headers().contains_key(header::LAST_MODIFIED));
        let etag = response.headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(Some(etag), registry.etag(name, false));
        let body = response.bytes().await.unwrap();
        assert_eq!(
            Some(body.to_vec()),
            registry.document(name, false),
            "{name}"
        );
        assert_eq!(Some(body.len()), registry.document_len(name, false));
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["_id"], name);
        assert_eq!(doc["name"], name);
        assert_eq!(doc["_rev"].as_str(), registry.rev(name).as_deref());
        let latest = doc["dist-tags"]["latest"].as_str().unwrap();
        assert_eq!(doc["versions"][latest]["version"], latest);
        assert!(doc["time"]["modified"].is_string());
        assert!(doc["readme"].is_string());
    }

    // A scoped name is found however its slash arrives.
    let (scope, rest) = scoped.split_once('/').unwrap();
    for path in [
        format!("{scope}%2F{rest}"),
        scoped.clone(),
        format!("%40{}%2f{rest}", &scope[1..]),
    ] {
        let response = client
            .get(format!("{}/{path}", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            Some(response.bytes().await.unwrap().to_vec()),
            registry.document(&scoped, false)
        );
    }
    assert_eq!(sim.requests_for(&scoped), 4);
}

#[tokio::test]
async fn abbreviated_packuments_are_smaller_with_their_own_etag() {
    let sim = start(small(300)).await;
    let client = raw_client();
    let registry = sim.registry();
    let name = registry
        .names()
        .find(|n| registry.document_len(n, false) > Some(8_000))
        .unwrap()
        .to_owned();
    let url = format!("{}/{}", sim.url(), encoded(&name));
    let accept = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
    let response = client
        .get(&url)
        .header(header::ACCEPT, accept)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], ABBREVIATED);
    let etag = response.headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(Some(etag.clone()), sim.registry().etag(&name, true));
    assert_ne!(Some(etag), sim.registry().etag(&name, false));
    let body = response.bytes().await.unwrap();
    assert_eq!(Some(body.to_vec()), sim.registry().document(&name, true));
    let full = sim.registry().document(&name, false).unwrap();
    assert!(
        body.len() * 2 < full.len(),
        "{} vs {}",
        body.len(),
        full.len()
    );

    let doc: Value = serde_json::from_slice(&body).unwrap();
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4);
    for key in ["name", "modified", "dist-tags", "versions"] {
        assert!(keys.contains(&key), "{key}");
    }
    assert_eq!(doc["name"], name.as_str());
    let full: Value = serde_json::from_slice(&full).unwrap();
    assert_eq!(doc["dist-tags"], full["dist-tags"]);
    assert_eq!(doc["modified"], full["time"]["modified"]);
}

#[tokio::test]
async fn if_none_match_answers_304_without_a_body() {
    let sim = start(small(100)).await;
    let client = raw_client();
    let name = sim.registry().name(7).to_owned();
    let url = format!("{}/{}", sim.url(), encoded(&name));
    let etag = client.get(&url).send().await.unwrap().headers()[header::ETAG].clone();
    assert!(etag.to_str().unwrap().starts_with('"') && etag.to_str().unwrap().ends_with('"'));

    let response = client
        .get(&url)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()[header::ETAG], etag);
    assert!(response.bytes().await.unwrap().is_empty());

    // The abbreviated representation has another tag, so the full one's does not match it.
    let response = client
        .get(&url)
        .header(header::ACCEPT, ABBREVIATED)
        .header(header::IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client
        .get(&url)
        .header(header::IF_NONE_MATCH, "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let stats = sim.stats();
    assert_eq!(
        (
            stats.packument_requests,
            stats.packuments_served,
            stats.not_modified
        ),
        (4, 3, 1)
    );
}

#[tokio::test]
async fn gzip_round_trips_to_the_same_bytes() {
    // Large enough documents that bodies span many pre-compressed filler chunks.
    let sim = start(SimConfig {
        packages: 300,
        mean_bytes: 60_000,
        ..SimConfig::default()
    })
    .await;
    let registry = sim.registry().clone();
    let mut by_size: Vec<&str> = registry.names().collect();
    by_size.sort_by_key(|n| registry.document_len(n, false));
    // Sizes across the whole range, from empty readmes to the largest documents.
    let picks: Vec<&str> = by_size
        .iter()
        .step_by(20)
        .chain(&by_size[298..])
        .copied()
        .collect();
    assert!(registry.document_len(by_size[299], false).unwrap() > 200_000);

    let raw = raw_client();
    for &name in &picks {
        let url = format!("{}/{}", sim.url(), encoded(name));
        for abbreviated in [false, true] {
            let accept = if abbreviated {
                ABBREVIATED
            } else {
                "application/json"
            };
            let response = raw
                .get(&url)
                .header(header::ACCEPT, accept)
                .header(header::ACCEPT_ENCODING, "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
            let body = response.bytes().await.unwrap();
            let expected = registry.document(name, abbreviated).unwrap();
            assert_eq!(gunzip(&body), expected, "{name} abbreviated={abbreviated}");
            if !abbreviated && expected.len() > 100_000 {
                assert!(
                    body.len() < expected.len() / 2,
                    "compressed {} of {}",
                    body.len(),
                    expected.len()
                );
            }
        }
        // A client decoding gzip transparently sees the same bytes.
        let decoded = Client::new()
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(Some(decoded.to_vec()), registry.document(name, false));
        // No gzip unless asked for, or when refused with q=0.
        for encoding in [None, Some("gzip;q=0, identity")] {
            let mut request = raw.get(&url);
            if let Some(encoding) = encoding {
                request = request.header(header::ACCEPT_ENCODING, encoding);
            }
            let response = request.send().await.unwrap();
            assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
            assert_eq!(
                Some(response.bytes().await.unwrap().to_vec()),
                registry.document(name, false)
            );
        }
    }
    let stats = sim.stats();
    let expected: u64 = picks
        .iter()
        .map(|n| {
            let (full, abbreviated) = (
                registry.document_len(n, false).unwrap(),
                registry.document_len(n, true).unwrap(),
            );
            (4 * full + abbreviated) as u64
        })
        .sum();
    assert_eq!(
        stats.bytes_sent, expected,
        "uncompressed bytes of every 200"
    );
}

#[tokio::test]
async fn gzip_can_be_disabled() {
    let sim = start(SimConfig {
        gzip: false,
        ..small(50)
    })
    .await;
    let name = sim.registry().name(3).to_owned();
    let response = raw_client()
        .get(format!("{}/{}", sim.url(), encoded(&name)))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key(header::CONTENT_ENCODING));
    assert_eq!(
        Some(response.bytes().await.unwrap().to_vec()),
        sim.registry().document(&name, false)
    );
}

#[tokio::test]
async fn missing_packages_are_listed_but_answer_404() {
    let sim = start(SimConfig {
        missing_every: 10,
        ..small(100)
    })
    .await;
    let client = Client::new();
    let listed = page(&client, &sim.url(), &[]).await;
    assert_eq!(listed.rows.len(), 100);
    let missing: Vec<String> = listed
        .rows
        .iter()
        .map(|r| r.id.clone())
        .filter(|n| sim.registry().is_missing(n))
        .collect();
    assert_eq!(missing.len(), 10);
    for name in &missing {
        let response = get_doc(&client, &sim.url(), name).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "not_found", "reason": "missing"})
        );
        assert_eq!(sim.registry().document(name, false), None);
    }
    let present = listed
        .rows
        .iter()
        .find(|r| !sim.registry().is_missing(&r.id))
        .unwrap();
    assert_eq!(
        get_doc(&client, &sim.url(), &present.id).await.status(),
        StatusCode::OK
    );
    let unknown = get_doc(&client, &sim.url(), "no-such-package-\u{e9}").await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let stats = sim.stats();
    assert_eq!(
        (
            stats.packument_requests,
            stats.not_found,
            stats.packuments_served
        ),
        (12, 11, 1)
    );
}

#[tokio::test]
async fn fail_first_answers_503_then_succeeds() {
    let sim = start(SimConfig {
        fail_first: 2,
        ..small(50)
    })
    .await;
    let client = Client::new();
    let (a, b) = (
        sim.registry().name(1).to_owned(),
        sim.registry().name(2).to_owned(),
    );
    for _ in 0..2 {
        for name in [&a, &b] {
            let response = get_doc(&client, &sim.url(), name).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    for name in [&a, &b] {
        let response = get_doc(&client, &sim.url(), name).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            Some(response.bytes().await.unwrap().to_vec()),
            sim.registry().document(name, false)
        );
    }
    assert_eq!((sim.requests_for(&a), sim.requests_for(&b)), (3, 3));
    let stats = sim.stats();
    assert_eq!((stats.failed_injected, stats.packuments_served), (4, 2));
}

#[tokio::test]
async fn throttle_every_answers_429_with_retry_after() {
    let sim = start(SimConfig {
        throttle_every: 3,
        ..small(50)
    })
    .await;
    let client = Client::new();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let response = get_doc(&client, &sim.url(), sim.registry().name(i)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()[header::RETRY_AFTER], "0");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    assert_eq!(sim.stats().throttled, 2);
}

#[tokio::test]
async fn latency_delays_packuments() {
    let sim = start(SimConfig {
        latency_ms: 150,
        ..small(20)
    })
    .await;
    let client = Client::new();
    let began = Instant::now();
    assert_eq!(
        get_doc(&client, &sim.url(), sim.registry().name(0))
            .await
            .status(),
        StatusCode::OK
    );
    assert!(began.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn prefix_serves_everything_under_it_and_stats_at_the_root() {
    let sim = start(SimConfig {
        prefix: "/registry/".into(),
        ..small(100)
    })
    .await;
    let root = format!("http://{}", sim.addr());
    assert_eq!(sim.url(), format!("{root}/registry"));
    let client = Client::new();

    let info: Value = client
        .get(format!("{}/", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["db_name"], "registry");
    assert_eq!(info["doc_count"], 100);
    assert!(info["update_seq"].is_number());
    assert_eq!(page(&client, &sim.url(), &[]).await.rows.len(), 100);
    let name = sim.registry().name(0).to_owned();
    assert_eq!(
        get_doc(&client, &sim.url(), &name).await.status(),
        StatusCode::OK
    );

    for outside in [
        format!("{root}/_all_docs"),
        format!("{root}/{name}"),
        format!("{root}/registryx/_all_docs"),
    ] {
        let response = client.get(&outside).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{outside}");
    }
    let stats: StatsSnapshot = client
        .get(format!("{root}/-/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats, sim.stats());
    assert_eq!((stats.all_docs_requests, stats.packuments_served), (1, 1));
}

/// Rate-limit tests read the busiest second the origin saw: requests more than a second
/// apart never share a window, requests within one do, and the stats do not count.
#[tokio::test]
async fn the_busiest_second_counts_requests_in_sliding_windows() {
    let sim = start(small(20)).await;
    let client = Client::new();
    let names = names(sim.registry());
    for name in &names[..4] {
        get_doc(&client, &sim.url(), name).await;
    }
    page(&client, &sim.url(), &[]).await;
    assert_eq!(sim.max_requests_per_second(), 5);
    // The time between the bursts is what is measured here.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for name in &names[4..7] {
        get_doc(&client, &sim.url(), name).await;
    }
    let stats: StatsSnapshot = client
        .get(format!("{}/-/sim/stats", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats.max_requests_per_second, 5,
        "3 a second later do not add up"
    );
    assert_eq!(sim.max_requests_per_second(), 5);
}

#[tokio::test]
async fn stats_are_served_over_http_with_optional_per_name_counts() {
    let sim = start(small(100)).await;
    let client = Client::new();
    let names: Vec<String> = names(sim.registry()).into_iter().take(3).collect();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i {
            get_doc(&client, &sim.url(), name).await;
        }
    }
    page(&client, &sim.url(), &[]).await;
    let stats_url = format!("{}/-/sim/stats", sim.url());
    let stats: StatsSnapshot = client
        .get(&stats_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.names, None);
    assert_eq!(
        (
            stats.packument_requests,
            stats.packuments_served,
            stats.all_docs_requests
        ),
        (6, 6, 1)
    );
    let bytes: usize = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i + 1) * sim.registry().document_len(n, false).unwrap())
        .sum();
    assert_eq!(stats.bytes_sent, bytes as u64);

    let with_names: StatsSnapshot = client
        .get(format!("{stats_url}?names=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counts = with_names.names.unwrap();
    assert_eq!(counts.len(), 3);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(counts[name], i as u64 + 1);
        assert_eq!(sim.requests_for(name), i as u64 + 1);
    }
}

#[tokio::test]
async fn document_sizes_have_the_configured_mean_and_a_long_tail() {
    let mean_bytes = 20_000;
    let sim = start(SimConfig {
        packages: 2_000,
        mean_bytes,
        ..SimConfig::default()
    })
    .await;
    let client = raw_client();
    let url = sim.url();
    let sizes: Vec<usize> = futures::stream::iter(names(sim.registry()))
        .map(|name| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let response = get_doc(&client, &url, &name).await;
                assert_eq!(response.status(), StatusCode::OK);
                response.bytes().await.map(|b| b.len())
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let max = *sizes.iter().max().unwrap();
    let median = {
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    };
    let target = mean_bytes as f64;
    assert!(
        (0.75 * target..=1.25 * target).contains(&mean),
        "mean {mean}"
    );
    assert!(max as f64 > 6.0 * mean, "long tail: max {max}, mean {mean}");
    assert!(
        (median as f64) < 0.7 * mean,
        "skewed: median {median}, mean {mean}"
    );
    assert!(max <= 64 * mean_bytes);
    assert_eq!(sim.stats().bytes_sent, sizes.iter().sum::<usize>() as u64);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = start(small(10)).await;
    let url = sim.url();
    assert_eq!(page(&Client::new(), &url, &[]).await.rows.len(), 10);
    sim.shutdown().await;
    assert!(Client::new()
        .get(format!("{url}/_all_docs"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_registry-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--packages",
            "500",
            "--mean-bytes",
            "3000",
            "--prefix",
            "/r",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap()
        .unwrap();
    let base = line.strip_prefix("listening on http://").expect(&line);
    let addr: SocketAddr = base.parse().unwrap();
    assert_ne!(addr.port(), 0);

    let page = page(
        &Client::new(),
        &format!("http://{addr}/r"),
        &[("limit", "5".into())],
    )
    .await;
    assert_eq!((page.total_rows, page.rows.len()), (500, 5));
    let expected = Registry::new(&SimConfig {
        packages: 500,
        mean_bytes: 3000,
        ..SimConfig::default()
    });
    assert_eq!(page.rows[0].id, expected.name(0));
    assert_eq!(
        Some(page.rows[0].value.rev.clone()),
        expected.rev(expected.name(0))
    );
    child.kill().await.unwrap();
}
