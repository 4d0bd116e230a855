//! `deploy/cloudrun/service.yaml` as Cloud Run would run it: the real `fetcher serve` with
//! exactly the manifest's environment (placeholders filled in, the secret given a value)
//! and `PORT` set starts and serves, and the manifest keeps the guarantees docs/cloud-run.md
//! promises (IAM check on, h2c port, a request timeout above the lease duration).

mod common;

use std::path::Path;

use common::Fetcher;
use yaml_rust2::{Yaml, YamlLoader};

fn manifest() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloudrun/service.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/cloudrun/service.yaml");
    YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .remove(0)
}

/// The container's environment: each `value`, and a stand-in for each secret.
fn environment(container: &Yaml, data: &str) -> Vec<(String, String)> {
    container["env"]
        .as_vec()
        .expect("env is a list")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("a name").to_string();
            let value = match e["value"].as_str() {
                Some(v) => v.replace("gs://BUCKET/PREFIX", data),
                None => "secret-from-secret-manager".to_string(),
            };
            (name, value)
        })
        .collect()
}

#[test]
fn the_cloud_run_manifest_starts_a_guarded_fetcher() -> anyhow::Result<()> {
    let service = manifest();
    let annotations = &service["metadata"]["annotations"];
    assert!(
        annotations["run.googleapis.com/invoker-iam-disabled"].is_badvalue(),
        "the IAM invoker check stays on"
    );
    let template = &service["spec"]["template"]["spec"];
    let container = &template["containers"][0];
    assert_eq!(container["ports"][0]["name"].as_str(), Some("h2c"));
    let timeout = template["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!(
        timeout > 600,
        "above the default --lease-duration of 10 minutes"
    );

    let dir = tempfile::tempdir()?;
    let data = format!("file://{}", dir.path().join("data").display());
    let env = environment(container, &data);
    let port = alldocs_tests::procs::free_port()?.to_string();
    let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    envs.push(("PORT", &port));
    let fetcher = Fetcher::start(&[], &envs)?;
    assert_eq!(
        fetcher.proc.addr,
        format!("0.0.0.0:{port}"),
        "all interfaces, on $PORT"
    );
    let ended = fetcher.terminate()?;
    assert_eq!(ended.code, 0, "{}", ended.log);
    assert!(
        !ended.log.contains("secret-from-secret-manager"),
        "the registry token is never logged"
    );

    // The same environment without platform auth is refused: the setting is load-bearing.
    envs.retain(|(k, _)| *k != "ALLDOCS_TRUST_PLATFORM_AUTH");
    let dir = tempfile::tempdir()?;
    let out = common::command(dir.path(), &[], &envs)?.output()?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}
