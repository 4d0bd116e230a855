//! Real processes for end-to-end tests: start a binary, learn the address it printed,
//! and kill it when the test ends.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// A child process that printed `… listening on ADDR` as its first line of stdout.
pub struct Listening {
    pub child: Child,
    pub addr: String,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Listening {
    /// Starts `bin args…` and waits for its `listening on ADDR` line (the process binds
    /// before it prints, so the address is ready when this returns).
    pub fn start(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Self::start_command(cmd)
    }

    /// Like [`Listening::start`], for a command set up by the caller (its environment,
    /// directory, where its stderr goes); its stdout is taken here.
    pub fn start_command(mut cmd: Command) -> Result<Self> {
        let bin = std::path::PathBuf::from(cmd.get_program());
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(addr) = line
            .trim()
            .rsplit("listening on ")
            .next()
            .filter(|_| line.contains("listening on "))
        else {
            let _ = child.kill();
            let status = child.wait()?;
            bail!(
                "{} did not say where it listens (exit {status}); first line: {line:?}",
                bin.display()
            );
        };
        Ok(Self {
            addr: addr.to_string(),
            child,
            stdout: Some(stdout),
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits for the process to exit; returns its exit code and the rest of its stdout.
    pub fn wait(mut self) -> Result<(i32, String)> {
        let mut rest = String::new();
        if let Some(mut out) = self.stdout.take() {
            out.read_to_string(&mut rest)?;
        }
        let status = self.child.wait()?;
        Ok((status.code().unwrap_or(-1), rest))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`libc::SIGINT`, `libc::SIGTERM`, …) and returns at once.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("a pid")?;
        // SAFETY: kill(2) on our own child, which has not been waited for (so its pid
        // is still ours).
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL: the process gets no chance to tidy up.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, returning (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let out = command(bin, args, envs)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `bin args…` with stdin closed, quiet logs, and nothing from the test's own environment
/// that could reconfigure it (`ALLDOCS_*`, `NPM_TOKEN`); then `envs`.
fn command(bin: &Path, args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("ALLDOCS_") || name == "NPM_TOKEN" {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// A loopback port that was free a moment ago, for servers that cannot be told to pick
/// one themselves (pouchdb-server, moto_server) or an address nothing listens on.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Strings from `&str`s, for argument lists.
pub fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
