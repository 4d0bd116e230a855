//! A real `fetcher serve` does only what its operator allowed: callers without its token,
//! stores and origins outside its allow-lists, `memory://`, and leases over its caps are
//! refused with the gRPC code and the option to set, before any request or write; it will
//! not start beyond loopback unguarded; and a registry token goes only to its own scheme,
//! host, port and path.

mod common;

use std::time::Duration;

use alldocs_proto::v1::fetch_event::Event;
use alldocs_tests::{
    procs::free_port,
    recording::{Answer, RecordingOrigin, Seen},
    support::{index_lease, packument_lease},
};
use common::{call, command, fetch, files_under, items, refused, stored_and_failed, Fetcher};
use tonic::Code;

const TOKEN: &str = "fetcher-t0ken-7f3a9c";

/// Health and reflection answer without a token.
async fn health_and_reflection_are_open(url: &str) -> anyhow::Result<()> {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await?.and_then(|a| a.message_response)
    else {
        anyhow::bail!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"alldocs.v1.Fetcher".to_string()),
        "{names:?}"
    );
    Ok(())
}

/// An operator who sets ALLDOCS_FETCHER_TOKEN gets a fetcher that only its coordinator can
/// use: a call without the token or with another one is UNAUTHENTICATED (naming the
/// variable), reaches no origin and writes nothing; health and reflection stay open; and
/// the token shows up nowhere in the fetcher's output, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_needs_the_bearer_token_and_the_token_is_never_logged() -> anyhow::Result<()> {
    let origin = RecordingOrigin::start("127.0.0.1").await?;
    let fetcher = Fetcher::start(
        &["--listen", "127.0.0.1:0"],
        &[("ALLDOCS_FETCHER_TOKEN", TOKEN)],
    )?;
    let store = fetcher.dir.path().join("store");
    let store_url = store.to_str().unwrap();
    let lease = packument_lease(&origin.url(), store_url, &items(3));
    let mut client = fetcher.client().await?;
    for token in [None, Some("fetcher-t0ken-7f3a9d"), Some("")] {
        let refused = fetch(&mut client, call(lease.clone(), token))
            .await
            .expect_err("refused");
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{token:?}: {refused:?}"
        );
        assert!(
            refused.message().contains("ALLDOCS_FETCHER_TOKEN"),
            "{refused:?}"
        );
    }
    assert_eq!(origin.seen(), vec![], "no request reached the origin");
    assert_eq!(
        files_under(&store),
        Vec::<std::path::PathBuf>::new(),
        "nothing written"
    );
    health_and_reflection_are_open(&fetcher.url()).await?;

    // The right token: the lease runs.
    let events = fetch(&mut client, call(lease, Some(TOKEN))).await?;
    assert_eq!(stored_and_failed(&events), (3, 0), "{events:?}");
    assert_eq!(origin.seen().len(), 3);
    assert_eq!(files_under(&store).len(), 3);

    let ended = fetcher.terminate()?;
    assert_eq!(ended.code, 0, "{ended:?}");
    let log = ended.log;
    assert!(
        log.matches("was refused").count() >= 3,
        "the refusals are logged: {log}"
    );
    assert!(
        log.contains("lease finished"),
        "debug lines are in the scan: {log}"
    );
    assert!(
        !log.contains(TOKEN) && !ended.stdout.contains(TOKEN),
        "the token leaked: {log}"
    );
    assert!(!log.contains("7f3a9d"), "a presented token leaked");
    Ok(())
}

/// A fetcher allowed one directory and one registry path refuses, with PERMISSION_DENIED
/// and the flag to set, a lease naming a store or an origin outside them — look-alike
/// prefixes and `..` included — before it sends a request or writes a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_and_origins_outside_the_allow_lists_are_permission_denied() -> anyhow::Result<()> {
    let origin = RecordingOrigin::start("127.0.0.1").await?;
    let other = RecordingOrigin::start("127.0.0.1").await?;
    let data = tempfile::tempdir()?;
    let allowed = data.path().join("allowed");
    let registry = format!("{}/npm", origin.url());
    let fetcher = Fetcher::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--allow-store",
            allowed.to_str().unwrap(),
            "--allow-origin",
            &registry,
        ],
        &[],
    )?;
    let mut client = fetcher.client().await?;
    let at = |p: &str| data.path().join(p).to_str().unwrap().to_string();
    let denied_stores = [
        at("allowed2"),
        at("allowed/../evil"),
        format!("file://{}", at("allowed/%2e%2e/evil")),
        "memory://x".to_string(),
    ];
    for store in &denied_stores {
        let lease = packument_lease(&registry, store, &items(2));
        refused(
            &mut client,
            lease,
            Code::PermissionDenied,
            &["--allow-store"],
        )
        .await;
    }
    let denied_origins = [
        other.url(),
        format!("{}/npm", other.url()),
        format!("{}/npmx", origin.url()),
        format!("{}/other", origin.url()),
        format!("{}/npm/..%2fother", origin.url()),
        format!("https://{}/npm", origin.addr()),
    ];
    for url in &denied_origins {
        let lease = packument_lease(url, &at("allowed"), &items(2));
        let flags = ["--allow-origin", "--registry"];
        refused(&mut client, lease, Code::PermissionDenied, &flags).await;
    }
    let index = index_lease(&other.url(), &at("allowed"), Some("a"), Some("b"), 100);
    refused(
        &mut client,
        index,
        Code::PermissionDenied,
        &["--replicate-origin"],
    )
    .await;
    assert_eq!(
        (origin.seen(), other.seen()),
        (vec![], vec![]),
        "no request"
    );
    assert_eq!(
        files_under(data.path()),
        Vec::<std::path::PathBuf>::new(),
        "nothing written"
    );

    // Within both lists, below the allowed prefixes, the lease runs.
    let lease = packument_lease(&format!("{registry}/"), &at("allowed/snap"), &items(2));
    let events = fetch(&mut client, call(lease, None)).await?;
    assert_eq!(stored_and_failed(&events), (2, 0), "{events:?}");
    assert_eq!(origin.seen().len(), 2);
    assert_eq!(files_under(&allowed.join("snap")).len(), 2);
    Ok(())
}

/// A fetcher on loopback with no allow-list takes any store a local user names — except
/// `memory://`, which would land in the fetcher's own memory and vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_store_is_refused_to_remote_callers() -> anyhow::Result<()> {
    let origin = RecordingOrigin::start("127.0.0.1").await?;
    let fetcher = Fetcher::start(&["--listen", "127.0.0.1:0"], &[])?;
    let mut client = fetcher.client().await?;
    let refused = fetch(
        &mut client,
        call(
            packument_lease(&origin.url(), "memory://snap", &items(2)),
            None,
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("memory://") && refused.message().contains("--allow-store"),
        "{refused:?}"
    );
    assert_eq!(origin.seen(), vec![]);
    let store = fetcher.dir.path().join("anywhere");
    let lease = packument_lease(&origin.url(), store.to_str().unwrap(), &items(2));
    assert_eq!(
        stored_and_failed(&fetch(&mut client, call(lease, None)).await?),
        (2, 0)
    );
    assert_eq!(files_under(&store).len(), 2);
    Ok(())
}

/// Arguments, environment, and what the refusal must name.
type StartCase<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a [&'a str]);

/// Runs `fetcher serve ARGS` that must refuse to start: its exit code and stderr.
fn refused_start(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let dir = tempfile::tempdir()?;
    let out = command(dir.path(), args, envs)?
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .output()?;
    let written: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "fetcher.log")
        .collect();
    assert_eq!(written, Vec::<std::ffi::OsString>::new(), "nothing written");
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// An operator who exposes a fetcher beyond loopback without saying who may call it, or
/// where it may write, is stopped at once (exit 2) and told which option to set — whether
/// the address comes from --listen or from $PORT (Cloud Run).
#[test]
fn listening_beyond_loopback_unguarded_is_refused_at_start() -> anyhow::Result<()> {
    let port = free_port()?.to_string();
    let any = format!("0.0.0.0:{port}");
    let origin = ["--allow-origin", "https://registry.example"];
    let cases: [StartCase; 5] = [
        (
            vec!["--listen", &any, "--allow-store", "gs://b"],
            vec![],
            &["ALLDOCS_FETCHER_TOKEN", "--trust-platform-auth"],
        ),
        (
            vec!["--allow-store", "gs://b"],
            vec![("PORT", port.as_str())],
            &["ALLDOCS_FETCHER_TOKEN", "--trust-platform-auth"],
        ),
        (
            vec!["--trust-platform-auth"],
            vec![("PORT", port.as_str())],
            &["--allow-store", "ALLDOCS_ALLOW_STORE"],
        ),
        (
            vec![],
            vec![("PORT", port.as_str()), ("ALLDOCS_FETCHER_TOKEN", TOKEN)],
            &["--allow-store"],
        ),
        (
            vec!["--listen", &any, "--allow-store", "memory://x"],
            vec![("ALLDOCS_TRUST_PLATFORM_AUTH", "1")],
            &["--allow-store `memory://x`"],
        ),
    ];
    for (args, envs, named) in cases {
        let args = [&args[..], &origin[..]].concat();
        let (code, stdout, stderr) = refused_start(&args, &envs)?;
        assert_eq!(code, 2, "{args:?} {envs:?}: {stderr}");
        assert!(!stdout.contains("listening"), "{stdout}");
        for flag in named {
            assert!(
                stderr.contains(flag),
                "{args:?}: {stderr} does not name {flag}"
            );
        }
        assert!(!stderr.contains(TOKEN), "{stderr}");
    }
    // Beyond loopback with a store allowed but no origin at all (no npm registry here).
    let (code, _, stderr) = refused_start(
        &["--allow-store", "gs://b"],
        &[("PORT", &port), ("ALLDOCS_TRUST_PLATFORM_AUTH", "1")],
    )?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--allow-origin"), "{stderr}");
    Ok(())
}

/// An operator's caps hold: a lease with more items than --max-lease-items is
/// INVALID_ARGUMENT naming the flag, before any request; a lease asking for more requests
/// at once than --max-lease-concurrency runs at that cap (logged), never above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_over_the_caps_are_refused_or_lowered() -> anyhow::Result<()> {
    let origin =
        RecordingOrigin::with_routes("127.0.0.1:0", vec![], Duration::from_millis(150)).await?;
    let fetcher = Fetcher::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--max-lease-items",
            "6",
            "--max-lease-concurrency",
            "2",
        ],
        &[],
    )?;
    let store = fetcher.dir.path().join("store");
    let mut client = fetcher.client().await?;
    let big = packument_lease(&origin.url(), store.to_str().unwrap(), &items(7));
    let refused = fetch(&mut client, call(big, None))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("--max-lease-items 6") && refused.message().contains("7 items"),
        "{refused:?}"
    );
    assert_eq!(origin.seen(), vec![]);
    assert_eq!(files_under(&store).len(), 0);

    let mut eager = packument_lease(&origin.url(), store.to_str().unwrap(), &items(6));
    eager.concurrency = 50;
    let events = fetch(&mut client, call(eager, None)).await?;
    assert_eq!(stored_and_failed(&events), (6, 0), "{events:?}");
    assert_eq!(
        origin.max_in_flight(),
        2,
        "at most --max-lease-concurrency at once"
    );
    assert!(
        fetcher.log().contains("--max-lease-concurrency"),
        "{}",
        fetcher.log()
    );
    Ok(())
}

/// The coordinator's largest lease (10,000 of npm's longest names) fits a default fetcher;
/// a fetcher given a larger --max-lease-items takes leases beyond gRPC's 16 MiB default
/// (40,000 such names, about 19 MB) that a default fetcher cannot even read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits_follow_max_lease_items() -> anyhow::Result<()> {
    let longest = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("{i:0>214}"), format!("1-{i:0>254}")))
            .collect()
    };
    let dead = format!("http://127.0.0.1:{}", free_port()?);
    let dir = tempfile::tempdir()?;
    let store = dir.path().to_str().unwrap();
    // Already past its deadline: a fetcher that takes it ends it at once, unfinished.
    let lease = |n| {
        let mut l = packument_lease(&dead, store, &longest(n));
        l.deadline_unix_ms = 1;
        l
    };
    let summary_of = |events: Vec<Event>| {
        events.into_iter().find_map(|e| match e {
            Event::Summary(s) => Some(s),
            _ => None,
        })
    };
    let default = Fetcher::start(&["--listen", "127.0.0.1:0"], &[])?;
    let mut client = default.client().await?;
    let largest = fetch(&mut client, call(lease(10_000), None)).await?;
    assert_eq!(summary_of(largest).map(|s| s.unfinished), Some(10_000));
    let over = fetch(&mut client, call(lease(10_001), None))
        .await
        .expect_err("refused");
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    assert!(
        over.message().contains("--max-lease-items 10000"),
        "{over:?}"
    );
    let huge = lease(40_000);
    assert!(prost::Message::encoded_len(&huge) > 16 << 20);
    let unread = fetch(&mut client, call(huge.clone(), None))
        .await
        .expect_err("too large");
    assert!(
        matches!(unread.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{unread:?}"
    );

    let raised = Fetcher::start(
        &["--listen", "127.0.0.1:0", "--max-lease-items", "40000"],
        &[],
    )?;
    let mut client = raised.client().await?;
    let events = fetch(&mut client, call(huge, None)).await?;
    assert_eq!(summary_of(events).map(|s| s.unfinished), Some(40_000));
    assert_eq!(files_under(dir.path()).len(), 0);
    Ok(())
}

/// What the origins saw, as `(origin, path, authorization)`, sorted.
fn seen_by(origins: &[(&str, &RecordingOrigin)]) -> Vec<(String, String, Option<String>)> {
    let mut all: Vec<_> = origins
        .iter()
        .flat_map(|(label, o)| {
            o.seen().into_iter().map(
                |Seen {
                     path,
                     authorization,
                 }| (label.to_string(), path, authorization),
            )
        })
        .collect();
    all.sort();
    all
}

/// A user's registry token (in the fetcher's own `.npmrc`) goes to that registry's host,
/// port and path only: not to another port, another host on the same port, another path,
/// a path that climbs out with `..%2f`, nor across redirects to any of those; and a token
/// configured for https is never sent over http. A hostile origin records every header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_token_goes_only_to_its_scheme_host_port_and_path() -> anyhow::Result<()> {
    const NPM_TOKEN: &str = "npm-secret-31415";
    let other_port = RecordingOrigin::start("127.0.0.1").await?;
    // Another host (127.0.0.2) on the very port of the registry (127.0.0.1).
    let other_host = RecordingOrigin::start("127.0.0.2").await?;
    let port = other_host.addr().port();
    let here = format!("http://127.0.0.1:{port}");
    let redirect = |path: &str, to: String| (path.to_string(), Answer::Redirect(to));
    let routes = vec![
        redirect("/npm/to-port", format!("{}/npm/to-port", other_port.url())),
        redirect("/npm/to-host", format!("{}/npm/to-host", other_host.url())),
        redirect("/npm/to-path", "/other/to-path".into()),
        redirect("/npm/to-dots", "/npm/..%2fother/to-dots".into()),
        redirect("/npm/within", "/npm/moved/within".into()),
    ];
    let registry =
        RecordingOrigin::with_routes(&format!("127.0.0.1:{port}"), routes, Duration::ZERO).await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(".npmrc"),
        format!("registry={here}/npm/\n//127.0.0.1:{port}/npm/:_authToken={NPM_TOKEN}\n"),
    )?;
    let fetcher = Fetcher::start_in(dir, &["--listen", "127.0.0.1:0"], &[])?;
    let store = fetcher.dir.path().join("store");
    let store = store.to_str().unwrap();
    let names = [
        "plain", "to-port", "to-host", "to-path", "to-dots", "within",
    ];
    let items: Vec<_> = names
        .iter()
        .map(|n| (n.to_string(), "1-a".to_string()))
        .collect();
    let mut client = fetcher.client().await?;
    for url in [
        format!("{here}/npm"),
        format!("{}/npm", other_port.url()),
        format!("{here}/npmx"),
    ] {
        let events = fetch(
            &mut client,
            call(packument_lease(&url, store, &items), None),
        )
        .await?;
        assert_eq!(stored_and_failed(&events), (6, 0), "{url}: {events:?}");
    }
    let expected = expected_headers(&names, NPM_TOKEN);
    let seen = seen_by(&[
        ("registry", &registry),
        ("other-port", &other_port),
        ("other-host", &other_host),
    ]);
    assert_eq!(seen, expected);
    assert!(!fetcher.log().contains(NPM_TOKEN));
    drop(fetcher);

    no_token_over_http(&registry, port, NPM_TOKEN, store, &items[..1]).await
}

/// What each origin should have seen for the leases of the token test: the path, and the
/// token only on the registry's own host, port and path.
fn expected_headers(names: &[&str], token: &str) -> Vec<(String, String, Option<String>)> {
    let bearer = Some(format!("Bearer {token}"));
    let entry = |label: &str, path: &str, token: bool| {
        (
            label.to_string(),
            path.to_string(),
            bearer.clone().filter(|_| token),
        )
    };
    let mut expected = vec![
        entry("registry", "/npm/moved/within", true),
        entry("registry", "/other/to-path", false),
        entry("registry", "/npm/..%2fother/to-dots", false),
        entry("other-port", "/npm/to-port", false),
        entry("other-host", "/npm/to-host", false),
    ];
    for &name in names {
        expected.push(entry("registry", &format!("/npm/{name}"), true));
        expected.push(entry("other-port", &format!("/npm/{name}"), false));
        expected.push(entry("registry", &format!("/npmx/{name}"), false));
    }
    expected.sort();
    expected
}

/// The token test's registry configured for https: a lease naming it over http gets no
/// token.
async fn no_token_over_http(
    registry: &RecordingOrigin,
    port: u16,
    token: &str,
    store: &str,
    items: &[(String, String)],
) -> anyhow::Result<()> {
    let here = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(".npmrc"),
        format!(
            "registry=https://127.0.0.1:{port}/npm/\n//127.0.0.1:{port}/npm/:_authToken={token}\n"
        ),
    )?;
    let before = registry.seen().len();
    let fetcher = Fetcher::start_in(dir, &["--listen", "127.0.0.1:0"], &[])?;
    let mut client = fetcher.client().await?;
    let lease = packument_lease(&format!("{here}/npm"), store, items);
    let events = fetch(&mut client, call(lease, None)).await?;
    assert_eq!(stored_and_failed(&events), (1, 0), "{events:?}");
    let after = registry.seen();
    assert_eq!(
        after[before..],
        [Seen {
            path: "/npm/plain".into(),
            authorization: None
        }]
    );
    Ok(())
}
