//! Shared by the fetcher's process tests: a `fetcher serve` in a private directory (its
//! HOME and working directory, so no npm configuration of this machine leaks in) with its
//! logs in a file, and calls to it with or without a bearer token.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use alldocs_proto::v1::{fetch_event::Event, fetcher_client::FetcherClient, Lease};
use alldocs_tests::procs::Listening;
use tonic::{transport::Channel, Request};

/// `fetcher serve ARGS` with only `envs` (and PATH) in its environment, run in `dir`;
/// logs at debug level go to `dir/fetcher.log`.
pub fn command(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fetcher"));
    cmd.arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("RUST_LOG", "debug")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fetcher.log"))?);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// A running `fetcher serve` and the directory it runs in.
pub struct Fetcher {
    pub proc: Listening,
    pub dir: tempfile::TempDir,
}

impl Fetcher {
    /// Starts one and waits until it listens.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, args, envs)
    }

    /// Starts one in `dir` (which may hold an `.npmrc`).
    pub fn start_in(
        dir: tempfile::TempDir,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let proc = Listening::start_command(command(dir.path(), args, envs)?)?;
        Ok(Self { proc, dir })
    }

    /// `http://127.0.0.1:PORT`, whatever address it bound.
    pub fn url(&self) -> String {
        let port = self.proc.addr.rsplit(':').next().expect("a port");
        format!("http://127.0.0.1:{port}")
    }

    pub async fn client(&self) -> anyhow::Result<FetcherClient<Channel>> {
        Ok(FetcherClient::connect(self.url()).await?)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("fetcher.log")
    }

    /// Sends SIGTERM and waits for the exit: how it ended, and what it logged.
    pub fn terminate(self) -> anyhow::Result<Ended> {
        let began = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.proc.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let log_path = self.log_path();
        let (code, stdout) = self.proc.wait()?;
        Ok(Ended {
            code,
            stdout,
            took: began.elapsed(),
            log: std::fs::read_to_string(log_path)?,
        })
    }
}

/// How a fetcher process ended.
#[derive(Debug)]
pub struct Ended {
    pub code: i32,
    /// Its stdout after the `listening on` line.
    pub stdout: String,
    /// From the signal to its exit.
    pub took: Duration,
    pub log: String,
}

/// A `Fetch` call for `lease`, with `authorization: Bearer TOKEN` when a token is given.
pub fn call(lease: Lease, token: Option<&str>) -> Request<Lease> {
    let mut request = Request::new(lease);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs a call to the end: every event, or the status the fetcher answered with.
pub async fn fetch(
    client: &mut FetcherClient<Channel>,
    request: Request<Lease>,
) -> Result<Vec<Event>, tonic::Status> {
    let mut stream = client.fetch(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await? {
        events.extend(ev.event);
    }
    Ok(events)
}

/// Sends `lease` (no token) and checks it is refused with `code`, the message naming each
/// of `names` (the flag to set); returns the refusal.
pub async fn refused(
    client: &mut FetcherClient<Channel>,
    lease: Lease,
    code: tonic::Code,
    names: &[&str],
) -> tonic::Status {
    let what = format!("{:?}", lease.work);
    let refused = fetch(client, call(lease, None)).await.expect_err("refused");
    assert_eq!(refused.code(), code, "{what}: {refused:?}");
    for name in names {
        assert!(refused.message().contains(name), "{name}: {refused:?}");
    }
    refused
}

/// `(stored, failed)` events of a lease.
pub fn stored_and_failed(events: &[Event]) -> (usize, usize) {
    let stored = events
        .iter()
        .filter(|e| matches!(e, Event::Stored(_)))
        .count();
    let failed = events
        .iter()
        .filter(|e| matches!(e, Event::Failed(_)))
        .count();
    (stored, failed)
}

/// Every file under `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Names `n-0`, `n-1`, … with revision `1-a`, as lease items.
pub fn items(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("n-{i}"), "1-a".to_string()))
        .collect()
}
