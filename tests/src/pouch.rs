//! `pouchdb-server` (npm, written by the PouchDB authors) as an independent CouchDB-API
//! peer: one database on it stands in for both npm's replication endpoint and registry.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The `tests/peers` directory holding the pinned `pouchdb-server` install.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// Path of the `pouchdb-server` executable, installing the pinned version with npm on
/// first use (under a file lock, so parallel tests install it once).
pub fn pouchdb_server_bin() -> Result<PathBuf> {
    let dir = peers_dir();
    let bin = dir.join("node_modules/.bin/pouchdb-server");
    if bin.exists() {
        return Ok(bin);
    }
    let lock = std::fs::File::create(dir.join(".install.lock"))?;
    lock.lock()?;
    if !bin.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .context("running `npm ci` in tests/peers (is Node.js with npm installed?)")?;
        if !status.success() || !bin.exists() {
            bail!(
                "`npm ci` in {} failed; install pouchdb-server there by hand",
                dir.display()
            );
        }
    }
    Ok(bin)
}

/// A running in-memory `pouchdb-server` with one database, `registry`.
pub struct PouchServer {
    child: Child,
    port: u16,
    _workdir: tempfile::TempDir,
}

impl PouchServer {
    /// Starts the server on a free loopback port and creates the `registry` database.
    pub async fn start() -> Result<Self> {
        let bin = pouchdb_server_bin()?;
        let workdir = tempfile::tempdir()?; // it writes log.txt and config.json to its cwd
        let mut last_err = None;
        for _ in 0..5 {
            let port = crate::procs::free_port()?;
            let mut child = Command::new(&bin)
                .args([
                    "--in-memory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ])
                .current_dir(workdir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let stdout = child.stdout.take().expect("piped");
            let started = tokio::task::spawn_blocking(move || {
                // Wait for the line that says it is listening (or for it to exit).
                let mut lines = BufReader::new(stdout).lines();
                let ok = lines
                    .by_ref()
                    .map_while(Result::ok)
                    .any(|l| l.contains("pouchdb-server has started"));
                std::thread::spawn(move || lines.for_each(drop));
                ok
            })
            .await?;
            if started {
                let server = Self {
                    child,
                    port,
                    _workdir: workdir,
                };
                let resp = reqwest::Client::new()
                    .put(format!("{}/registry", server.base()))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("creating the registry database: HTTP {}", resp.status());
                }
                return Ok(server);
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = Some(anyhow::anyhow!(
                "pouchdb-server on port {port} did not start"
            ));
        }
        Err(last_err.expect("tried at least once"))
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/registry`: both the replication origin and the registry.
    pub fn db_url(&self) -> String {
        format!("{}/registry", self.base())
    }

    /// Stores documents (each must carry its `_id`), a few at a time, returning the
    /// revision the server gave each.
    pub async fn load(&self, docs: Vec<Value>) -> Result<Vec<(String, String)>> {
        let client = reqwest::Client::new();
        let mut revs = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut docs = docs.into_iter().peekable();
        while let Some(doc) = docs.next() {
            batch_bytes += doc.to_string().len();
            batch.push(doc);
            if batch_bytes > 4 << 20 || batch.len() >= 50 || docs.peek().is_none() {
                let resp = client
                    .post(format!("{}/_bulk_docs", self.db_url()))
                    .json(&serde_json::json!({ "docs": std::mem::take(&mut batch) }))
                    .send()
                    .await?;
                let status = resp.status();
                let body: Value = resp.json().await?;
                if !status.is_success() {
                    bail!("_bulk_docs: HTTP {status}: {body}");
                }
                for r in body.as_array().context("_bulk_docs answers an array")? {
                    let (Some(id), Some(rev)) = (r["id"].as_str(), r["rev"].as_str()) else {
                        bail!("_bulk_docs refused a document: {r}");
                    };
                    revs.push((id.to_string(), rev.to_string()));
                }
                batch_bytes = 0;
            }
        }
        Ok(revs)
    }
}

impl Drop for PouchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
