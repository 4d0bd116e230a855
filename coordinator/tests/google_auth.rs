//! `--fetcher-auth google` with the real `coordinator` binary: Google-signed ID tokens from
//! a fake metadata server (cached across leases, refreshed before they expire and once on
//! a refusal) or minted from a service-account key against a fake token endpoint that
//! verifies the signed JWT; a metadata server that is not there stops the run at its start.

mod fleet;

use std::path::Path;

use alldocs_tests::{
    coord::{checkpoint_statuses, job_args},
    procs::free_port,
    sim::SimServer,
};
use fleet::{
    attempts, envs, rsa_key, run_coordinator, Check, FakeMetadata, FakeTokenEndpoint, Gate,
    GuardedFetcher, Outcome,
};
use tonic::Code;

const PACKAGES: usize = 120;

/// A `run` of the whole sim through `fetcher`, 10 packuments a lease.
fn args(dir: &Path, sim: &SimServer, fetcher: &GuardedFetcher, in_flight: &str) -> Vec<String> {
    job_args(
        "run",
        dir,
        &sim.url(),
        &[
            "--pivots",
            "m",
            "--lease-size",
            "10",
            "--max-in-flight",
            in_flight,
            "--fetcher",
            &fetcher.url(),
            "--fetcher-auth",
            "google",
        ],
    )
}

/// Every package stored, and no partition or package charged an attempt.
fn assert_all_stored_without_attempts(dir: &Path) {
    let statuses = checkpoint_statuses(&dir.join("alldocs.sqlite"));
    assert_eq!(statuses.len(), PACKAGES);
    assert!(statuses.values().all(|s| s == "stored"), "{statuses:?}");
    for (name, status, attempts) in attempts(&dir.join("alldocs.sqlite")) {
        // Partitions end `done`, packages `stored`.
        assert!(
            matches!(status.as_str(), "done" | "stored"),
            "{name}: {status}"
        );
        assert_eq!(attempts, 0, "{name}");
    }
}

fn assert_no_secret(out: &Outcome, secrets: &[&str]) {
    let all = out.all();
    for secret in secrets {
        assert!(
            !all.contains(secret),
            "a token or key leaked into the output"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_token_from_the_metadata_server_serves_every_lease() -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let metadata = FakeMetadata::start(vec![3600]).await?;
    let fetcher = GuardedFetcher::start(Gate::check(Check::IdToken)).await?;
    let dir = tempfile::tempdir()?;
    let out = run_coordinator(
        args(dir.path(), &sim, &fetcher, "4"),
        envs(&[
            ("GCE_METADATA_HOST", &metadata.host()),
            ("RUST_LOG", "trace"),
        ]),
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_all_stored_without_attempts(dir.path());

    let asked = metadata.requests();
    assert_eq!(asked.len(), 1, "one token for every lease: {asked:?}");
    assert!(
        asked[0].flavor,
        "the coordinator sends Metadata-Flavor: Google"
    );
    assert_eq!(asked[0].audience.as_deref(), Some(fetcher.url().as_str()));
    assert_eq!(asked[0].format.as_deref(), Some("full"));
    let token = asked[0].token.clone().unwrap();

    let calls = fetcher.calls();
    assert!(calls.len() >= 2 + PACKAGES / 10, "{} leases", calls.len());
    for call in &calls {
        assert_eq!(call.authorization, Some(format!("Bearer {token}")));
        assert_eq!(call.refused, None);
    }
    assert_no_secret(&out, &[&token]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_its_expiry_is_replaced_before_use_and_a_refused_one_once(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    // The first token expires in 4 minutes, inside the 5 minutes a token is replaced
    // before its expiry; later ones in an hour.
    let metadata = FakeMetadata::start(vec![240, 3600]).await?;
    // The fetcher refuses the first token it is shown that is otherwise good.
    let fetcher = GuardedFetcher::start(Gate {
        reject_first: 1,
        ..Gate::check(Check::IdToken)
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let out = run_coordinator(
        args(dir.path(), &sim, &fetcher, "1"),
        envs(&[("GCE_METADATA_HOST", &metadata.host())]),
    )
    .await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_all_stored_without_attempts(dir.path());

    let tokens: Vec<String> = metadata
        .requests()
        .into_iter()
        .map(|r| r.token.expect("every request was answered"))
        .collect();
    // At the start (4 minutes left), before the first lease (replaced early), and after
    // the fetcher refused that one.
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let calls = fetcher.calls();
    let shown: Vec<&str> = calls
        .iter()
        .map(|c| c.authorization.as_deref().unwrap())
        .collect();
    assert!(
        !shown.contains(&format!("Bearer {}", tokens[0]).as_str()),
        "a token about to expire is never sent"
    );
    assert_eq!(shown[0], format!("Bearer {}", tokens[1]));
    assert_eq!(calls[0].refused, Some(Code::Unauthenticated));
    for call in &calls[1..] {
        assert_eq!(call.authorization, Some(format!("Bearer {}", tokens[2])));
        assert_eq!(call.refused, None);
    }
    let secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_secret(&out, &secrets);
    Ok(())
}

/// A `service_account` key file naming `token_uri`.
fn key_file(dir: &Path, private_pem: &str, email: &str, token_uri: &str) -> anyhow::Result<String> {
    let path = dir.join("sa.json");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "alldocs-test",
        "private_key_id": "k1",
        "private_key": private_pem,
        "client_email": email,
        "client_id": "1",
        "token_uri": token_uri,
    });
    std::fs::write(&path, key.to_string())?;
    Ok(path.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_key_signs_for_an_id_token_and_a_wrong_key_stops_at_the_start(
) -> anyhow::Result<()> {
    let keys = tempfile::tempdir()?;
    let (private, public) = rsa_key(keys.path())?;
    let other = tempfile::tempdir()?;
    let (wrong_private, _) = rsa_key(other.path())?;
    let email = "alldocs@alldocs-test.iam.gserviceaccount.com";
    let endpoint = FakeTokenEndpoint::start(public, email.to_string()).await?;
    let sim = SimServer::loopback(PACKAGES, 500).await?;
    let fetcher = GuardedFetcher::start(Gate::check(Check::IdToken)).await?;
    // Nothing answers at the metadata host: the key file alone must do.
    let no_metadata = format!("127.0.0.1:{}", free_port()?);

    let dir = tempfile::tempdir()?;
    let wrong = key_file(other.path(), &wrong_private, email, &endpoint.token_uri())?;
    let env = envs(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", &wrong),
        ("GCE_METADATA_HOST", &no_metadata),
    ]);
    let out = run_coordinator(args(dir.path(), &sim, &fetcher, "4"), env).await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("GOOGLE_APPLICATION_CREDENTIALS")
            && out.stderr.contains(&endpoint.token_uri())
            && out.stderr.contains("invalid_grant"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    assert!(fetcher.calls().is_empty());
    let refused = endpoint.exchanges();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]
            .verdict
            .as_ref()
            .unwrap_err()
            .contains("InvalidSignature"),
        "{refused:?}"
    );

    let right = key_file(keys.path(), &private, email, &endpoint.token_uri())?;
    let env = envs(&[
        ("GOOGLE_APPLICATION_CREDENTIALS", &right),
        ("GCE_METADATA_HOST", &no_metadata),
        ("RUST_LOG", "trace"),
    ]);
    let out = run_coordinator(args(dir.path(), &sim, &fetcher, "4"), env).await?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_all_stored_without_attempts(dir.path());
    let exchanges = endpoint.exchanges();
    assert_eq!(
        exchanges.len(),
        2,
        "one exchange for the whole run: {exchanges:?}"
    );
    assert_eq!(
        exchanges[1].verdict,
        Ok(fetcher.url()),
        "target_audience is the fetcher's URL"
    );
    let id_token = exchanges[1].id_token.clone().unwrap();
    for call in fetcher.calls() {
        assert_eq!(call.authorization, Some(format!("Bearer {id_token}")));
        assert_eq!(call.refused, None);
    }
    let key_body = private.lines().nth(1).unwrap();
    assert_no_secret(&out, &[&id_token, key_body]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metadata_server_stops_the_run_at_its_start_naming_the_flag_and_variable(
) -> anyhow::Result<()> {
    let sim = SimServer::loopback(10, 500).await?;
    let fetcher = GuardedFetcher::start(Gate::check(Check::IdToken)).await?;
    let dir = tempfile::tempdir()?;
    let host = format!("127.0.0.1:{}", free_port()?);
    let out = run_coordinator(
        args(dir.path(), &sim, &fetcher, "4"),
        envs(&[("GCE_METADATA_HOST", &host)]),
    )
    .await?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("--fetcher-auth google")
            && out.stderr.contains(&format!("GCE_METADATA_HOST={host}"))
            && out.stderr.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("alldocs.sqlite").exists(),
        "nothing written"
    );
    assert!(fetcher.calls().is_empty(), "no lease was sent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_metadata_server_refuses_requests_without_metadata_flavor() -> anyhow::Result<()> {
    // The fake is strict as the real one is, so the tests above show the header is sent.
    let metadata = FakeMetadata::start(vec![3600]).await?;
    let url = format!(
        "http://{}/computeMetadata/v1/instance/service-accounts/default/identity?audience=http://x",
        metadata.host()
    );
    let plain = reqwest::get(&url).await?;
    assert_eq!(plain.status(), 403);
    let flavored = reqwest::Client::new()
        .get(&url)
        .header("Metadata-Flavor", "Google")
        .send()
        .await?;
    assert_eq!(flavored.status(), 200);
    let token = flavored.text().await?;
    assert_eq!(fleet::payload(&token).unwrap()["aud"], "http://x");
    Ok(())
}
