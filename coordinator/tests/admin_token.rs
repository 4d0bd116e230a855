//! `ALLDOCS_ADMIN_TOKEN` with the real `coordinator` binary: it guards every
//! `alldocs.v1.Coordinator` call (`coordinator status` sends it from the same variable),
//! health and reflection stay open for an independent client, and an API listening beyond
//! loopback without it is refused before anything is written.

mod fleet;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
};

use alldocs_tests::{
    coord::job_args,
    procs::run,
    py::{python_env, reflect_call, reflect_list},
    sim::SimServer,
};
use fleet::coordinator;

const ADMIN: &str = "admin-token-c41d7e09b2";

fn status(addr: &str, token: Option<&str>) -> anyhow::Result<(i32, String, String)> {
    let args = vec!["status".to_string(), "--addr".to_string(), addr.to_string()];
    let envs: Vec<(&str, &str)> = token
        .map(|t| ("ALLDOCS_ADMIN_TOKEN", t))
        .into_iter()
        .collect();
    run(&coordinator(), &args, &envs)
}

/// `coordinator serve` with the admin token and trace-level logs written to `log`; killed
/// when dropped.
struct Serve {
    child: Child,
    addr: String,
    /// Kept open: the coordinator prints its summary there when the run is done.
    _stdout: BufReader<ChildStdout>,
}

impl Serve {
    fn start(args: &[String], log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(coordinator())
            .args(args)
            .env("ALLDOCS_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("coordinator listening on ")
            .ok_or_else(|| anyhow::anyhow!("first line: {line:?}"))?
            .to_string();
        Ok(Self {
            child,
            addr,
            _stdout: stdout,
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_the_api_but_not_health_or_reflection() -> anyhow::Result<()> {
    let sim = SimServer::loopback(40, 500).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("serve.log");
    let serve = Serve::start(
        &job_args("serve", dir.path(), &sim.url(), &["--pivots", "m"]),
        &log,
    )?;
    let addr = serve.addr.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let (code, _, err) = status(&addr, None)?;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("requires its admin token and ALLDOCS_ADMIN_TOKEN is not set here"),
            "{err}"
        );
        let (code, _, err) = status(&addr, Some("admin-token-wrong"))?;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("the ALLDOCS_ADMIN_TOKEN set here is not the coordinator's"),
            "{err}"
        );
        let (code, out, err) = status(&addr, Some(ADMIN))?;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("state") && out.contains("packuments"), "{out}");
        assert!(!format!("{out}{err}").contains(ADMIN));

        // An independent client without the token: reflection and health answer, the API
        // does not.
        python_env()?;
        let services = reflect_list(&addr, "v1")?;
        assert!(
            services.iter().any(|s| s == "alldocs.v1.Coordinator"),
            "{services:?}"
        );
        let health = reflect_call(&addr, "grpc.health.v1.Health/Check", "{}", "v1")?;
        assert_eq!(health, serde_json::json!({"status": "SERVING"}));
        let refused = reflect_call(&addr, "alldocs.v1.Coordinator/GetProgress", "{}", "v1")
            .expect_err("GetProgress without the token");
        let refused = format!("{refused:#}");
        assert!(refused.contains("UNAUTHENTICATED"), "{refused}");
        assert!(!refused.contains(ADMIN), "{refused}");
        Ok(())
    })
    .await??;
    drop(serve);
    // The coordinator's own logs, at trace level, over all of the above.
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.contains("TRACE"),
        "the scan ran over trace-level logs"
    );
    assert!(
        !logged.contains(ADMIN),
        "the admin token leaked into the logs"
    );
    assert!(
        !logged.contains("admin-token-wrong"),
        "a presented token leaked into the logs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_beyond_loopback_needs_the_admin_token() -> anyhow::Result<()> {
    let sim = SimServer::loopback(20, 500).await?;
    let dir = tempfile::tempdir()?;
    let args = job_args(
        "run",
        dir.path(),
        &sim.url(),
        &["--pivots", "m", "--listen", "0.0.0.0:0"],
    );
    let (code, _, err) = run(&coordinator(), &args, &[])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--listen 0.0.0.0:0 is reachable from other machines")
            && err.contains("set ALLDOCS_ADMIN_TOKEN"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path())?.next().is_none(),
        "nothing written"
    );

    // With the token the same command runs.
    let (code, _, err) = run(&coordinator(), &args, &[("ALLDOCS_ADMIN_TOKEN", ADMIN)])?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}
