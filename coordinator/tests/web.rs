//! The HTTP surface beside gRPC on the coordinator's port, seen with tools nobody here
//! wrote: `promtool check metrics` and a real Prometheus server scraping `/metrics`;
//! headless Chromium loading the live status page during a run against the CouchDB peer;
//! and the admin token's gate, from a machine (a header) and a browser (the login form and
//! its cookie).

use std::{path::PathBuf, process::Stdio, time::Duration};

use alldocs_tests::{
    browser,
    coord::{job_args, wait_done, wait_until},
    fixtures,
    pouch::PouchServer,
    procs::{free_port, Listening},
    prom::{promtool_accepts, sample, tool},
    sim::{SimConfig, SimServer},
};

fn coordinator() -> PathBuf {
    env!("CARGO_BIN_EXE_coordinator").into()
}

/// The coordinator's HTTP base URL from its gRPC one (the same port).
fn http(job: &Listening) -> String {
    job.url().trim_end_matches('/').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() -> anyhow::Result<()> {
    let cfg = SimConfig {
        packages: 400,
        mean_bytes: 600,
        missing_every: 40,
        throttle_every: 53,
        ..Default::default()
    };
    let sim = SimServer::start("127.0.0.1:0".parse()?, cfg).await?;
    let dir = tempfile::tempdir()?;
    let job = Listening::start(
        &coordinator(),
        &job_args("serve", dir.path(), &sim.url(), &[]),
        &[],
    )?;
    let done = wait_done(&job.url()).await?;
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/metrics", http(&job))).send().await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await?;

    // promtool reads the Prometheus text format and lints names, units and help.
    promtool_accepts(&text);

    // What the snapshot holds, as GetProgress says it.
    let stored = done.packuments_done as f64;
    assert_eq!(
        sample(&text, "alldocs_snapshot_packuments{state=\"stored\"}"),
        Some(stored)
    );
    assert_eq!(
        sample(&text, "alldocs_snapshot_packuments{state=\"missing\"}"),
        Some(done.packuments_missing as f64)
    );
    assert_eq!(
        sample(&text, "alldocs_snapshot_packuments{state=\"missing\"}"),
        Some(10.0)
    );
    assert_eq!(sample(&text, "alldocs_snapshot_index_rows"), Some(400.0));
    assert_eq!(
        sample(&text, "alldocs_snapshot_stored_bytes"),
        Some(done.bytes_stored as f64)
    );
    assert_eq!(
        sample(&text, "alldocs_snapshot_partitions{state=\"done\"}"),
        Some(done.partitions_total as f64)
    );
    assert_eq!(sample(&text, "alldocs_leases_open"), Some(0.0));
    assert_eq!(
        sample(&text, "alldocs_fetchers{health=\"healthy\"}"),
        Some(1.0)
    );
    // Requests by class: the 404s of the missing packages, the 429s the simulator sent.
    assert!(sample(&text, "alldocs_origin_requests_total{class=\"2xx\"}").unwrap() >= 400.0);
    assert!(sample(&text, "alldocs_origin_requests_total{class=\"4xx\"}").unwrap() >= 10.0);
    assert!(sample(&text, "alldocs_origin_throttled_total{status=\"429\"}").unwrap() >= 1.0);
    assert!(sample(&text, "alldocs_origin_retries_total").unwrap() >= 1.0);
    assert!(sample(&text, "alldocs_checkpoint_commit_duration_seconds_count").unwrap() >= 1.0);
    assert!(
        sample(
            &text,
            "alldocs_lease_duration_seconds_count{kind=\"packuments\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        !text.contains("left-pad") && !text.contains("name="),
        "no package names in labels"
    );

    // A real Prometheus scrapes it (in OpenMetrics, which it asks for) and can query it.
    let seen = scraped_by_prometheus(dir.path(), &http(&job), &client).await?;
    assert_eq!(seen.as_deref(), Some(stored.to_string().as_str()));
    Ok(())
}

/// Starts a Prometheus server that scrapes `base` every second, and returns the value its
/// query API gives for the stored packuments once it has one (or `None`, its log printed).
async fn scraped_by_prometheus(
    dir: &std::path::Path,
    base: &str,
    client: &reqwest::Client,
) -> anyhow::Result<Option<String>> {
    let port = free_port()?;
    let target = base.trim_start_matches("http://");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: alldocs\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )?;
    let mut prometheus = std::process::Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()?;
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=alldocs_snapshot_packuments%7Bstate%3D%22stored%22%7D"
    );
    let mut seen = None;
    for _ in 0..300 {
        if let Ok(r) = client.get(&query).send().await {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                seen = Some(value.to_string());
                break;
            }
        }
        // Prometheus takes a moment to start and scrape; nothing here to await but asking.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if seen.is_none() {
        eprintln!(
            "prometheus: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
    }
    Ok(seen)
}

/// Where a test keeps what a person would look at (screenshots).
fn output_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).expect("creating the test output directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_run_against_pouchdb_live_in_headless_chromium(
) -> anyhow::Result<()> {
    let peer = PouchServer::start().await?;
    let fx = fixtures::packuments()?;
    peer.load(fixtures::as_couch_docs(&fx)).await?;
    let dir = tempfile::tempdir()?;
    // Paced at 6 requests/s, the 45 packuments take several seconds: the page is looked at
    // while they arrive.
    let job = Listening::start(
        &coordinator(),
        &job_args(
            "serve",
            dir.path(),
            &peer.db_url(),
            &["--rate-limit", "6", "--pivots", "b,m,t"],
        ),
        &[],
    )?;
    let url = format!("{}/", http(&job));
    // Looked at once the index is read (the total is known), while packuments arrive.
    wait_until(&job.url(), |p| {
        p.partitions_total > 0 && p.partitions_done == p.partitions_total
    })
    .await?;
    let first = browser::dom(&url, 3000)?;
    let done_of = |dom: &str| -> u64 {
        browser::text_of(dom, "done")
            .unwrap_or_default()
            .replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("no number in #done: {dom}"))
    };
    let before = done_of(&first);
    // The page polled more than once in its three seconds: it is live, not a snapshot.
    let polls: u32 = browser::body_data(&first, "polls")
        .unwrap_or_default()
        .parse()?;
    assert!(polls >= 2, "the page polled {polls} times");
    assert_eq!(browser::text_of(&first, "total").as_deref(), Some("45"));
    // The grid has a square per partition (4 of them: --pivots b,m,t), settings are shown.
    assert_eq!(first.matches("class=\"cell ").count() - 4, 4, "{first}");
    assert!(
        first.contains("rate limit") && first.contains("6 requests/s"),
        "{first}"
    );
    assert!(first.contains("in-process"), "{first}");
    assert!(first.contains("healthy"), "{first}");

    // Once more stored, the page shows the new count.
    wait_until(&job.url(), |p| p.packuments_done > before + 5).await?;
    let later = browser::dom(&url, 1500)?;
    let after = done_of(&later);
    assert!(after > before, "#done went from {before} to {after}");

    // Phone width and desktop, kept for a person to look at.
    let out = output_dir();
    browser::screenshot(&url, 390, 1400, 2500, &out.join("status-phone.png"))?;
    let done = wait_done(&job.url()).await?;
    browser::screenshot(&url, 1280, 1000, 2500, &out.join("status-desktop.png"))?;
    let last = browser::dom(&url, 1500)?;
    assert_eq!(browser::body_data(&last, "state").as_deref(), Some("done"));
    assert_eq!(
        done_of(&last),
        done.packuments_done + done.packuments_missing
    );
    for png in ["status-phone.png", "status-desktop.png"] {
        let bytes = std::fs::read(out.join(png))?;
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{png}"
        );
    }
    Ok(())
}

/// Machines: nothing without the header, a wrong one refused, the right one let in.
async fn machines_need_the_header(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<()> {
    for path in ["/metrics", "/api/status"] {
        let r = client.get(format!("{base}{path}")).send().await?;
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
        assert!(r.text().await?.contains("ALLDOCS_ADMIN_TOKEN"), "{path}");
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth("nope")
            .send()
            .await?;
        assert_eq!(r.status(), 401, "{path}");
        let r = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{path}");
    }

    Ok(())
}

/// A browser: the page is a login form, in Chromium too, with nothing of the run on it;
/// the token posted there gets a session cookie (not the token) that opens the page and
/// its JSON until logout.
async fn a_browser_logs_in_and_out(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<()> {
    let login = browser::dom(&format!("{base}/"), 500)?;
    assert!(
        login.contains("action=\"/login\"") && login.contains("type=\"password\""),
        "{login}"
    );
    assert!(
        !login.contains("Packuments") && !login.contains("/api/status"),
        "{login}"
    );
    let wrong = client
        .post(format!("{base}/login"))
        .form(&[("token", "nope")])
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = client
        .post(format!("{base}/login"))
        .form(&[("token", token)])
        .send()
        .await?;
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], "/");
    let cookie = right.headers()["set-cookie"].to_str()?.to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(token),
        "the cookie is a session id, not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = client
        .get(format!("{base}/"))
        .header("cookie", &pair)
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("Packuments"));
    let json = client
        .get(format!("{base}/api/status"))
        .header("cookie", &pair)
        .send()
        .await?;
    assert_eq!(json.status(), 200);
    let status: serde_json::Value = json.json().await?;
    assert_eq!(status["guarded"], true);
    assert!(!status.to_string().contains(token));
    let out = client
        .post(format!("{base}/logout"))
        .header("cookie", &pair)
        .send()
        .await?;
    assert_eq!(out.status(), 303);
    let gone = client
        .get(format!("{base}/api/status"))
        .header("cookie", &pair)
        .send()
        .await?;
    assert_eq!(gone.status(), 401, "a session logged out is over");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_its_json_and_metrics_need_it() -> anyhow::Result<()> {
    const TOKEN: &str = "page-gate-s3cret";
    let sim = SimServer::loopback(50, 300).await?;
    let dir = tempfile::tempdir()?;
    let log = std::fs::File::create(dir.path().join("stderr.log"))?;
    let mut cmd = std::process::Command::new(coordinator());
    cmd.args(job_args("serve", dir.path(), &sim.url(), &[]))
        .env("ALLDOCS_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stderr(log);
    let job = Listening::start_command(cmd)?;
    let base = http(&job);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    machines_need_the_header(&client, &base, TOKEN).await?;

    a_browser_logs_in_and_out(&client, &base, TOKEN).await?;

    drop(job);
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log"))?;
    assert!(
        !stderr.contains(TOKEN),
        "the token appears in the log: {stderr}"
    );
    Ok(())
}
